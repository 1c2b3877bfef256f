"""Two-process DDP training steps through the trainers' own code, on the CPU with gloo.

nnU-Net's DDP path is CUDA-only in two places, and only those are adapted here: its trainer moves itself
to ``cuda:<rank>`` when a process group exists, and wraps the network as ``DDP(net, device_ids=[rank])``,
which PyTorch refuses for a CPU module. Each worker therefore puts the trainer back on the CPU and gives
DDP ``device_ids=None``. Everything else (checkpoint loading, freezing, optimiser, loss, the
Self-Prompt-SAM warm-up switch, ``train_step``) is the trainers' own code, under a real gloo process group.

The property checked is what breaks when pretrained weights are frozen after nnU-Net has wrapped the
network: DDP's reducer then waits for gradients of frozen parameters and the second step fails with
"Expected to have finished reduction in the prior iteration". Here every rank must take several steps,
end with identical parameters, keep the frozen checkpoint tensors unchanged and change the trained ones.
"""
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from batchgenerators.utilities.file_and_folder_operations import load_json

WORLD = 2
STEPS = 2  # the second step is where a reducer broken by late freezing fails


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, env: dict, trainer_name: str, configuration: str, plans: dict, dataset_json: dict,
            checkpoint: str, phases: list, result_dir: str) -> None:
    os.environ.update(env)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from torch.nn.parallel import DistributedDataParallel

    import nnunetv2.training.nnUNetTrainer.nnUNetTrainer as nnunet_trainer_module
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
    from sam_nnunet.modeling.blocks import registry

    registry.ENCODERS["vit_test"] = registry.EncoderConfig(embed_dim=48, depth=4, num_heads=4,
                                                           global_attn_indexes=(1, 3), window_size=4, pretrained=False)
    nnunet_trainer_module.DDP = lambda module, device_ids=None, **kw: DistributedDataParallel(module, **kw)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        cls = recursive_find_trainer_class_by_name(trainer_name)
        t = cls(plans=plans, configuration=configuration, fold=0, dataset_json=dataset_json,
                device=torch.device("cpu"))
        assert t.is_ddp and t.local_rank == rank
        t.device, t.grad_scaler = torch.device("cpu"), None  # nnU-Net set cuda:<rank>; see the module docstring
        t.initialize()
        assert isinstance(t.network, DistributedDataParallel)
        t.dataloader_train, t.dataloader_val = t.get_dataloaders()
        net = t._network()
        before = {n: p.detach().clone() for n, p in net.named_parameters()}
        sam_keys = torch.load(checkpoint, map_location="cpu", weights_only=True)
        losses = []
        for epoch in phases:
            t.current_epoch = epoch
            t.on_train_epoch_start()
            for _ in range(STEPS):
                losses.append(float(t.train_step(next(t.dataloader_train))["loss"]))
        flat = torch.cat([p.detach().flatten() for p in net.parameters()])
        gathered = [torch.empty_like(flat) for _ in range(WORLD)]
        dist.all_gather(gathered, flat)
        if rank == 0:
            frozen = [n for n, p in net.named_parameters() if not p.requires_grad]
            torch.save({"gathered": gathered, "losses": losses, "frozen": frozen,
                        "frozen_unchanged": all(torch.equal(before[n], p) for n, p in net.named_parameters()
                                                if not p.requires_grad),
                        "trained_changed": sum(not torch.equal(before[n], p) for n, p in net.named_parameters()
                                               if p.requires_grad),
                        "n_trainable": sum(p.requires_grad for p in net.parameters()),
                        "use_sam_decoder": getattr(net, "use_sam_decoder", None),
                        "checkpoint_keys": len(sam_keys)},
                       os.path.join(result_dir, "result.pt"))
    finally:
        dist.destroy_process_group()


def _run(acdc_env, tmp_path, official_sam, trainer_name, configuration, phases):
    _, sd = official_sam()
    checkpoint = tmp_path / "sam_vit_test.pth"
    torch.save(sd, checkpoint)
    folder = acdc_env["nnUNet_preprocessed"] / "Dataset027_ACDC"
    plans = load_json(str(folder / "nnUNetPlans_SAMcpu.json"))
    plans["configurations"][configuration]["sam_nnunet"] = {"encoder": "vit_test"}
    plans["configurations"][configuration]["batch_size"] = WORLD  # nnU-Net splits it: one sample per rank
    plans["continue_training"] = False
    env = {k: v for k, v in os.environ.items() if k.startswith("nnUNet")}
    env.update(nnUNet_n_proc_DA="0", SAM_NNUNET_CHECKPOINT=str(checkpoint), SAM_NNUNET_SEED="0")
    mp.spawn(_worker, args=(_free_port(), env, trainer_name, configuration, plans,
                            load_json(str(folder / "dataset.json")), str(checkpoint), phases, str(tmp_path)),
             nprocs=WORLD, join=True)
    return torch.load(tmp_path / "result.pt", weights_only=False)


def _assert_ranks_agree_and_frozen_stay(result, steps):
    assert len(result["losses"]) == steps and all(torch.isfinite(torch.tensor(result["losses"])))
    torch.testing.assert_close(result["gathered"][0], result["gathered"][1], rtol=0, atol=0)
    assert result["frozen"] and result["frozen_unchanged"]
    # nearly every trained tensor moves (AdamW/SGD with weight decay); none may be left behind by a broken reducer
    assert result["trained_changed"] >= 0.9 * result["n_trainable"]


@pytest.mark.faults
@pytest.mark.fault("training")
def test_hsp_sam_with_checkpoint_trains_under_ddp(acdc_env, tmp_path, official_sam):
    result = _run(acdc_env, tmp_path, official_sam, "HSPSAMTrainer_5epochs", "2d", phases=[0])
    _assert_ranks_agree_and_frozen_stay(result, STEPS)
    assert all(n.startswith("encoder.") and "lora_" not in n for n in result["frozen"])


@pytest.mark.faults
@pytest.mark.fault("training")
def test_self_prompt_sam_with_checkpoint_trains_under_ddp_in_warmup_and_full_phase(acdc_env, tmp_path, official_sam):
    # 5 epochs: epoch 0 is the generator warm-up, epoch 1 the full loss
    result = _run(acdc_env, tmp_path, official_sam, "SelfPromptSAMTrainer_5epochs", "2d", phases=[0, 1])
    _assert_ranks_agree_and_frozen_stay(result, 2 * STEPS)
    assert result["use_sam_decoder"] is True  # under DDP SAM's decoder runs in warm-up too (weight 1e-6)
    assert any(n.startswith("mask_decoder.") for n in result["frozen"])


@pytest.mark.faults
@pytest.mark.fault("training")
def test_pg_sam_with_checkpoint_trains_under_ddp(acdc_env, tmp_path, official_sam):
    """Every PG-SAM part (text prior, aligner, MLFF's deformable convolution, IMO) gets a gradient on every rank."""
    result = _run(acdc_env, tmp_path, official_sam, "PGSAMTrainer_5epochs", "2d", phases=[0])
    _assert_ranks_agree_and_frozen_stay(result, STEPS)
    assert all(n.startswith("encoder.") and "lora_" not in n for n in result["frozen"])

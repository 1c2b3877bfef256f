"""The papers' setting with the project's own pretrained encoder: ``export-encoder`` from a trained fold,
loaded through ``SAM_NNUNET_CHECKPOINT``, frozen, and fine-tuned with LoRA (HSP-SAM) or adapters
(Self-Prompt-SAM) by the trainers' own code."""
import math
import os
import shutil

import pytest
import torch
from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

from sam_nnunet.cli import main as cli
from sam_nnunet.export.encoder import encoder_state_dict, export_encoder
from sam_nnunet.modeling.weights.checkpoint import load_sam_checkpoint, official_sam_keys
from sam_nnunet.modeling.blocks.lora import lora_layers, merge_lora
from sam_nnunet.training.budget import budgeted, build_trainer

CPU = torch.device("cpu")
STEPS = 3


def _golden_network(model_folder):
    """The committed golden fold (HSPSAMTrainer_20epochs, vit_tiny, 1 channel) with its trained weights."""
    from sam_nnunet.export.model import load_fold_network

    return load_fold_network(model_folder, 0)[0]


@pytest.fixture(scope="module")
def exported(tmp_path_factory, golden_model_folder):
    """The golden fold's encoder written by the CLI, as a user would."""
    results = tmp_path_factory.mktemp("results")
    shutil.copytree(golden_model_folder.parent, results / golden_model_folder.parent.name)
    out = results / "encoder.pth"
    old = os.environ.get("nnUNet_results")
    os.environ["nnUNet_results"] = str(results)
    try:
        assert cli(["export-encoder", "-d", "27", "-c", "2d", "-tr", "HSPSAMTrainer_20epochs", "-p",
                    "nnUNetPlans_SAMcpu", "-f", "0", "-o", str(out)]) == 0
    finally:
        os.environ.pop("nnUNet_results") if old is None else os.environ.__setitem__("nnUNet_results", old)
    return out


def test_merged_lora_gives_the_same_outputs(golden_model_folder):
    net = _golden_network(golden_model_folder)
    assert any(layer.lora_B.abs().sum() > 0 for layer in lora_layers(net))  # trained factors, not the zero init
    x = torch.randn(2, 1, *net.encoder.grid_size).repeat_interleave(16, -1).repeat_interleave(16, -2)
    x = x + 0.1 * torch.randn_like(x)
    with torch.no_grad():
        before = net(x)
        assert merge_lora(net) == len(net.encoder.blocks)
        after = net(x)
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-4)
    assert torch.equal(after.argmax(1), before.argmax(1))


def test_exported_file_has_the_official_encoder_layout_and_reproduces_the_fold(exported, golden_model_folder):
    sd = torch.load(exported, map_location="cpu", weights_only=True)
    net = _golden_network(golden_model_folder)
    official = [k for k in official_sam_keys(len(net.encoder.blocks)) if k.startswith("image_encoder.")]
    assert sorted(sd) == sorted(official)
    assert sd["image_encoder.patch_embed.proj.weight"].shape[1] == 3  # SAM's RGB layout
    # a fresh network of the same architecture, loaded from the file, has the fold's encoder (LoRA merged)
    fresh = type(net)(num_input_channels=1, num_classes=net.num_classes, img_size=(128, 128), encoder="vit_tiny",
                      num_prompts=net.num_prompts).eval()
    report = load_sam_checkpoint(fresh, exported)
    assert not report.not_supplied or all(".neck" not in k for k in report.not_supplied)
    x = torch.randn(1, 1, 128, 128)
    with torch.no_grad():
        ours = fresh.encoder(x)
        theirs = net.encoder(x)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    assert all(len(lora.lora_B.nonzero()) == 0 for lora in lora_layers(fresh))  # fresh LoRA: the update is in W


def test_export_refuses_to_overwrite_and_names_a_missing_fold(exported, tmp_path, golden_model_folder):
    before = exported.read_bytes()
    with pytest.raises(FileExistsError, match="not overwriting"):
        export_encoder(golden_model_folder, 0, exported)
    assert exported.read_bytes() == before
    with pytest.raises(FileNotFoundError, match="no checkpoint_final.pth in .*fold_3"):
        export_encoder(golden_model_folder, 3, tmp_path / "x.pth")
    assert not (tmp_path / "x.pth").exists()


def test_other_channel_counts_are_refused():
    from sam_nnunet.modeling.hsp_sam import HSPSAM

    net = HSPSAM(num_input_channels=2, num_classes=2, img_size=(32, 32), encoder="vit_tiny")
    with pytest.raises(ValueError, match="2 input channels; SAM's layout has 3"):
        encoder_state_dict(net)


def _fine_tune(trainer_name, configuration, checkpoint, monkeypatch):
    """Real training steps in Self-Prompt-SAM's full phase (every part in the loss; the last epoch of 5), with
    the exported encoder as SAM_NNUNET_CHECKPOINT; returns (trainer, weights before the steps)."""
    monkeypatch.setenv("SAM_NNUNET_CHECKPOINT", str(checkpoint))
    monkeypatch.setenv("nnUNet_n_proc_DA", "0")
    monkeypatch.setenv("SAM_NNUNET_SEED", "0")
    before = {}

    def snapshot(t):
        before.update({n: p.detach().clone() for n, p in t._network().named_parameters()})

    # the last of 5 schedule epochs: Self-Prompt-SAM's full phase, at a learning rate that still moves every weight
    cls = budgeted(recursive_find_trainer_class_by_name(trainer_name), steps=STEPS, schedule_epochs=5,
                   start_fraction=0.8, before_budget=snapshot)
    t = build_trainer(cls, "27", configuration, 0, "nnUNetPlans_SAMcpu", CPU)
    t.run_training()
    assert t.budget_record.steps == STEPS and all(math.isfinite(loss) for loss in t.budget_record.losses)
    assert [epoch for _, epoch in t.budget_record.schedule] == [4]  # one epoch, the full phase
    return t, before


def _frozen_without_checkpoint(t):
    """Parameters the network itself never trains (e.g. an embedding its forward never uses)."""
    net = type(t).build_network_architecture(t.plans_manager, t.configuration_manager,
                                             t.num_input_channels, t.label_manager.num_segmentation_heads)
    return {n for n, p in net.named_parameters() if not p.requires_grad}


def _assert_frozen_exactly_and_trained_moved(t, before, from_checkpoint):
    net = t._network()
    frozen_expected = set(from_checkpoint) | _frozen_without_checkpoint(t)
    params = dict(net.named_parameters())
    frozen = {n for n, p in params.items() if not p.requires_grad}
    assert frozen == frozen_expected
    assert all(torch.equal(params[n], before[n]) for n in frozen)  # bit for bit
    assert all(params[n].grad is None for n in frozen)
    with_grad = {n for n, p in params.items() if p.grad is not None}
    assert with_grad == set(params) - frozen  # every part the paper trains gets a gradient, nothing else
    moved = sum(not torch.equal(params[n], before[n]) for n in with_grad)
    assert moved >= 0.9 * len(with_grad)


def test_hsp_sam_fine_tunes_lora_on_the_frozen_exported_encoder(acdc_env, exported, monkeypatch):
    t, before = _fine_tune("HSPSAMTrainer_5epochs", "2d", exported, monkeypatch)
    net = t._network()
    sd = torch.load(exported, map_location="cpu", weights_only=True)
    expected = {"encoder." + k[len("image_encoder."):] for k in sd if not k.startswith("image_encoder.neck.")}
    _assert_frozen_exactly_and_trained_moved(t, before, expected)
    torch.testing.assert_close(net.encoder.blocks[1].attn.qkv.weight, sd["image_encoder.blocks.1.attn.qkv.weight"],
                               rtol=0, atol=0)
    assert "pretrained parameters frozen" in open(t.log_file).read()


def test_self_prompt_sam_fine_tunes_adapters_on_the_frozen_exported_encoder(acdc_env, exported, monkeypatch):
    t, before = _fine_tune("SelfPromptSAMTrainer_5epochs", "2d", exported, monkeypatch)
    net = t._network()
    sd = torch.load(exported, map_location="cpu", weights_only=True)
    expected = {d for k in sd for d in net.sam_key_map(k) if d in dict(net.named_parameters())}
    assert expected and all(not n.startswith(("prompt_generator.", "mc_adapter.")) for n in expected)
    _assert_frozen_exactly_and_trained_moved(t, before, expected)
    trained = {n for n, p in net.named_parameters() if p.requires_grad}
    assert any("adapter" in n for n in trained) and not any(n.endswith("attn.qkv.weight") for n in trained)

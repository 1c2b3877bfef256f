"""Checkpoint loading, tested on checkpoints written in the official SAM key layout.

Pretrained weights cannot be downloaded here, so the checkpoints are built with segment-anything's
own classes (ImageEncoderViT, PromptEncoder, MaskDecoder) and saved as ``sam_vit_*.pth`` are. The files
that must be refused are written in their real layouts too: nnU-Net checkpoints by nnU-Net's own
``save_checkpoint``, SAM 2 with the key names of facebookresearch/sam2, LoRA files as SAMed and this
project save them, compiled/parallel state dicts by torch's own wrappers.
"""
import hashlib
import re

import numpy as np
import pytest
import torch
from torch import nn

from sam_nnunet.modeling.weights.checkpoint import (CheckpointError, file_fingerprint, load_sam_checkpoint,
                                            read_sam_state_dict)
from sam_nnunet.modeling.hsp_sam import HSPSAM
from sam_nnunet.modeling.self_prompt_sam import SelfPromptSAM


def save(sd, path):
    torch.save(sd, path)
    return path


def test_round_trip_reproduces_sam_image_encoder(official_sam, tmp_path, small_encoder):
    sam, sd = official_sam()
    path = save(sd, tmp_path / "sam_vit_test.pth")
    net = HSPSAM(num_input_channels=3, num_classes=2, img_size=(128, 128), encoder=small_encoder, qa_prompts=False)
    report = load_sam_checkpoint(net, path)
    assert not report.resized
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        ours = net.necks[-1](net.encoder(x)[-1].permute(0, 3, 1, 2))
        ref = sam.image_encoder(x)
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)
    for j in range(net.num_levels):
        torch.testing.assert_close(net.decoders[j].transformer.layers[0].mlp.lin1.weight,
                                   sam.mask_decoder.transformer.layers[0].mlp.lin1.weight)
    torch.testing.assert_close(net.pe_layer.positional_encoding_gaussian_matrix,
                               sam.prompt_encoder.pe_layer.positional_encoding_gaussian_matrix)
    # reported by name: new LoRA factors and level necks are missing, SAM's IoU head unused
    assert "encoder.blocks.0.attn.qkv.lora_A" in report.missing
    assert "necks.0.0.weight" in report.missing
    assert "mask_decoder.iou_prediction_head.layers.0.weight" in report.unexpected
    assert "encoder.blocks.3.attn.rel_pos_h" in report.loaded
    assert "lora_A" in report.format()


def test_other_patch_size_and_single_channel_are_adapted(official_sam, tmp_path, small_encoder):
    _, sd = official_sam(img_size=128)
    path = save(sd, tmp_path / "sam.pth")
    net = HSPSAM(num_input_channels=1, num_classes=4, img_size=(64, 96), encoder=small_encoder)
    report = load_sam_checkpoint(net, path)
    resized = {k: dst for k, _, dst in report.resized}
    assert resized["encoder.pos_embed"] == (1, 4, 6, 48)
    assert resized["encoder.blocks.1.attn.rel_pos_h"] == (7, 12)  # global block: 2 * 4 - 1
    assert resized["encoder.blocks.1.attn.rel_pos_w"] == (11, 12)
    torch.testing.assert_close(net.encoder.patch_embed.proj.weight,
                               sd["image_encoder.patch_embed.proj.weight"].sum(1, keepdim=True))
    assert net(torch.randn(1, 1, 64, 96))[0].shape == (1, 4, 64, 96)


def test_medsam_style_wrapped_checkpoint_loads(official_sam, tmp_path, small_encoder):
    _, sd = official_sam()
    wrapped = {"model": {"module." + k: v for k, v in sd.items()}, "epoch": 3}
    path = save(wrapped, tmp_path / "medsam_vit_test.pth")
    assert set(read_sam_state_dict(path)) == set(sd)
    net = HSPSAM(num_input_channels=1, num_classes=2, img_size=(128, 128), encoder=small_encoder)
    assert len(load_sam_checkpoint(net, path).loaded) > 0


@pytest.mark.bad_input("checkpoints")
def test_missing_checkpoint_path_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="not found.*sam_vit_b_01ec64.pth"):
        read_sam_state_dict(tmp_path / "nope.pth")


@pytest.mark.faults
@pytest.mark.bad_input("checkpoints", cases=2)
def test_corrupt_checkpoint_is_a_clear_error(official_sam, tmp_path, small_encoder):
    _, sd = official_sam()
    full = save(sd, tmp_path / "full.pth").read_bytes()
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(full[: len(full) // 2])
    with pytest.raises(CheckpointError, match="corrupt, truncated or not a checkpoint"):
        read_sam_state_dict(truncated)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"definitely not a checkpoint" * 10)
    with pytest.raises(CheckpointError, match="Could not read") as err:
        read_sam_state_dict(garbage)
    assert "weights_only` set to `False`" not in str(err.value)  # torch's advice does not apply to a broken file


@pytest.mark.bad_input("checkpoints")
def test_foreign_layout_is_a_clear_error(tmp_path):
    path = save({"encoder.weight": torch.zeros(3)}, tmp_path / "unet.pth")
    with pytest.raises(CheckpointError, match="does not look like a SAM checkpoint"):
        read_sam_state_dict(path)


@pytest.mark.parametrize("file_size, file_name", [
    (dict(embed_dim=64, depth=4), "vit_tiny"),  # wider than the network's encoder (48), same depth
    (dict(embed_dim=48, depth=6), "an unknown size"),  # deeper (6 blocks), same width
], ids=["wider", "deeper"])
@pytest.mark.bad_input("checkpoints")
def test_wrong_vit_size_is_an_error_not_a_partial_load(official_sam, tmp_path, small_encoder, file_size, file_name):
    """A file in the official layout for another ViT size: the error names what the file holds and what the network
    expects, and not one tensor was loaded (a deeper file's first blocks would fit the network's, name for name)."""
    _, sd = official_sam(**file_size)
    path = save(sd, tmp_path / "sam_other_size.pth")
    net = HSPSAM(num_input_channels=3, num_classes=2, img_size=(128, 128), encoder=small_encoder)
    assert (net.encoder.embed_dim, len(net.encoder.blocks)) == (48, 4)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    message = (rf"{re.escape(str(path))} holds a ViT with embed dim {file_size['embed_dim']} and {file_size['depth']} "
               rf"blocks \({file_name}\), but this network's encoder has embed dim 48 and 4 blocks \({small_encoder}\)\. "
               r"Choose the matching encoder")
    with pytest.raises(CheckpointError, match=message):
        load_sam_checkpoint(net, path)
    after = net.state_dict()
    assert after.keys() == before.keys()
    assert [k for k, v in after.items() if not torch.equal(before[k], v)] == []  # nothing partially loaded


@pytest.mark.bad_input("checkpoints")
def test_narrower_and_shallower_file_than_the_network_is_named_too(official_sam, tmp_path):
    _, sd = official_sam(embed_dim=64, depth=4)
    path = save(sd, tmp_path / "sam.pth")
    net = HSPSAM(num_input_channels=1, num_classes=2, img_size=(64, 64), encoder="vit_small")
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(CheckpointError, match=r"embed dim 64 and 4 blocks \(vit_tiny\), but this network's encoder "
                                              r"has embed dim 192 and 6 blocks \(vit_small\)"):
        load_sam_checkpoint(net, path)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


# ---------------------------------------------------------------- wrappers that are accepted
def test_compiled_and_parallel_state_dicts_load_like_the_plain_file(official_sam, tmp_path, small_encoder):
    sam, sd = official_sam()

    def load(state):
        torch.manual_seed(1)  # same initialisation for what the file does not hold
        net = HSPSAM(num_input_channels=1, num_classes=2, img_size=(128, 128), encoder=small_encoder)
        report = load_sam_checkpoint(net, save(state, tmp_path / "sam.pth"))
        return net.state_dict(), report

    plain, plain_report = load(sd)
    # the key layouts torch itself writes: torch.compile -> "_orig_mod.", (Distributed)DataParallel -> "module."
    for wrapped in (torch.compile(sam), nn.DataParallel(torch.compile(sam)), torch.compile(nn.DataParallel(sam))):
        state = wrapped.state_dict()
        assert all(k.startswith(("_orig_mod.", "module._orig_mod.")) for k in state)
        assert set(read_sam_state_dict(save(state, tmp_path / "sam.pth"))) == set(sd)
        weights, report = load(state)
        assert report.loaded == plain_report.loaded
        assert all(torch.equal(weights[k], plain[k]) for k in plain)


# ---------------------------------------------------------------- files that are not SAM (v1) weights
# Real key names of SAM 2.1 (facebookresearch/sam2, sam2/configs/sam2.1/sam2.1_hiera_t.yaml built with
# sam2.modeling), a sample of each top-level module with its shape; the checkpoint is saved as {"model": ...}.
SAM2_HIERA_T_KEYS = {
    "maskmem_tpos_enc": (7, 1, 1, 64), "no_mem_embed": (1, 1, 256), "no_obj_ptr": (1, 256),
    "image_encoder.trunk.pos_embed": (1, 96, 7, 7), "image_encoder.trunk.pos_embed_window": (1, 96, 8, 8),
    "image_encoder.trunk.patch_embed.proj.weight": (96, 3, 7, 7), "image_encoder.trunk.patch_embed.proj.bias": (96,),
    "image_encoder.trunk.blocks.0.norm1.weight": (96,), "image_encoder.trunk.blocks.0.attn.qkv.weight": (288, 96),
    "image_encoder.trunk.blocks.0.attn.proj.weight": (96, 96),
    "image_encoder.trunk.blocks.0.mlp.layers.0.weight": (384, 96),
    "image_encoder.trunk.blocks.1.proj.weight": (192, 96),
    "image_encoder.neck.convs.0.conv.weight": (256, 768, 1, 1), "image_encoder.neck.convs.0.conv.bias": (256,),
    "mask_downsample.weight": (1, 1, 4, 4),
    "memory_attention.layers.0.self_attn.q_proj.weight": (256, 256),
    "memory_attention.layers.0.cross_attn_image.k_proj.weight": (256, 64),
    "memory_attention.layers.0.linear1.weight": (2048, 256), "memory_attention.norm.weight": (256,),
    "memory_encoder.mask_downsampler.encoder.0.weight": (4, 1, 3, 3),
    "memory_encoder.pix_feat_proj.weight": (256, 256, 1, 1),
    "memory_encoder.fuser.layers.0.dwconv.weight": (256, 1, 7, 7), "memory_encoder.out_proj.weight": (64, 256, 1, 1),
    "sam_prompt_encoder.pe_layer.positional_encoding_gaussian_matrix": (2, 128),
    "sam_prompt_encoder.point_embeddings.0.weight": (1, 256), "sam_prompt_encoder.no_mask_embed.weight": (1, 256),
    "sam_mask_decoder.transformer.layers.0.self_attn.q_proj.weight": (256, 256),
    "sam_mask_decoder.iou_token.weight": (1, 256), "sam_mask_decoder.mask_tokens.weight": (4, 256),
    "sam_mask_decoder.obj_score_token.weight": (1, 256), "sam_mask_decoder.conv_s0.weight": (32, 256, 1, 1),
    "obj_ptr_proj.layers.0.weight": (256, 256),
}


@pytest.mark.faults
@pytest.mark.bad_input("checkpoints")
def test_sam2_checkpoint_is_named(tmp_path, small_encoder):
    state = {"model": {k: torch.randn(shape) for k, shape in SAM2_HIERA_T_KEYS.items()}}
    path = save(state, tmp_path / "sam2.1_hiera_tiny.pt")
    message = (r"looks like a SAM 2 checkpoint \(image_encoder.trunk.\*, image_encoder.neck.convs.\*, "
               r"memory_attention.\*.*sam_vit_b_01ec64.pth")
    with pytest.raises(CheckpointError, match=message):
        read_sam_state_dict(path)
    net = HSPSAM(num_input_channels=1, num_classes=2, img_size=(64, 64), encoder=small_encoder)
    with pytest.raises(CheckpointError, match=message):
        load_sam_checkpoint(net, path)


def _samed_lora_file(sd):
    """SAMed's LoRA_Sam.save_lora_parameters: w_a_000.. / w_b_000.. (q and v of every block) + the
    prompt encoder and mask decoder of the SAM it wraps; no image encoder."""
    a_tensors = {f"w_a_{i:03d}": torch.randn(4, 48) for i in range(8)}  # 4 blocks x (q, v)
    b_tensors = {f"w_b_{i:03d}": torch.zeros(48, 4) for i in range(8)}
    decoder = {k: v for k, v in sd.items() if k.startswith(("prompt_encoder.", "mask_decoder."))}
    return {**a_tensors, **b_tensors, **decoder}


def _hsp_sam_lora_file(sd, small_encoder):
    """This project's LoRA factors, as a user saves them from a trained HSP-SAM (``...qkv.lora_A/B``)."""
    net = HSPSAM(num_input_channels=1, num_classes=2, img_size=(64, 64), encoder=small_encoder, lora_rank=4)
    return {k: v for k, v in net.state_dict().items() if "lora_" in k}


@pytest.mark.faults
@pytest.mark.parametrize("layout, holds", [
    (_samed_lora_file, r"holds LoRA factors \(16 tensors, e.g. w_a_000, w_a_001, w_a_002\) and 137 other tensors "
                       r"\(mask_decoder.\*, prompt_encoder.\*\)"),
    (_hsp_sam_lora_file, r"holds only LoRA factors \(8 tensors, e.g. encoder.blocks.0.attn.qkv.lora_A, ")],
    ids=["samed", "hsp_sam"])
@pytest.mark.bad_input("checkpoints")
def test_lora_only_file_asks_for_the_base_checkpoint(official_sam, tmp_path, small_encoder, layout, holds):
    _, sd = official_sam()
    state = layout(sd) if layout is _samed_lora_file else layout(sd, small_encoder)
    path = save(state, tmp_path / "lora.pth")
    with pytest.raises(CheckpointError, match=rf"{holds}.*not the SAM base weights: it has no image_encoder.\* "
                                              r"tensors. Give the base checkpoint.*sam_vit_b_01ec64.pth"):
        read_sam_state_dict(path)


@pytest.mark.parametrize("drop, named", [
    (lambda k: k == "image_encoder.pos_embed", r"missing image_encoder.pos_embed \(1 of the "),
    (lambda k: k.startswith("image_encoder.patch_embed."), r"missing image_encoder.patch_embed.\* \(2 of the "),
    (lambda k: k.startswith("image_encoder.blocks.2."), r"missing image_encoder.blocks.2.\* \("),
    # the last block: the file then looks like a shallower ViT, still named as partial
    (lambda k: k.startswith("image_encoder.blocks.3."), r"missing image_encoder.blocks.3.\* \("),
    (lambda k: k == "image_encoder.blocks.1.mlp.lin2.weight", r"missing image_encoder.blocks.1.mlp.lin2.weight \("),
    (lambda k: k.startswith("image_encoder.") and not k.startswith("image_encoder.neck."),
     r"missing image_encoder.pos_embed, image_encoder.patch_embed.\*, image_encoder.blocks.0.\*, .* "
     r"image_encoder.blocks.3.\* \(51 of the 51 "),
], ids=["pos_embed", "patch_embed", "middle_block", "last_block", "one_block_tensor", "neck_only"])
@pytest.mark.bad_input("checkpoints")
def test_partial_checkpoint_names_what_is_missing(official_sam, tmp_path, small_encoder, drop, named):
    _, sd = official_sam()
    path = save({k: v for k, v in sd.items() if not drop(k)}, tmp_path / "sam_partial.pth")
    net = HSPSAM(num_input_channels=1, num_classes=2, img_size=(64, 64), encoder=small_encoder)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(CheckpointError, match=rf"is a partial SAM checkpoint: {named}.*sam_vit_b_01ec64.pth"):
        load_sam_checkpoint(net, path)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


class _Canary:
    """Pickles as a call that creates a file: proof of whether a loader ran the file's code."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


def _nnunet_checkpoint(path, numpy_log: bool, canary=None):
    """A checkpoint written by nnU-Net's own ``nnUNetTrainer.save_checkpoint`` after one epoch."""
    from nnunetv2.training.logging.nnunet_logger import MetaLogger
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    t = nnUNetTrainer.__new__(nnUNetTrainer)  # the attributes save_checkpoint reads, without a dataset
    t.local_rank, t.is_ddp, t.disable_checkpointing = 0, False, False
    t.network = nn.Conv2d(1, 4, 3)
    t.optimizer = torch.optim.SGD(t.network.parameters(), lr=0.01, momentum=0.99, nesterov=True)
    t.network(torch.randn(1, 1, 8, 8)).sum().backward()
    t.optimizer.step()
    t.grad_scaler = None
    t.logger = MetaLogger(str(path.parent), False)
    num = np.float64 if numpy_log else float  # nnU-Net logs np.nanmean results, i.e. numpy scalars
    for key, value in [("mean_fg_dice", num(0.5)), ("ema_fg_dice", num(0.5)), ("dice_per_class_or_region", [0.4, 0.6]),
                       ("train_losses", num(-0.3)), ("val_losses", num(-0.2)), ("lrs", 0.01),
                       ("epoch_start_timestamps", 1.0), ("epoch_end_timestamps", 2.0)]:
        t.logger.local_logger.log(key, value, 0)
    t._best_ema, t.current_epoch = num(0.5), 0
    t.my_init_kwargs = {"plans": {"plans_name": "nnUNetPlans", "configurations": {}}, "configuration": "2d", "fold": 0,
                        "dataset_json": {"labels": {"background": 0, "LV": 1}}, "device": torch.device("cpu")}
    if canary is not None:
        t.my_init_kwargs["extra"] = _Canary(canary)
    t.inference_allowed_mirroring_axes = (0, 1)
    t.save_checkpoint(str(path))
    return path


@pytest.mark.parametrize("numpy_log", [True, False], ids=["refused-by-weights-only", "weights-only-readable"])
@pytest.mark.bad_input("checkpoints")
def test_nnunet_training_checkpoint_is_named(tmp_path, numpy_log):
    path = _nnunet_checkpoint(tmp_path / "checkpoint_final.pth", numpy_log)
    if numpy_log:
        with pytest.raises(Exception, match="Weights only load failed"):
            torch.load(path, weights_only=True)
    message = (r"checkpoint_final.pth is an nnU-Net training checkpoint of trainer nnUNetTrainer, saved after 1 "
               r"epoch \(network_weights, optimizer_state.*SAM_NNUNET_CHECKPOINT takes pretrained SAM weights.*"
               r"sam_vit_b_01ec64.pth.*nnUNetv2_train .* --c.*nnUNetv2_predict .* -chk checkpoint_final.pth")
    with pytest.raises(CheckpointError, match=message):
        read_sam_state_dict(path)


@pytest.mark.faults
@pytest.mark.bad_input("checkpoints")
def test_foreign_pickled_objects_are_identified_without_running_them(tmp_path):
    marker = tmp_path / "code_ran"
    path = _nnunet_checkpoint(tmp_path / "checkpoint_best.pth", numpy_log=True, canary=marker)
    with pytest.raises(CheckpointError, match="nnU-Net training checkpoint of trainer nnUNetTrainer"):
        read_sam_state_dict(path)
    other = save({"model": {"image_encoder.pos_embed": torch.zeros(1)}, "extra": _Canary(marker)}, tmp_path / "x.pth")
    with pytest.raises(CheckpointError, match=r"holds Python objects besides tensors \(.*open.*top-level keys: "
                                              r"\['model', 'extra'\].*not a SAM state dict"):
        read_sam_state_dict(other)
    assert not marker.exists()


# ---------------------------------------------------------------- files that load, and what gets frozen
def _without_some_optional_tensors(sd):
    """Official layout minus tensors the rule lets a file lack: two blocks' relative-position tables, the neck
    and the mask decoder's transformer (e.g. an MAE-initialised ViT with a fresh decoder)."""
    dropped = lambda k: (k.startswith(("image_encoder.blocks.0.attn.rel_pos", "image_encoder.blocks.2.attn.rel_pos",
                                        "image_encoder.neck.", "mask_decoder.transformer.")))
    return {k: v for k, v in sd.items() if not dropped(k)}


@pytest.mark.parametrize("network", ["hsp", "self_prompt"])
def test_only_tensors_the_file_supplied_are_frozen(official_sam, tmp_path, small_encoder, network):
    _, sd = official_sam()
    partial = _without_some_optional_tensors(sd)
    path = save(partial, tmp_path / "sam_partial.pth")
    if network == "hsp":
        net, scope = HSPSAM(num_input_channels=1, num_classes=2, img_size=(64, 64), encoder=small_encoder), "encoder."
        neck, decoder = "necks.1.0.weight", "decoders.0.transformer.layers.0.mlp.lin1.weight"
    else:
        net, scope = SelfPromptSAM(num_input_channels=1, num_classes=3, img_size=(64, 64), encoder=small_encoder), ""
        neck, decoder = "neck.0.weight", "mask_decoder.transformer.layers.0.mlp.lin1.weight"
    designed_frozen = {n for n, p in net.named_parameters() if not p.requires_grad}
    report = load_sam_checkpoint(net, path)

    # the file loads; what it lacked is named, in network keys
    all_params = dict(net.named_parameters())
    not_supplied = set(report.not_supplied)
    assert not_supplied == {d for k in sd if k not in partial for d in net.sam_key_map(k) if d in all_params}
    assert {f"encoder.blocks.{i}.attn.rel_pos_{a}" for i in (0, 2) for a in "hw"} | {neck, decoder} <= not_supplied
    assert not not_supplied & set(report.loaded)
    assert "encoder.blocks.1.attn.rel_pos_h" in report.loaded and "encoder.pos_embed" in report.loaded
    assert "not in this file" in report.format() and "encoder.blocks.0.attn.rel_pos_h" in report.format()

    frozen, trainable = net.freeze_pretrained(report)
    params = {n: p for n, p in net.named_parameters() if n.startswith(scope)}
    frozen_names = {n for n, p in params.items() if not p.requires_grad}
    assert frozen_names == (set(report.loaded) & set(params)) | (designed_frozen & set(params))
    assert all(params[n].requires_grad for n in not_supplied if n in params and n not in designed_frozen)
    assert frozen == sum(params[n].numel() for n in frozen_names)
    assert trainable == sum(p.numel() for n, p in params.items() if n not in frozen_names)
    assert any("lora_" in n or "adapter" in n for n, p in params.items() if p.requires_grad)


def test_lora_factors_inside_a_sam_file_are_not_loaded_and_stay_trained(official_sam, tmp_path, small_encoder):
    _, sd = official_sam()
    net = HSPSAM(num_input_channels=1, num_classes=2, img_size=(64, 64), encoder=small_encoder, lora_rank=4)
    stale = torch.randn(4, 48)
    path = save({**sd, "image_encoder.blocks.0.attn.qkv.lora_A": stale}, tmp_path / "sam_with_lora.pth")
    report = load_sam_checkpoint(net, path)
    assert "image_encoder.blocks.0.attn.qkv.lora_A" in report.unexpected
    assert not torch.equal(net.encoder.blocks[0].attn.qkv.lora_A, stale)
    net.freeze_pretrained(report)
    assert net.encoder.blocks[0].attn.qkv.lora_A.requires_grad


# ---------------------------------------------------------------- file identity for the resume guard
def test_file_fingerprint_compares_content_not_path(tmp_path):
    content = bytes(range(256)) * 1001  # not a multiple of the chunk size
    a, b = tmp_path / "a" / "sam.pth", tmp_path / "mnt" / "other_name.pth"
    for p in (a, b):
        p.parent.mkdir()
        p.write_bytes(content)
    fa = file_fingerprint(a, chunk_size=4096)
    assert fa == {"size": len(content), "sha256": hashlib.sha256(content).hexdigest()}
    assert file_fingerprint(b) == fa  # same bytes at another path (another mount) -> same file
    changed = bytearray(content)
    changed[len(content) // 2] ^= 1
    a.write_bytes(bytes(changed))  # same path, one byte different -> another file
    fc = file_fingerprint(a, chunk_size=4096)
    assert fc["size"] == fa["size"] and fc["sha256"] != fa["sha256"]

"""Checkpoint loading, tested on checkpoints written in the official SAM key layout.

Pretrained weights cannot be downloaded here, so the checkpoints are built with segment-anything's
own classes (ImageEncoderViT, PromptEncoder, MaskDecoder) and saved as ``sam_vit_*.pth`` are.
"""
import pytest
import torch

from sam_nnunet.modeling.checkpoint import CheckpointError, load_sam_checkpoint, read_sam_state_dict
from sam_nnunet.modeling.hsp_sam import HSPSAM


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


def test_missing_checkpoint_path_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="not found.*sam_vit_b_01ec64.pth"):
        read_sam_state_dict(tmp_path / "nope.pth")


def test_corrupt_checkpoint_is_a_clear_error(official_sam, tmp_path, small_encoder):
    _, sd = official_sam()
    full = save(sd, tmp_path / "full.pth").read_bytes()
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(full[: len(full) // 2])
    with pytest.raises(CheckpointError, match="corrupt, truncated or not a checkpoint"):
        read_sam_state_dict(truncated)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"definitely not a checkpoint" * 10)
    with pytest.raises(CheckpointError, match="Could not read"):
        read_sam_state_dict(garbage)


def test_foreign_layout_is_a_clear_error(tmp_path):
    path = save({"encoder.weight": torch.zeros(3)}, tmp_path / "unet.pth")
    with pytest.raises(CheckpointError, match="does not look like a SAM checkpoint"):
        read_sam_state_dict(path)


def test_wrong_vit_size_is_an_error_not_a_partial_load(official_sam, tmp_path):
    _, sd = official_sam(embed_dim=64)  # a checkpoint for another width
    path = save(sd, tmp_path / "sam.pth")
    net = HSPSAM(num_input_channels=1, num_classes=2, img_size=(64, 64), encoder="vit_tiny")
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(CheckpointError, match="embed dim 64 and 4 blocks.*embed dim 64 and 4 blocks|decoder|cannot be mapped"):
        load_sam_checkpoint(net, path)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    net_b = HSPSAM(num_input_channels=1, num_classes=2, img_size=(64, 64), encoder="vit_small")
    with pytest.raises(CheckpointError, match=r"embed dim 64 and 4 blocks .* embed dim 192 and 6 blocks \(vit_small\)"):
        load_sam_checkpoint(net_b, path)

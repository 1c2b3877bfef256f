"""SelfPromptSAM: shapes in 2D and 3D, deep supervision, ablation switches, checkpoints, empty classes."""
import pytest
import torch

from sam_nnunet.modeling.checkpoint import load_sam_checkpoint
from sam_nnunet.modeling.self_prompt_sam import SelfPromptSAM

TABLE4 = {
    "S1": dict(prompt_generator="conv", adapter="none", depth_pos_embed=False, modality_adapter=False, mc_adapter=False),
    "S2": dict(adapter="none", depth_pos_embed=False, modality_adapter=False, mc_adapter=False),
    "S3": dict(adapter="vanilla", depth_pos_embed=False, modality_adapter=False, mc_adapter=False),
    "S4": dict(adapter="depth_before", depth_pos_embed=False, modality_adapter=False, mc_adapter=False),
    "S5": dict(adapter="depth_after", depth_pos_embed=False, modality_adapter=False, mc_adapter=False),
    "S6": dict(adapter="dfused", depth_pos_embed=False, modality_adapter=False, mc_adapter=False),
    "S7": dict(modality_adapter=False, mc_adapter=False),
    "S8": dict(mc_adapter=False),
    "S9": dict(),
}


def net(D=1, **kw):
    torch.manual_seed(0)
    return SelfPromptSAM(num_input_channels=kw.pop("C", 1), num_classes=kw.pop("K", 4), img_size=kw.pop("img", (64, 48)),
                         patch_depth=D, encoder=kw.pop("encoder", "vit_tiny"), **kw)


@pytest.mark.parametrize("D", [1, 3])
def test_outputs_match_nnunet_deep_supervision_targets(D):
    m = net(D)
    x = torch.randn(2, 1, D, 64, 48) if D > 1 else torch.randn(2, 1, 64, 48)
    outs = m(x)
    ndim = 3 if D > 1 else 2
    scales = m.deep_supervision_scales(ndim)
    assert len(outs) == len(scales) == 5
    spatial = x.shape[2:]
    for out, scale in zip(outs, scales):  # nnU-Net downsamples targets to round(size * scale)
        assert out.shape == (2, 4, *[round(s * f) for s, f in zip(spatial, scale)])
        assert torch.isfinite(out).all()
    m.deep_supervision = False
    assert m(x).shape == (2, 4, *spatial)


def test_sizes_that_are_not_multiples_of_16_are_padded_and_cropped():
    m = net(1, img=(40, 50))
    outs = m(torch.randn(1, 1, 40, 50))
    assert outs[0].shape == (1, 4, 40, 50) and outs[2].shape == (1, 4, 20, 25) and outs[4].shape == (1, 4, 5, 6)


def test_wrong_depth_or_channels_are_clear_errors():
    m = net(3)
    with pytest.raises(ValueError, match="depth 3"):
        m(torch.randn(1, 1, 4, 64, 48))
    with pytest.raises(ValueError, match="input channel"):
        m(torch.randn(1, 2, 3, 64, 48))


@pytest.mark.parametrize("name", sorted(TABLE4))
def test_table4_configurations_build_and_train(name):
    m = net(2, **TABLE4[name])
    outs = m(torch.randn(1, 1, 2, 32, 32))
    sum(o.float().mean() for o in outs).backward()
    unused = [n for n, p in m.named_parameters() if p.requires_grad and p.grad is None]
    assert unused == []  # no parameter without gradient (DDP would fail on it)
    assert (m.mc_adapter is None) == ("mc_adapter" in TABLE4[name])
    assert (m.modality_adapter is None) == ("modality_adapter" in TABLE4[name])
    assert (m.encoder.depth_pos_embed is None) == ("depth_pos_embed" in TABLE4[name])
    assert len(outs) == (2 if name == "S1" else 5)


def test_depth_parts_are_off_in_2d():
    m = net(1)
    names = [n for n, _ in m.named_parameters()]
    assert not any("depth_mlp" in n or "depth_pos_embed" in n for n in names)
    assert any("depth_mlp" in n for n, _ in net(3).named_parameters())


def test_slices_interact_in_3d_only_through_the_depth_parts():
    """With trained (non-zero) adapters, changing one slice changes the prediction on another slice."""
    m = net(3)
    for name, p in m.named_parameters():
        if name.endswith("up.weight") and "adapter" in name:
            torch.nn.init.normal_(p, std=0.5)
    m.eval()
    x = torch.randn(1, 1, 3, 32, 32)
    x2 = x.clone()
    x2[:, :, 2] += 2
    with torch.no_grad():
        assert not torch.allclose(m(x)[0][:, :, 0], m(x2)[0][:, :, 0])


def test_final_loss_does_not_reach_the_generator_through_the_prompts():
    m = net(1)
    outs = m(torch.randn(2, 1, 64, 48))
    outs[0].sum().backward()
    assert all(p.grad is None for p in m.prompt_generator.heads.parameters())
    assert m.mask_decoder.output_hypernetworks_mlps[0].layers[0].weight.grad is not None


def test_warmup_mode_skips_the_sam_decoder():
    m = net(1)
    m.use_sam_decoder = False
    outs = m(torch.randn(1, 1, 64, 48))
    torch.testing.assert_close(outs[0], outs[1])  # the auxiliary mask is the prediction
    outs[0].sum().backward()
    assert all(p.grad is None for p in m.mask_decoder.parameters())


@pytest.mark.parametrize("empty_prompt", ["zeros", "padding"])
def test_absent_classes_give_finite_outputs(empty_prompt):
    """The generator's argmax rarely contains every class; absent ones take the defined empty path."""
    m = net(1, empty_prompt=empty_prompt)
    with torch.no_grad():
        for head in m.prompt_generator.heads:  # auxiliary argmax = class 0 everywhere
            head.bias.copy_(torch.tensor([100.0, 0, 0, 0]))
    outs = m(torch.randn(2, 1, 64, 48))
    assert all(torch.isfinite(o).all() for o in outs)
    outs[0].sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in m.parameters() if p.grad is not None)


def test_official_sam_checkpoint_loads_and_freezing_keeps_the_added_blocks_trainable(official_sam, small_encoder,
                                                                                    tmp_path):
    _, sd = official_sam(img_size=128)
    path = tmp_path / "sam_vit_test.pth"
    torch.save(sd, path)
    m = SelfPromptSAM(num_input_channels=1, num_classes=4, img_size=(64, 64), patch_depth=2, encoder=small_encoder)
    report = load_sam_checkpoint(m, path)
    loaded = set(report.loaded)
    assert "encoder.blocks.0.attn.qkv.weight" in loaded and "neck.0.weight" in loaded
    assert "prompt_encoder.mask_downscaling.0.weight" in loaded and "mask_decoder.mask_tokens.weight" in loaded
    assert "mask_decoder.transformer.layers.1.cross_attn_image_to_token.v_proj.weight" in loaded
    assert "mask_decoder.output_hypernetworks_mlps.0.layers.2.weight" in loaded
    assert "mask_decoder.iou_prediction_head.layers.0.weight" in report.unexpected
    assert "mask_decoder.output_hypernetworks_mlps.1.layers.0.weight" in report.unexpected
    # with the MAdapter the pretrained RGB patch embedding is used as it is
    torch.testing.assert_close(m.encoder.patch_embed.proj.weight, sd["image_encoder.patch_embed.proj.weight"])
    torch.testing.assert_close(m.mask_decoder.transformer.layers[0].mlp.lin1.weight,
                               sd["mask_decoder.transformer.layers.0.mlp.lin1.weight"])
    frozen, trainable = m.freeze_pretrained(report)
    assert frozen > 0 and trainable > 0
    trainable_names = {n for n, p in m.named_parameters() if p.requires_grad}
    assert not trainable_names & loaded
    for part in ("adapter_attn", "adapter_mlp", "adapter_image", "adapter_tokens", "depth_pos_embed",
                 "prompt_generator", "modality_adapter", "mc_adapter"):
        assert any(part in n for n in trainable_names), part
    # without the MAdapter the patch embedding is mapped onto the input channel
    m2 = SelfPromptSAM(num_input_channels=1, num_classes=4, img_size=(64, 64), patch_depth=2, encoder=small_encoder,
                       modality_adapter=False)
    r2 = load_sam_checkpoint(m2, path)
    assert any(k == "encoder.patch_embed.proj.weight" for k, _, _ in r2.resized)

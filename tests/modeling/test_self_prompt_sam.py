"""SelfPromptSAM: shapes in 2D and 3D, deep supervision, ablation switches, checkpoints, empty classes."""
import pytest
import torch

from sam_nnunet.modeling.blocks.adapters import DepthFusedAdapter, DepthMLPAdapter
from sam_nnunet.modeling.weights.checkpoint import load_sam_checkpoint
from sam_nnunet.modeling.blocks.prompt_generator import ConvPromptGenerator, MSPGenerator
from sam_nnunet.modeling.self_prompt_sam import SelfPromptSAM

# Table 4: each row adds one part to the row before; every row keeps the generator per slice
_S1 = dict(prompt_generator="conv", adapter="none", depth_pos_embed=False, modality_adapter=False, mc_adapter=False,
           generator_depth_mixing=False)
TABLE4 = {
    "S1": _S1,
    "S2": dict(_S1, prompt_generator="msp"),
    "S3": dict(_S1, prompt_generator="msp", adapter="vanilla"),
    "S4": dict(_S1, prompt_generator="msp", adapter="depth_before"),
    "S5": dict(_S1, prompt_generator="msp", adapter="depth_after"),
    "S6": dict(_S1, prompt_generator="msp", adapter="dfused"),
    "S7": dict(_S1, prompt_generator="msp", adapter="dfused", depth_pos_embed=True),
    "S8": dict(_S1, prompt_generator="msp", adapter="dfused", depth_pos_embed=True, modality_adapter=True),
    "S9": dict(generator_depth_mixing=False),
    "full": dict(),  # the network's defaults: S9 with the 3D generator
}
# what each row must build: generator, adapter kind, depth pos-embed, MAdapter, MC-Adapter, generator depth mixing
EXPECTED = {
    "S1": (ConvPromptGenerator, "none", False, False, False, False),
    "S2": (MSPGenerator, "none", False, False, False, False),
    "S3": (MSPGenerator, "vanilla", False, False, False, False),
    "S4": (MSPGenerator, "depth_before", False, False, False, False),
    "S5": (MSPGenerator, "depth_after", False, False, False, False),
    "S6": (MSPGenerator, "dfused", False, False, False, False),
    "S7": (MSPGenerator, "dfused", True, False, False, False),
    "S8": (MSPGenerator, "dfused", True, True, False, False),
    "S9": (MSPGenerator, "dfused", True, True, True, False),
    "full": (MSPGenerator, "dfused", True, True, True, True),
}


def adapter_kind(module) -> str:
    """The Table 4 kind an adapter module implements, read from its structure."""
    if module is None:
        return "none"
    if isinstance(module, DepthMLPAdapter):
        return "depth_before" if module.depth_first else "depth_after"
    assert isinstance(module, DepthFusedAdapter), type(module)
    return "vanilla" if module.depth_mlp is None else "dfused"


def adapter_slots(m):
    """Every adapter of the network: 2 per encoder block, 2 per decoder two-way block."""
    for block in m.encoder.blocks:
        yield block.adapter_attn
        yield block.adapter_mlp
    for layer in m.mask_decoder.transformer.layers:
        yield layer.adapter_tokens
        yield layer.adapter_image


def generator_depth_kernels(m):
    return {conv.kernel_size[0] for conv in m.prompt_generator.modules() if isinstance(conv, torch.nn.Conv3d)
            and max(conv.kernel_size) > 1}


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
    generator, kind, depth_pos, madapter, mc, depth_mixing = EXPECTED[name]
    m = net(2, **TABLE4[name])
    assert type(m.prompt_generator) is generator
    kinds = [adapter_kind(a) for a in adapter_slots(m)]
    assert len(kinds) == 2 * 4 + 2 * 2 and set(kinds) == {kind}
    assert (m.encoder.depth_pos_embed is not None, m.mask_decoder.depth_pos_embed is not None) == (depth_pos, depth_pos)
    assert (m.modality_adapter is not None, m.mc_adapter is not None) == (madapter, mc)
    assert m.prompt_generator.depth_mixing is depth_mixing
    assert generator_depth_kernels(m) == {3 if depth_mixing else 1}
    outs = m(torch.randn(1, 1, 2, 32, 32))
    assert len(outs) == (2 if generator is ConvPromptGenerator else 5)
    sum(o.float().mean() for o in outs).backward()
    unused = [n for n, p in m.named_parameters() if p.requires_grad and p.grad is None]
    assert unused == []  # no parameter without gradient (DDP would fail on it)


def test_depth_parts_are_off_in_2d():
    m = net(1)
    names = [n for n, _ in m.named_parameters()]
    assert not any("depth_mlp" in n or "depth_pos_embed" in n for n in names)
    assert m.prompt_generator.depth_mixing is False and generator_depth_kernels(m) == {1}
    assert any("depth_mlp" in n for n, _ in net(3).named_parameters())


def test_models_whose_plans_lack_the_generator_switch_keep_the_3d_generator():
    """arch_kwargs recorded before ``generator_depth_mixing`` existed build the network they were trained as."""
    m = net(3)
    assert m.prompt_generator.depth_mixing is True and generator_depth_kernels(m) == {3}
    assert m.prompt_generator.fuse[0][0][0].weight.shape[2:] == (3, 3, 3)
    assert set(m.state_dict()) == set(net(3, generator_depth_mixing=False).state_dict())


# every depth part off: per-slice generator, adapters without depth layers, no depth positional embedding
DEPTH_PARTS_OFF = dict(adapter="vanilla", depth_pos_embed=False, generator_depth_mixing=False)


def _trained_looking(**kw):
    """A 3-slice network whose adapters and depth embeddings are not at their zero (identity) init."""
    m = net(3, img=(32, 32), **kw)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if "adapter_" in name:
                torch.nn.init.normal_(p, std=0.5)
            elif "depth_pos_embed" in name:
                torch.nn.init.normal_(p, std=1.0)
    return m.eval()


def _slice0_with_slice2_changed(m):
    """Every output on slice 0, for a patch and the same patch with slice 2 changed."""
    torch.manual_seed(1)
    x = torch.randn(1, 1, 3, 32, 32)
    x2 = x.clone()
    x2[:, :, 2] += 2
    with torch.no_grad():
        return [o[:, :, 0] for o in m(x)], [o[:, :, 0] for o in m(x2)]


@pytest.mark.parametrize("generator", ["msp", "conv"])
def test_slices_do_not_interact_in_3d_without_the_depth_parts(generator):
    m = _trained_looking(prompt_generator=generator, **DEPTH_PARTS_OFF)
    for a, b in zip(*_slice0_with_slice2_changed(m)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("part", [dict(adapter="dfused"), dict(adapter="depth_before"), dict(adapter="depth_after"),
                                  dict(generator_depth_mixing=True), dict()], ids=lambda p: str(p) or "full")
def test_slices_interact_in_3d_only_through_the_depth_parts(part):
    """With one depth part on (or the full model), slice 0's prediction depends on slice 2 (every output)."""
    m = _trained_looking(**{**DEPTH_PARTS_OFF, **part} if part else {})
    for a, b in zip(*_slice0_with_slice2_changed(m)):
        assert (a - b).abs().max() > 1e-3


def test_depth_positional_embedding_marks_the_slice_index_without_mixing_slices():
    """The embedding does not mix slices (slice 0 ignores slice 2), but identical slices are told apart."""
    m = _trained_looking(**{**DEPTH_PARTS_OFF, "depth_pos_embed": True})
    for a, b in zip(*_slice0_with_slice2_changed(m)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    same = torch.randn(1, 1, 1, 32, 32).expand(1, 1, 3, 32, 32).contiguous()
    with torch.no_grad():
        final = m(same)[0]
        assert (final[:, :, 0] - final[:, :, 2]).abs().max() > 1e-3
        final_off = _trained_looking(**DEPTH_PARTS_OFF)(same)[0]
    torch.testing.assert_close(final_off[:, :, 0], final_off[:, :, 2], rtol=0, atol=0)


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


def test_embed_prompts_equals_sams_prompt_encoder():
    """The export-friendly prompt embedding gives segment-anything's PromptEncoder values (one positive point,
    one box, one mask per row)."""
    from segment_anything.modeling.prompt_encoder import PromptEncoder

    from sam_nnunet.modeling.self_prompt_sam import embed_prompts

    torch.manual_seed(0)
    encoder = PromptEncoder(embed_dim=32, image_embedding_size=(8, 8), input_image_size=(128, 96), mask_in_chans=4)
    for p in encoder.parameters():
        torch.nn.init.normal_(p)
    points, boxes = torch.rand(5, 2) * 90, torch.rand(5, 4) * 90
    masks = torch.rand(5, 1, 32, 32)
    sparse, dense = embed_prompts(encoder, points, boxes, masks)
    ref_sparse, ref_dense = encoder(points=(points.unsqueeze(1), torch.ones(5, 1)), boxes=boxes, masks=masks)
    torch.testing.assert_close(sparse, ref_sparse)
    torch.testing.assert_close(dense, ref_dense)

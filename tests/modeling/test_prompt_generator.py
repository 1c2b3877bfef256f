"""MSPGenerator and the stacked-CNN baseline: output sizes and deep-supervision levels."""
import pytest
import torch

from sam_nnunet.modeling.blocks.prompt_generator import ConvPromptGenerator, MSPGenerator, tokens_to_volume


@pytest.mark.parametrize("D,depth_mixing", [(1, False), (3, True), (3, False)])
def test_msp_generator_outputs_full_half_quarter_eighth(D, depth_mixing):
    B, C, H, W, E, K = 2, 1, 64, 48, 24, 4
    gen = MSPGenerator(image_channels=C, encoder_dim=E, num_classes=K, channels=(4, 8, 8, 16),
                       depth_mixing=depth_mixing)
    feats = [torch.randn(B, E, D, H // 16, W // 16) for _ in range(4)]
    outs = gen(torch.randn(B, C, D, H, W), feats)
    assert [tuple(o.shape) for o in outs] == [(B, K, D, H // 2 ** s, W // 2 ** s) for s in range(4)]
    # every encoder map contributes (the generator is multi-scale, not only the deepest map)
    outs[0].sum().backward()
    assert all(p.grad is not None for p in gen.skip_projections.parameters())


def test_conv_generator_gives_one_full_resolution_output():
    gen = ConvPromptGenerator(encoder_dim=24, num_classes=3, channels=(4, 8, 8, 16), depth_mixing=False)
    outs = gen(None, [torch.randn(1, 24, 1, 4, 5)] * 4)
    assert len(outs) == 1 and outs[0].shape == (1, 3, 1, 64, 80)


def test_msp_generator_needs_four_maps_and_four_widths():
    with pytest.raises(ValueError, match="4 widths"):
        MSPGenerator(image_channels=1, encoder_dim=8, num_classes=2, channels=(4, 8))
    gen = MSPGenerator(image_channels=1, encoder_dim=8, num_classes=2, channels=(4, 4, 4, 4))
    with pytest.raises(ValueError, match="4 encoder feature maps"):
        gen(torch.randn(1, 1, 1, 32, 32), [torch.randn(1, 8, 1, 2, 2)] * 3)


def test_tokens_to_volume_keeps_slices_in_order():
    tokens = torch.arange(2 * 3).float().view(6, 1, 1, 1).expand(6, 2, 2, 5)  # value = slice index n = b*D + d
    vol = tokens_to_volume(tokens, depth=3)
    assert vol.shape == (2, 5, 3, 2, 2)
    assert vol[1, 0, 2, 0, 0] == 5 and vol[0, 4, 1, 1, 1] == 1


@pytest.mark.parametrize("make", [
    lambda mix: MSPGenerator(image_channels=1, encoder_dim=8, num_classes=2, channels=(4, 4, 4, 4), depth_mixing=mix),
    lambda mix: ConvPromptGenerator(encoder_dim=8, num_classes=2, channels=(4, 4, 4, 4), depth_mixing=mix),
], ids=["msp", "conv"])
def test_generator_mixes_slices_only_with_depth_mixing(make):
    """Per slice (convolutions and instance norm) without depth mixing; slice 0 sees slice 2 with it."""
    torch.manual_seed(0)
    image, feats = torch.randn(1, 1, 3, 32, 32), [torch.randn(1, 8, 3, 2, 2) for _ in range(4)]
    image2, feats2 = image.clone(), [f.clone() for f in feats]
    image2[:, :, 2] += 1
    for f in feats2:
        f[:, :, 2] *= 3  # scales slice 2 only: a patch-wide instance norm would see it
    for mix in (False, True):
        torch.manual_seed(0)
        gen = make(mix)
        with torch.no_grad():
            diffs = [(a - b)[:, :, 0].abs().max().item() for a, b in zip(gen(image, feats), gen(image2, feats2))]
        assert all(d == 0 for d in diffs) if not mix else all(d > 1e-4 for d in diffs), (mix, diffs)

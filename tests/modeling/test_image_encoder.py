from functools import partial

import torch
from segment_anything.modeling.image_encoder import Block
from torch import nn

from sam_nnunet.modeling.blocks.image_encoder import PromptableBlock, resize_pos_embed, resize_rel_pos


def test_pos_embed_resize_keeps_same_size_and_interpolates_smoothly():
    pe = torch.randn(1, 8, 8, 5)
    assert resize_pos_embed(pe, (8, 8)) is pe
    out = resize_pos_embed(pe, (4, 6))
    assert out.shape == (1, 4, 6, 5)
    const = torch.full((1, 8, 8, 3), 2.5)
    torch.testing.assert_close(resize_pos_embed(const, (5, 11)), torch.full((1, 5, 11, 3), 2.5))
    # a ramp along the width stays monotonic
    ramp = torch.linspace(0, 1, 8).view(1, 1, 8, 1).expand(1, 8, 8, 1).contiguous()
    assert (resize_pos_embed(ramp, (8, 16))[0, 0, :, 0].diff() > 0).all()


def test_rel_pos_resize_shape_and_identity():
    rp = torch.randn(127, 16)
    assert resize_rel_pos(rp, 127) is rp
    assert resize_rel_pos(rp, 31).shape == (31, 16)
    torch.testing.assert_close(resize_rel_pos(torch.full((127, 4), -1.5), 27), torch.full((27, 4), -1.5))
    ramp = resize_rel_pos(torch.linspace(-1, 1, 127).unsqueeze(1), 27)[:, 0]
    assert (ramp.diff() > 0).all() and ramp[0] < -0.9 and ramp[-1] > 0.9


def _blocks():
    torch.manual_seed(0)
    kw = dict(dim=32, num_heads=4, use_rel_pos=True, window_size=0, input_size=(6, 5),
              norm_layer=partial(nn.LayerNorm, eps=1e-6))
    ours, sams = PromptableBlock(**kw), Block(**kw)
    for p in ours.parameters():
        nn.init.normal_(p, std=0.1)
    sams.load_state_dict(ours.state_dict())
    return ours, sams


def test_prompted_attention_path_equals_segment_anything_block_without_prompts():
    ours, sams = _blocks()
    x = torch.randn(2, 6, 5, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours(x, prompts=torch.zeros(0, 32)), sams(x), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(ours(x), sams(x))


def test_prompt_tokens_change_the_image_tokens():
    ours, sams = _blocks()
    x = torch.randn(1, 6, 5, 32)
    with torch.no_grad():
        out = ours(x, prompts=torch.randn(3, 32))
    assert out.shape == x.shape
    assert not torch.allclose(out, sams(x), atol=1e-4)

import pytest
import torch
from torch import nn

from sam_nnunet.modeling.hsp_sam import HSPSAM
from sam_nnunet.modeling.registry import ENCODERS


def tiny(**kw):
    args = dict(num_input_channels=1, num_classes=4, img_size=(64, 48), encoder="vit_tiny")
    args.update(kw)
    return HSPSAM(**args)


def test_qa_prompt_count_is_number_of_classes_per_global_layer():
    net = tiny(num_classes=4)
    n_global = len(ENCODERS["vit_tiny"].global_attn_indexes)
    assert len(net.prompts) == n_global == net.num_levels
    for pairs in net.prompts:
        q, a = pairs()
        assert q.shape == (3, ENCODERS["vit_tiny"].embed_dim)  # 3 foreground classes
        assert a.shape == (3, ENCODERS["vit_tiny"].decoder_dim)


def test_each_answer_comes_from_its_own_mlp():
    pairs = tiny().prompts[0]
    _, a = pairs()
    with torch.no_grad():
        pairs.mlp_w2[1].add_(1.0)
    _, a2 = pairs()
    changed = (a2 - a).abs().sum(dim=1) > 0
    assert changed.tolist() == [False, True, False]


class _RecordingDecoder(nn.Module):
    """Stands in for Decoder_i: records its input, returns a fixed output_i."""

    def __init__(self, output):
        super().__init__()
        self.output = output
        self.seen = None

    def forward(self, x, pe, prompts, predict_masks=True):
        self.seen = x
        return self.output, torch.zeros(x.shape[0], 1, 4, 4)


@pytest.mark.parametrize("skip", [True, False])
def test_decode_follows_equation_2(skip):
    torch.manual_seed(0)
    net = tiny(encoder="vit_small", skip_connections=skip)  # 3 global layers -> N = 3
    n = net.num_levels
    assert n == 3
    d = ENCODERS["vit_small"]
    emb = [torch.randn(2, 4, 3, d.embed_dim) for _ in range(n)]
    outs = [torch.randn(2, d.decoder_dim, 4, 3) for _ in range(n)]
    net.decoders = nn.ModuleList(_RecordingDecoder(o) for o in outs)
    with torch.no_grad():
        net.decode(emb, None)
        neck = [net.necks[i](emb[i].permute(0, 3, 1, 2)) for i in range(n)]
    # output_N = Decoder_N(neck_N(embedding_N))
    torch.testing.assert_close(net.decoders[n - 1].seen, neck[n - 1])
    for i in range(n - 1):  # output_i = Decoder_i(output_{i+1} + neck_i(embedding_i) [+ output_N])
        expected = outs[i + 1] + neck[i] + (outs[n - 1] if skip else 0)
        torch.testing.assert_close(net.decoders[i].seen, expected)


def test_perturbing_output_N_changes_every_level():
    torch.manual_seed(0)
    net = tiny(encoder="vit_small").eval()
    x = torch.randn(1, 1, 64, 48)
    with torch.no_grad():
        ref = net(x)
        deepest = net.decoders[-1]
        handle = deepest.register_forward_hook(lambda m, i, o: (o[0] + 0.5, o[1]))
        perturbed = net(x)
        handle.remove()
    assert len(ref) == net.num_levels == 3
    # the deepest level's masks come from its upscaling of the unperturbed features: unchanged
    torch.testing.assert_close(perturbed[-1], ref[-1])
    for level in range(net.num_levels - 1):
        assert not torch.allclose(perturbed[level], ref[level]), f"level {level + 1} ignores output_N"


def test_output_shapes_with_and_without_deep_supervision():
    net = tiny()
    out = net(torch.randn(2, 1, 64, 48))
    assert isinstance(out, list) and len(out) == net.num_levels
    assert all(o.shape == (2, 4, 64, 48) for o in out)
    net.deep_supervision = False
    assert net(torch.randn(2, 1, 64, 48)).shape == (2, 4, 64, 48)


def test_sizes_not_multiple_of_16_are_padded_and_cropped_back():
    net = tiny(img_size=(50, 37), deep_supervision=False)
    assert net.encoder.grid_size == (4, 3)
    assert net(torch.randn(1, 1, 50, 37)).shape == (1, 4, 50, 37)


def test_3d_patches_run_slice_wise():
    net = tiny(deep_supervision=False).eval()
    x = torch.randn(2, 1, 3, 64, 48)
    with torch.no_grad():
        out = net(x)
        single = net(x[:, :, 1])
    assert out.shape == (2, 4, 3, 64, 48)
    torch.testing.assert_close(out[:, :, 1], single, rtol=1e-4, atol=1e-5)


def test_parameter_names_do_not_depend_on_deep_supervision():
    assert list(tiny(deep_supervision=True).state_dict()) == list(tiny(deep_supervision=False).state_dict())


def test_ablation_switches():
    assert tiny(qa_prompts=False).prompts is None
    flat = tiny(hierarchical=False)
    assert flat.num_levels == 1 and len(flat.decoders) == 1
    assert len(flat(torch.randn(1, 1, 64, 48))) == 1


def test_wrong_channel_count_is_a_clear_error():
    with pytest.raises(ValueError, match="1 input channel"):
        tiny()(torch.randn(1, 2, 64, 48))


def test_unknown_encoder_name_lists_choices():
    with pytest.raises(ValueError, match="vit_b"):
        tiny(encoder="vit_giant")


def test_without_deep_supervision_only_level_one_mask_head_runs():
    net = tiny(deep_supervision=False)
    calls = []
    for j, dec in enumerate(net.decoders):
        dec.output_upscaling.register_forward_hook(lambda m, i, o, j=j: calls.append(j))
    net(torch.randn(1, 1, 64, 48))
    assert calls == [0]

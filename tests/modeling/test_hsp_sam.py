import pytest
import torch
from torch import nn

from sam_nnunet.modeling.hsp_sam import HSPSAM
from sam_nnunet.modeling.blocks.registry import ENCODERS


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


@pytest.mark.parametrize("skip", [True, False])
def test_output_N_reaches_level_one_directly_only_through_the_skip(skip):
    """Eq. 2's ``+ output_N`` term: with level 2's output held fixed, perturbing output_N changes
    level 1 only when skip connections are on (its other path runs through level 2)."""
    torch.manual_seed(0)
    net = tiny(encoder="vit_small", skip_connections=skip).eval()  # N = 3 levels
    x = torch.randn(1, 1, 64, 48)
    with torch.no_grad():
        fixed = torch.randn(1, ENCODERS["vit_small"].decoder_dim, 4, 3)
        net.decoders[1].register_forward_hook(lambda m, i, o: (fixed, o[1]))  # output_2 ignores output_N
        ref = net(x)
        handle = net.decoders[-1].register_forward_hook(lambda m, i, o: (o[0] + 0.5, o[1]))
        perturbed = net(x)
        handle.remove()
    torch.testing.assert_close(perturbed[-1], ref[-1])  # level N's masks: from its unperturbed features
    changed = not torch.allclose(perturbed[0], ref[0])
    assert changed == skip


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


@pytest.mark.parametrize("at", ["blocks", "input"])
def test_where_q_prompts_enter_the_encoder(at):
    """"blocks": Q_j acts at global block j only, so the deepest level's Q_N cannot change the
    shallowest global block's output; "input": all Q join the input tokens and every global block sees them."""
    torch.manual_seed(0)
    net = tiny(encoder="vit_small", q_prompts_at=at).eval()
    x = torch.randn(1, 1, 64, 48)
    seen = []
    net.encoder.register_forward_hook(lambda m, i, o: seen.append([e.clone() for e in o]))
    with torch.no_grad():
        net(x)
        net.prompts[-1].q_prompts.add_(1.0)  # Q_N
        net.prompts[0].f.weight.zero_()  # A_1 no longer depends on Q: only the encoder path is compared
        net(x)
    first, second = seen
    assert not torch.allclose(first[-1], second[-1])  # embedding_N always depends on Q_N
    assert torch.allclose(first[0], second[0]) == (at == "blocks")
    assert torch.isfinite(second[-1]).all()


def test_input_prompts_pass_windowed_blocks_unchanged_and_are_updated_by_global_ones():
    from sam_nnunet.modeling.blocks.image_encoder import SAMImageEncoder

    torch.manual_seed(0)
    enc = SAMImageEncoder(img_size=(32, 32), in_chans=1, embed_dim=32, depth=4, num_heads=2, window_size=1,
                          global_attn_indexes=(1, 3)).eval()
    seen = []
    for i in (1, 3):
        original = enc.blocks[i].forward_with_prompts
        enc.blocks[i].forward_with_prompts = lambda x, p, f=original: (seen.append(p.clone()), f(x, p))[1]
    q = torch.randn(3, 32)
    with torch.no_grad():
        enc(torch.randn(2, 1, 32, 32), input_prompts=q)
    assert len(seen) == 2
    torch.testing.assert_close(seen[0], q)  # windowed block 0 did not touch them
    assert seen[1].shape == (2, 3, 32) and not torch.allclose(seen[1], q.expand(2, 3, 32))  # block 1 updated them


def test_ft_sam_row_has_no_lora_and_freezes_nothing():
    from sam_nnunet.modeling.weights.checkpoint import LoadReport

    net = tiny(lora_rank=0, qa_prompts=False, hierarchical=False, skip_connections=False)
    assert not any(".lora_" in n for n, _ in net.named_parameters())
    report = LoadReport(path="sam.pth", loaded=[n for n, _ in net.named_parameters() if n.startswith("encoder.")])
    assert net.freeze_pretrained(report)[0] == 0
    assert all(p.requires_grad for p in net.parameters())
    lora = tiny()
    assert lora.freeze_pretrained(report)[0] > 0
    assert all(p.requires_grad == (".lora_" in n) for n, p in lora.encoder.named_parameters())


TABLE5 = {"Ft-SAM": dict(qa_prompts=False, hierarchical=False, skip_connections=False, lora_rank=0),
          "Ablation_1": dict(hierarchical=False, skip_connections=False),
          "Ablation_2": dict(skip_connections=False), "Ablation_3": dict(),
          "Ablation_4": dict(qa_prompts=False, skip_connections=False), "Ablation_5": dict(qa_prompts=False)}


def test_trainable_parameters_per_part_follow_the_table5_rows():
    """ViT-B, one target (polyp), encoder frozen as with a checkpoint. The paper's Params column
    (Ft-SAM 90.58 M, Ablation_1 3.4 M, Ablation_2/3 23.96 M, Ablation_4/5 21.27 M) is matched in its
    structure: equal for the rows that differ only in skip connections (they add no parameters),
    the Q&A pairs' share is the 2/3-4/5 difference, LoRA is r * (d + 3d) per block. The absolute
    figures differ (here 93.3 / 5.9 / 20.2 / 18.9 M): the paper does not give the sizes of its MLPs,
    bottlenecks or which decoder parts it counts."""
    counts = {}
    for row, kw in TABLE5.items():
        with torch.device("meta"):
            net = HSPSAM(num_input_channels=3, num_classes=2, img_size=(1024, 1024), encoder="vit_b", **kw)
        if net.lora_rank:  # what freeze_pretrained does when the checkpoint supplied the whole encoder
            for n, p in net.encoder.named_parameters():
                p.requires_grad_(".lora_" in n)
        counts[row] = net.trainable_parts()
    total = {row: sum(parts.values()) for row, parts in counts.items()}
    d, depth, r = 768, 12, 32
    assert all(counts[row]["encoder (LoRA)"] == depth * r * (d + 3 * d) for row in TABLE5 if row != "Ft-SAM")
    assert counts["Ft-SAM"]["encoder (other)"] > 85e6 and counts["Ft-SAM"]["encoder (LoRA)"] == 0
    assert total["Ablation_2"] == total["Ablation_3"] and total["Ablation_4"] == total["Ablation_5"]
    assert total["Ablation_3"] - total["Ablation_5"] == counts["Ablation_3"]["qa_prompts"] > 0
    assert total["Ft-SAM"] > total["Ablation_3"] > total["Ablation_5"] > total["Ablation_1"]  # the paper's order
    assert counts["Ablation_3"]["decoders"] == 4 * counts["Ablation_1"]["decoders"]  # one decoder per global layer


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

"""PG-SAM (shared/papers/003, section 2): Eqs. 1-7 against independent references, the text prior, the network.

Every equation is recomputed here step by step (numpy in float64 or plain per-element loops), not through the
module under test, so a wrong normalisation axis, a missing term or a swapped order shows as a mismatch.
"""
import math
import socket

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sam_nnunet.modeling.weights.checkpoint import load_sam_checkpoint
from sam_nnunet.modeling.blocks.feature_fusion import DeformableAlign, MultiLevelFeatureFusion, upsample_stage
from sam_nnunet.modeling.blocks.mask_optimizer import MASK_FLOOR, IterativeMaskOptimizer
from sam_nnunet.modeling.pg_sam import PGSAM
from sam_nnunet.modeling.blocks.prior_aligner import ModalityPriorAligner
from sam_nnunet.modeling.blocks.registry import ENCODERS
from sam_nnunet.modeling.blocks.text_prior import TEXT_DIM, ClassTextPrior, class_texts, encode_texts
from tests.modeling.gradients import weak_gradients


def sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x))


def np64(t):
    return t.detach().double().numpy()


# ================================================================ FGMPA, Eq. 1
# B=2, C=3, h=1, w=2 (L=2); per-channel means over positions: image 0 -> (2, 1, 0), image 1 -> (0, 1, 1)
FEATURES = torch.tensor([[[[1.0, 3.0]], [[0.0, 2.0]], [[-1.0, 1.0]]],
                         [[[0.0, 0.0]], [[2.0, 0.0]], [[1.0, 1.0]]]])
CLASS_VECTORS = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]])  # K = 2
# cos(F_img, F_text) by hand: image 0: (2/sqrt5, 1/sqrt10); image 1: (0, 1)
SIMILARITY = [[2 / math.sqrt(5), 1 / math.sqrt(10)], [0.0, 1.0]]


def test_eq1_channel_weights_match_a_hand_computation():
    aligner = ModalityPriorAligner(dim=3, num_targets=2, num_positions=2, weighting="channel")
    W, b = [[1.0, -1.0], [2.0, 0.0], [0.0, 0.5]], [0.0, -1.0, 0.25]  # P: K=2 similarities -> C=3 weights
    with torch.no_grad():
        aligner.proj.weight.copy_(torch.tensor(W))
        aligner.proj.bias.copy_(torch.tensor(b))
    ws = aligner.similarity_weights(FEATURES, CLASS_VECTORS)
    assert ws.shape == (2, 3, 1)
    expected = [[[sigmoid(sum(W[c][k] * SIMILARITY[i][k] for k in range(2)) + b[c])] for c in range(3)]
                for i in range(2)]
    torch.testing.assert_close(ws, torch.tensor(expected), rtol=0, atol=1e-6)
    # the inputs' scale does not matter (cosine), the class vectors' order does
    torch.testing.assert_close(aligner.similarity_weights(5 * FEATURES, 3 * CLASS_VECTORS), ws, rtol=0, atol=1e-6)
    assert not torch.allclose(aligner.similarity_weights(FEATURES, CLASS_VECTORS.flip(0)), ws)


def test_eq1_spatial_weights_match_a_hand_computation():
    aligner = ModalityPriorAligner(dim=3, num_targets=2, num_positions=2, weighting="spatial")
    W, b = [[0.5, 1.0], [-2.0, 0.0]], [0.1, 0.0]  # P: K=2 similarities -> L=2 weights
    with torch.no_grad():
        aligner.proj.weight.copy_(torch.tensor(W))
        aligner.proj.bias.copy_(torch.tensor(b))
    ws = aligner.similarity_weights(FEATURES, CLASS_VECTORS)
    assert ws.shape == (2, 1, 2)  # B x 1 x L, the paper's form
    expected = [[[sigmoid(sum(W[l][k] * SIMILARITY[i][k] for k in range(2)) + b[l]) for l in range(2)]]
                for i in range(2)]
    torch.testing.assert_close(ws, torch.tensor(expected), rtol=0, atol=1e-6)


@pytest.mark.parametrize("weighting, shape", [("channel", (2, 3, 1)), ("spatial", (2, 1, 2))])
def test_eq1_weights_are_one_without_class_vectors(weighting, shape):
    with_proj = ModalityPriorAligner(dim=3, num_targets=2, num_positions=2, weighting=weighting)
    ones = torch.ones(shape)
    assert torch.equal(with_proj.similarity_weights(FEATURES, None), ones)
    no_proj = ModalityPriorAligner(dim=3, num_targets=2, num_positions=2, weighting=weighting, similarity=False)
    assert no_proj.proj is None
    assert torch.equal(no_proj.similarity_weights(FEATURES, CLASS_VECTORS), ones)


def test_invalid_weighting_and_wrong_grid_are_errors():
    with pytest.raises(ValueError, match="aligner_weighting"):
        ModalityPriorAligner(dim=3, num_targets=2, num_positions=2, weighting="pixel")
    spatial = ModalityPriorAligner(dim=3, num_targets=2, num_positions=6, weighting="spatial")
    with pytest.raises(ValueError, match="6 positions"):
        spatial(torch.randn(1, 3, 2, 2), CLASS_VECTORS)


# ================================================================ FGMPA, Eq. 2
def np_layer_norm(x, eps, weight=None, bias=None):
    """Normalise over the last axis."""
    y = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + eps)
    return y if weight is None else y * weight + bias


def np_softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def np_attention(tokens, weight=None, bias=None):
    """Eq. 2: softmax(LN(F) LN(F)^T / sqrt(C)) over B x L x C tokens (nn.LayerNorm's eps 1e-5)."""
    n = np_layer_norm(tokens, 1e-5, weight, bias)
    return np_softmax(n @ n.transpose(0, 2, 1) / math.sqrt(tokens.shape[-1]))


def test_eq2_attention_matches_numpy():
    torch.manual_seed(0)
    aligner = ModalityPriorAligner(dim=6, num_targets=2, num_positions=5)
    tokens = torch.randn(2, 5, 6) * 2 + 1
    a = aligner.attention(tokens)
    assert a.shape == (2, 5, 5)
    torch.testing.assert_close(a.double(), torch.from_numpy(np_attention(np64(tokens))), rtol=0, atol=1e-6)
    torch.testing.assert_close(a.sum(-1), torch.ones(2, 5), rtol=0, atol=1e-6)
    assert (a > 0).all()
    # the learnable LayerNorm affine is part of F^norm
    with torch.no_grad():
        aligner.attn_norm.weight.copy_(torch.rand(6) + 0.5)
        aligner.attn_norm.bias.copy_(torch.randn(6))
    ref = np_attention(np64(tokens), np64(aligner.attn_norm.weight), np64(aligner.attn_norm.bias))
    torch.testing.assert_close(aligner.attention(tokens).double(), torch.from_numpy(ref), rtol=0, atol=1e-6)


# ================================================================ FGMPA, Eq. 3
def np_guide(aligner, features, class_vectors):
    """G = Gamma_spatial(Gamma_channel((F + A F) * W_s)), from the module's parameters only, in float64."""
    f = np64(features)
    B, C, h, w = f.shape
    tokens = f.reshape(B, C, h * w).transpose(0, 2, 1)  # B x L x C
    A = np_attention(tokens, np64(aligner.attn_norm.weight), np64(aligner.attn_norm.bias))
    refined = tokens + A @ tokens  # B x L x C
    image = tokens.mean(1)  # F_img, B x C
    text = np64(class_vectors)
    unit = lambda a: a / np.linalg.norm(a, axis=1, keepdims=True)  # noqa: E731
    cos = unit(image) @ unit(text).T  # B x K cosine similarities
    ws = 1 / (1 + np.exp(-(cos @ np64(aligner.proj.weight).T + np64(aligner.proj.bias))))
    if aligner.weighting == "channel":
        weighted = refined * ws[:, None, :]  # one weight per channel
    else:
        weighted = refined * ws[:, :, None]  # one weight per position
    # Gamma_channel: LayerNorm over the C channels at each position (LayerNorm2d's eps 1e-6), no affine
    y = np_layer_norm(weighted, 1e-6)
    # Gamma_spatial: over the L positions of each channel (instance norm, eps 1e-5), per-channel affine
    y = y.transpose(0, 2, 1)  # B x C x L
    y = np_layer_norm(y, 1e-5) * np64(aligner.spatial_norm.weight)[:, None] + np64(aligner.spatial_norm.bias)[:, None]
    return y.reshape(B, C, h, w)


def random_affines(aligner):
    with torch.no_grad():
        for norm in (aligner.attn_norm, aligner.spatial_norm):
            norm.weight.copy_(torch.rand_like(norm.weight) + 0.5)
            norm.bias.copy_(torch.randn_like(norm.bias))
        aligner.proj.weight.normal_(0, 2)
        aligner.proj.bias.normal_(0, 1)


@pytest.mark.parametrize("weighting", ["channel", "spatial"])
def test_eq3_guide_matrix_matches_a_stepwise_reference(weighting):
    torch.manual_seed(1)
    aligner = ModalityPriorAligner(dim=8, num_targets=3, num_positions=12, weighting=weighting)
    random_affines(aligner)
    features = torch.randn(2, 8, 3, 4) + torch.randn(2, 8, 1, 1)
    text = torch.randn(3, 8)
    G = aligner(features, text)
    assert G.shape == (2, 8, 3, 4)
    torch.testing.assert_close(G.double(), torch.from_numpy(np_guide(aligner, features, text)), rtol=0, atol=1e-4)


def test_eq3_without_class_vectors_is_the_unweighted_guide():
    torch.manual_seed(2)
    aligner = ModalityPriorAligner(dim=8, num_targets=3, num_positions=12, similarity=False)
    reference = ModalityPriorAligner(dim=8, num_targets=3, num_positions=12)
    random_affines(reference)
    aligner.load_state_dict({k: v for k, v in reference.state_dict().items() if not k.startswith("proj.")})
    features = torch.randn(2, 8, 3, 4)
    with torch.no_grad():  # W_s = 1 <=> sigmoid(P s) = 1: a reference whose P saturates
        reference.proj.weight.zero_()
        reference.proj.bias.fill_(100.0)
    ref = np_guide(reference, features, torch.randn(3, 8))
    torch.testing.assert_close(aligner(features, None).double(), torch.from_numpy(ref), rtol=0, atol=1e-4)


# ================================================================ the LayerNorm cancellation (module docstring)
@pytest.mark.parametrize("weighting", ["spatial", "channel"])
def test_text_reaches_the_guide_only_with_channel_weights(weighting):
    """LN(w * y) = LN(y) for a positive per-position w: the paper's literal W_s (B x 1 x L) cannot change G."""
    torch.manual_seed(3)
    aligner = ModalityPriorAligner(dim=8, num_targets=3, num_positions=12, weighting=weighting)
    random_affines(aligner)
    features = 3 * torch.randn(2, 8, 3, 4) + torch.randn(2, 8, 1, 1)
    text_a, text_b = torch.randn(3, 8), torch.randn(3, 8)
    ws_a, ws_b = aligner.similarity_weights(features, text_a), aligner.similarity_weights(features, text_b)
    assert (ws_a - ws_b).abs().max() > 0.1  # the text does change the weights
    G_a, G_b = aligner(features, text_a), aligner(features, text_b)
    if weighting == "spatial":
        torch.testing.assert_close(G_a, G_b, rtol=0, atol=1e-4)
    else:
        assert (G_a - G_b).abs().max() > 1e-2


# ================================================================ MLFF, Eqs. 4-5
def test_mlff_shapes_and_channel_ratio():
    torch.manual_seed(0)
    C = 32
    mlff = MultiLevelFeatureFusion(C)
    assert (mlff.up1[0].in_channels, mlff.up1[0].out_channels, mlff.up2[0].out_channels) == (C, C // 2, C // 4)
    x, g = torch.randn(2, C, 3, 5), torch.randn(2, C, 3, 5)
    up1 = mlff.up1(x)
    up2 = mlff.up2(up1)
    assert up1.shape == (2, C // 2, 6, 10) and up2.shape == (2, C // 4, 12, 20)  # C : C/2 : C/4 = 4:2:1
    assert mlff(x, g).shape == (2, C // 8, 12, 20)
    with pytest.raises(ValueError, match="divisible by 8"):
        MultiLevelFeatureFusion(20)


def test_eq4_upsample_stage_is_deconv_layernorm_gelu():
    torch.manual_seed(0)
    stage = upsample_stage(6, 3)
    with torch.no_grad():
        stage[1].weight.copy_(torch.rand(3) + 0.5)
        stage[1].bias.copy_(torch.randn(3))
    x = torch.randn(2, 6, 3, 4)
    y = F.conv_transpose2d(x, stage[0].weight, stage[0].bias, stride=2)
    assert y.shape == (2, 3, 6, 8)
    y = (y - y.mean(1, keepdim=True)) / torch.sqrt(y.var(1, unbiased=False, keepdim=True) + 1e-6)
    y = F.gelu(y * stage[1].weight[:, None, None] + stage[1].bias[:, None, None])
    torch.testing.assert_close(stage(x), y, rtol=0, atol=1e-5)


def test_eq5_fusion_is_phi_of_features_plus_the_aligned_guide():
    """F_fusion = phi(F_up2) + Align(psi(G)): G compressed by psi to C/8, resized to 4h x 4w, deformably aligned
    with offsets from [psi(G), F_up2] (the module docstring gives why psi comes first)."""
    torch.manual_seed(0)
    C = 16
    mlff = MultiLevelFeatureFusion(C)
    assert (mlff.psi.in_channels, mlff.psi.out_channels, mlff.psi.kernel_size) == (C, C // 8, (1, 1))
    assert (mlff.phi.in_channels, mlff.phi.out_channels, mlff.phi.kernel_size) == (C // 4, C // 8, (1, 1))
    with torch.no_grad():
        mlff.align.offset.weight.normal_(0, 0.3)
    x, g = torch.randn(1, C, 2, 3), torch.randn(1, C, 2, 3)
    up = mlff.up2(mlff.up1(x))
    g_up = F.interpolate(F.conv2d(g, mlff.psi.weight, mlff.psi.bias), size=(8, 12), mode="bilinear",
                         align_corners=False)
    expected = mlff.phi(up) + mlff.align(g_up, up)
    torch.testing.assert_close(mlff(x, g), expected)
    assert not torch.allclose(mlff(x, g), mlff.phi(up), atol=1e-3)  # G does contribute


def test_deformable_align_starts_as_a_plain_convolution():
    torch.manual_seed(0)
    align = DeformableAlign(in_dim=6, reference_dim=4, out_dim=5)
    with torch.no_grad():
        align.bias.normal_()
    guide, reference = torch.randn(2, 6, 7, 9), torch.randn(2, 4, 7, 9)
    assert torch.count_nonzero(align.offset.weight) == 0 and torch.count_nonzero(align.offset.bias) == 0
    out = align(guide, reference)
    assert out.shape == (2, 5, 7, 9)
    torch.testing.assert_close(out, F.conv2d(guide, align.weight, align.bias, padding=1), rtol=0, atol=1e-5)
    with torch.no_grad():  # learned offsets move the sampling grid, and they depend on the reference features
        align.offset.weight.normal_(0, 0.5)
    moved = align(guide, reference)
    assert (moved - out).abs().max() > 1e-2
    assert (align(guide, reference + 1.0) - moved).abs().max() > 1e-2


def test_without_guide_fusion_is_phi_of_the_upsampled_features():
    torch.manual_seed(0)
    plain = MultiLevelFeatureFusion(16, with_guide=False)
    assert plain.align is None and plain.psi is None
    assert not any(n.startswith(("align.", "psi.")) for n in plain.state_dict())
    x = torch.randn(2, 16, 2, 3)
    torch.testing.assert_close(plain(x, None), plain.phi(plain.up2(plain.up1(x))))
    guided = MultiLevelFeatureFusion(16)  # a guided module given no G takes the same path
    torch.testing.assert_close(guided(x, None), guided.phi(guided.up2(guided.up1(x))))


# ================================================================ IMO, Eqs. 6-7
def make_imo(update="sigmoid", iterations=3, K=3, C=8, Cf=4, step_size=0.3):
    torch.manual_seed(0)
    imo = IterativeMaskOptimizer(token_dim=C, feature_dim=Cf, num_masks=K, iterations=iterations, update=update,
                                 step_size=step_size)
    with torch.no_grad():  # non-zero biases, so the reference must use them
        for b in imo.hypernetwork.biases:
            b.normal_(0, 0.5)
    return imo


def hand_kernels(imo, tokens):
    """Eq. 6 per image and class: Omega_i = MLP_i(m_i) (3 layers, ReLU between) times W_base, channel-wise."""
    hw, hb = imo.hypernetwork.weights, imo.hypernetwork.biases
    B, K, _ = tokens.shape
    omega = []
    for i in range(B):
        for k in range(K):  # class k's own MLP
            x = tokens[i, k]
            x = torch.relu(x @ hw[0][k] + hb[0][k])
            x = torch.relu(x @ hw[1][k] + hb[1][k])
            gates = x @ hw[2][k] + hb[2][k]  # one gate per input channel [M_i ; F]
            omega.append(gates[:, None, None] * imo.base_kernel[0])
    return torch.stack(omega).view(B, K, *omega[0].shape)


def test_eq6_kernels_are_mlp_gates_times_the_base_kernel():
    imo = make_imo()
    tokens = torch.randn(2, 3, 8)
    omega = imo.kernels(tokens)
    assert omega.shape == (2, 3, 5, 3, 3)  # B x K x (1 + C_f) x 3 x 3
    torch.testing.assert_close(omega, hand_kernels(imo, tokens), rtol=0, atol=1e-6)


def reference_step(masks, features, kernels, step_size, update):
    """Eq. 7 by a loop: M_t+1,i = Clip(M_t,i + lambda * update(Conv3x3[Omega_i]([M_t,i ; F])), 0, 1)."""
    B, K = masks.shape[:2]
    out = torch.empty_like(masks)
    raw = torch.empty_like(masks)
    for i in range(B):
        for k in range(K):
            stacked = torch.cat([masks[i, k][None], features[i]])[None]  # [M_i ; F]
            raw[i, k] = F.conv2d(stacked, kernels[i, k][None], padding=1)[0, 0]
            delta = torch.sigmoid(raw[i, k]) if update == "sigmoid" else torch.tanh(raw[i, k])
            out[i, k] = torch.clamp(masks[i, k] + step_size * delta, 0, 1)
    return out, raw


def module_step(imo, masks, features, tokens):
    """One IMO iteration through the module's own API."""
    return imo.step(masks, imo.feature_response(features), imo.hypernetwork(tokens))


@pytest.mark.parametrize("update", ["sigmoid", "signed"])
def test_eq7_step_matches_a_per_image_per_class_loop(update):
    imo = make_imo(update)
    masks, features, tokens = torch.rand(2, 3, 6, 7), torch.randn(2, 4, 6, 7), torch.randn(2, 3, 8)
    expected, raw = reference_step(masks, features, hand_kernels(imo, tokens), imo.step_size, update)
    assert (raw < 0).any() and (raw > 0).any()
    torch.testing.assert_close(module_step(imo, masks, features, tokens), expected, rtol=0, atol=1e-5)


def trajectory(imo, coarse, features, tokens, steps):
    masks = [torch.sigmoid(coarse)]
    for _ in range(steps):
        masks.append(module_step(imo, masks[-1], features, tokens))
    return masks


def test_sigmoid_updates_only_grow_masks_signed_ones_also_shrink():
    imo = make_imo("sigmoid", step_size=0.05)
    coarse, features, tokens = 3 * torch.randn(2, 3, 8, 8), 3 * torch.randn(2, 4, 8, 8), torch.randn(2, 3, 8)
    _, raw = reference_step(torch.sigmoid(coarse), features, hand_kernels(imo, tokens), imo.step_size, "sigmoid")
    assert (raw < 0).sum() > 50 and (raw < -0.2).any()  # many pixels whose convolution output is negative
    masks = trajectory(imo, coarse, features, tokens, steps=4)
    for before, after in zip(masks, masks[1:]):
        assert (after >= before).all()
        assert ((after > before) | (after == 1)).all()  # sigmoid > 0: every unsaturated pixel grows
        assert after.min() >= 0 and after.max() <= 1
    imo.update = "signed"
    masks = trajectory(imo, coarse, features, tokens, steps=4)
    assert all((after < before).any() for before, after in zip(masks, masks[1:]))


def test_masks_are_clipped_to_the_unit_interval():
    imo = make_imo("signed", step_size=3.0)  # large steps: both ends of the clip are hit
    masks = trajectory(imo, 3 * torch.randn(2, 3, 8, 8), 3 * torch.randn(2, 4, 8, 8), torch.randn(2, 3, 8), steps=2)
    last = masks[-1]
    assert last.min() >= 0 and last.max() <= 1
    assert (last == 0).any() and (last == 1).any()


@pytest.mark.parametrize("update, iterations", [("sigmoid", 1), ("sigmoid", 3), ("signed", 2)])
def test_forward_returns_log_of_the_floored_refined_masks(update, iterations):
    imo = make_imo(update, iterations=iterations, step_size=0.5 if update == "signed" else 0.3)
    coarse, features, tokens = 4 * torch.randn(2, 3, 6, 6), 3 * torch.randn(2, 4, 6, 6), torch.randn(2, 3, 8)
    m_T, kernels = torch.sigmoid(coarse), hand_kernels(imo, tokens)  # M_0 = sigmoid(coarse logits)
    for _ in range(iterations):  # the same kernels in every iteration
        m_T, _ = reference_step(m_T, features, kernels, imo.step_size, update)
    out = imo(coarse, features, tokens)
    torch.testing.assert_close(out, torch.log(m_T.clamp_min(MASK_FLOOR)), rtol=0, atol=1e-5)
    assert out.max() <= 0 and out.min() >= math.log(MASK_FLOOR) - 1e-6
    if update == "signed":  # masks driven to 0 leave as log(1e-4), not -inf
        assert (m_T == 0).any() and torch.isfinite(out).all()
        assert torch.isclose(out.min(), torch.tensor(math.log(MASK_FLOOR)))


def test_invalid_update_and_iterations_are_errors():
    with pytest.raises(ValueError, match="optimizer_update"):
        IterativeMaskOptimizer(token_dim=8, feature_dim=4, num_masks=2, update="relu")
    for n in (0, -1):
        with pytest.raises(ValueError, match="optimizer_iterations"):
            IterativeMaskOptimizer(token_dim=8, feature_dim=4, num_masks=2, iterations=n)


# ================================================================ text prior
ACDC_JSON = {"labels": {"background": 0, "RV": 1, "MLV": 2, "LVC": 3}, "channel_names": {"0": "cineMRI"}}


def test_encode_texts_works_offline(monkeypatch):
    from sam_nnunet.modeling.blocks import text_prior

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")

    def no_network(*args, **kwargs):
        raise OSError("network access in an offline test")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    text_prior._sentence_encoder.cache_clear()  # load the encoder here, under these conditions
    texts = list(class_texts(ACDC_JSON, 3).values())
    v = encode_texts(texts + [texts[0]])
    assert v.shape == (4, TEXT_DIM) == (4, 384) and v.dtype == torch.float32
    torch.testing.assert_close(v.norm(dim=1), torch.ones(4), rtol=0, atol=1e-5)
    cos = v @ v.t()
    assert cos[0, 1] < 0.99 and cos[0, 2] < 0.99 and cos[1, 2] < 0.99
    torch.testing.assert_close(v[3], v[0], rtol=0, atol=1e-6)


def test_class_texts_for_the_acdc_labels():
    from sam_nnunet.datasets.acdc import LABELS

    assert LABELS == ACDC_JSON["labels"]  # the labels the ACDC conversion writes
    texts = class_texts(ACDC_JSON, 3)
    assert list(texts) == ["RV", "MLV", "LVC"]  # nnU-Net's output order
    assert len(set(texts.values())) == 3
    assert "right ventricle" in texts["RV"]
    assert "myocardium" in texts["MLV"]
    assert "left ventricular cavity" in texts["LVC"]
    assert all(t.startswith("cineMRI image") for t in texts.values())
    with pytest.raises(ValueError, match="3 foreground labels"):
        class_texts(ACDC_JSON, 2)


def test_class_text_files_and_overrides(tmp_path):
    defaults = class_texts(ACDC_JSON, 3)
    (tmp_path / "RV.txt").write_text("  A cine MRI slice with the right ventricle outlined.\n")
    texts = class_texts(ACDC_JSON, 3, str(tmp_path))
    assert texts == dict(defaults, RV="A cine MRI slice with the right ventricle outlined.")
    (tmp_path / "LVC.txt").write_text("from the file")
    texts = class_texts(ACDC_JSON, 3, str(tmp_path), {"LVC": " from the plans ", "MLV": "muscle"})
    assert texts == {"RV": "A cine MRI slice with the right ventricle outlined.", "MLV": "muscle",
                     "LVC": "from the plans"}  # the plans' overrides win over files
    assert class_texts(ACDC_JSON, 3, None, {"MLV": "muscle"}) == dict(defaults, MLV="muscle")
    with pytest.raises(ValueError, match="LV_typo"):
        class_texts(ACDC_JSON, 3, str(tmp_path), {"LV_typo": "x"})
    (tmp_path / "MLV.txt").write_text("   \n")
    with pytest.raises(ValueError, match="MLV.txt is empty"):
        class_texts(ACDC_JSON, 3, str(tmp_path))


def test_class_text_prior_text_mode():
    torch.manual_seed(0)
    prior = ClassTextPrior(num_targets=3, feature_dim=8, mode="text")
    assert {"text_embeddings", "class_vectors"} <= set(prior.state_dict())
    assert not list(prior.parameters())  # the default projection is fixed: the text is not re-learnable
    with pytest.raises(RuntimeError, match="never set"):
        prior.train()()
    with pytest.raises(ValueError, match=r"\(3, 384\)"):
        prior.set_text_embeddings(torch.randn(2, 384))
    vectors = F.normalize(torch.randn(3, 384), dim=1)
    prior.set_text_embeddings(vectors)
    out = prior()
    assert out.shape == (3, 8)
    restored = ClassTextPrior(num_targets=3, feature_dim=8, mode="text")
    restored.load_state_dict(prior.state_dict())
    assert torch.equal(restored.text_embeddings, vectors) and torch.equal(restored(), out)

    trainable = ClassTextPrior(num_targets=3, feature_dim=8, mode="text", projection="trainable")
    trainable.set_text_embeddings(vectors)
    torch.testing.assert_close(trainable(), vectors @ trainable.proj.weight.t() + trainable.proj.bias)
    with pytest.raises(RuntimeError, match="text_projection='trainable'"):
        ClassTextPrior(num_targets=3, feature_dim=8, mode="text").load_state_dict(trainable.state_dict())
    with pytest.raises(ValueError, match="text_projection must be one of"):
        ClassTextPrior(num_targets=3, feature_dim=8, projection="learned")
    with pytest.raises(ValueError, match="cannot keep their geometry"):
        ClassTextPrior(num_targets=9, feature_dim=8)


def test_class_vectors_keep_the_texts_geometry():
    """The fixed isometry: the class vectors' Gram matrix (lengths, pairwise cosines) is the texts', whatever the
    texts; a random linear map (what a trainable projection starts as, and may learn anything from) is not."""
    torch.manual_seed(4)
    texts = F.normalize(torch.randn(5, TEXT_DIM), dim=1)
    texts[3] = F.normalize(texts[0] + 0.3 * texts[1], dim=0)  # two similar descriptions stay similar
    vectors = ClassTextPrior(num_targets=5, feature_dim=16)
    vectors.set_text_embeddings(texts)
    out = vectors()
    torch.testing.assert_close((out @ out.t()).double(), (texts @ texts.t()).double(), rtol=0, atol=1e-5)
    assert out.abs().gt(1e-3).sum(1).min() > 5  # spread over the feature channels, not packed into K of them
    cosines = lambda v: F.normalize(v, dim=1) @ F.normalize(v, dim=1).t()  # noqa: E731
    random_map = torch.nn.Linear(TEXT_DIM, 16)(texts).detach()
    assert (cosines(random_map) - cosines(texts)).abs().max() > 0.1
    # fixed by the method, not by the process' random state
    torch.manual_seed(99)
    again = ClassTextPrior(num_targets=5, feature_dim=16)
    again.set_text_embeddings(texts)
    assert torch.equal(again(), out)


def test_class_text_prior_learned_and_none_modes():
    learned = ClassTextPrior(num_targets=3, feature_dim=8, mode="learned")
    assert isinstance(learned.class_embeddings, torch.nn.Parameter) and learned.class_embeddings.shape == (3, 8)
    assert learned() is learned.class_embeddings
    assert "text_embeddings" not in learned.state_dict()
    with pytest.raises(ValueError, match="no text"):
        learned.set_text_embeddings(torch.randn(3, 384))
    none = ClassTextPrior(num_targets=3, feature_dim=8, mode="none")
    assert none() is None and not list(none.parameters())
    with pytest.raises(ValueError, match="text_prior must be one of"):
        ClassTextPrior(num_targets=3, feature_dim=8, mode="clip")


# ================================================================ the network
def tiny(**kw):
    args = dict(num_input_channels=1, num_classes=4, img_size=(32, 32), encoder="vit_tiny")
    args.update(kw)
    net = PGSAM(**args)
    if net.text_prior is not None and net.text_prior.mode == "text":
        net.text_prior.set_text_embeddings(torch.randn(args["num_classes"] - 1, TEXT_DIM))
    return net


def test_output_shapes_2d():
    torch.manual_seed(0)
    out = tiny()(torch.randn(2, 1, 32, 32))
    assert isinstance(out, list) and [o.shape for o in out] == [(2, 4, 32, 32), (2, 4, 8, 8)]
    odd = tiny(img_size=(100, 120))(torch.randn(1, 1, 100, 120))  # padded to 112 x 128, cropped back
    assert [o.shape for o in odd] == [(1, 4, 100, 120), (1, 4, 25, 30)]
    assert isinstance(tiny(deep_supervision=False)(torch.randn(1, 1, 32, 32)), torch.Tensor)


def test_padded_input_outputs_are_crops_of_the_logits():
    """100 x 120 is zero-padded to 112 x 128: both outputs are the padded logits cut back, not resized."""
    torch.manual_seed(0)
    net = tiny(img_size=(100, 120)).eval()
    decoded = []
    decode = net.decode
    net.decode = lambda features, guide: decoded.append(decode(features, guide)) or decoded[-1]
    with torch.no_grad():
        high, low = net(torch.randn(1, 1, 100, 120))
    prediction, coarse = decoded[0]
    assert coarse.shape == (1, 4, 28, 32)
    torch.testing.assert_close(low, coarse[..., :25, :30], rtol=0, atol=0)
    full = F.interpolate(prediction, size=(112, 128), mode="bilinear", align_corners=False)
    torch.testing.assert_close(high, full[..., :100, :120], rtol=0, atol=0)


def test_3d_input_runs_slice_wise():
    torch.manual_seed(0)
    net = tiny().eval()
    x = torch.randn(2, 1, 3, 32, 32)
    with torch.no_grad():
        high, low = net(x)
        single = net(x[:, :, 1])
    assert high.shape == (2, 4, 3, 32, 32) and low.shape == (2, 4, 3, 8, 8)  # the low output keeps the depth
    torch.testing.assert_close(high[:, :, 1], single[0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(low[:, :, 1], single[1], rtol=1e-4, atol=1e-5)


def test_deep_supervision_scales():
    net = tiny()
    assert net.deep_supervision_scales(2) == [[1.0, 1.0], [0.25, 0.25]]
    assert net.deep_supervision_scales(3) == [[1.0, 1.0, 1.0], [1.0, 0.25, 0.25]]


SWITCHES = [dict(aligner=a, fusion=f, mask_optimizer=m, text_prior=t)
            for a in (True, False) for f in (True, False) for m in (True, False)
            for t in (("text", "learned", "none") if a else ("text",))]


@pytest.mark.parametrize("switches", SWITCHES + [dict(aligner_weighting="spatial"), dict(optimizer_update="signed"),
                                                 dict(text_projection="trainable")],
                         ids=lambda s: "-".join(f"{k}={v}" for k, v in s.items()))
def test_every_trainable_parameter_gets_a_gradient(switches):
    """DDP fails on a parameter that takes part in no loss: every switch combination must use all it builds."""
    torch.manual_seed(0)
    net = tiny(**switches)
    out = net(torch.randn(2, 1, 32, 32))
    (out[0].square().mean() + out[1].square().mean()).backward()
    params = dict(net.named_parameters())
    no_grad = [n for n, p in params.items() if p.requires_grad and p.grad is None]
    assert no_grad == []
    assert all(torch.isfinite(p.grad).all() for p in params.values())
    # and not negligible either (lora_A's is zero while lora_B is at its zero initialisation)
    exempt = ["lora_A"]
    if switches.get("aligner_weighting") == "spatial":  # the literal Eq. 1: Gamma_channel cancels W_s, P learns nothing
        exempt.append("aligner.proj.")
    assert weak_gradients(net, exempt=exempt) == []


def conv_count(c_in, c_out, k):
    return c_in * c_out * k * k + c_out


def test_trainable_parameters_by_part():
    cfg = ENCODERS["vit_tiny"]
    C, K, r = cfg.decoder_dim, 4, 4
    assert (cfg.embed_dim, cfg.depth, C) == (64, 4, 64)
    full = tiny().trainable_parts()
    assert full["encoder (LoRA)"] == cfg.depth * r * (cfg.embed_dim + 3 * cfg.embed_dim) == 4096
    assert full["text_prior"] == 0  # the text vectors and their fixed isometry are buffers
    assert full["aligner"] == (K - 1) * C + C + 2 * 2 * C  # P and the affines of Eq. 2's norm and Gamma_spatial
    mlff_plain = conv_count(C, C // 2, 2) + 2 * (C // 2) + conv_count(C // 2, C // 4, 2) + 2 * (C // 4) \
        + conv_count(C // 4, C // 8, 1)
    align_psi = conv_count(C // 8 + C // 4, 18, 3) + conv_count(C // 8, C // 8, 3) + conv_count(C, C // 8, 1)
    assert full["fusion"] == mlff_plain + align_psi
    hyper = K * (2 * (C * C + C) + C * (1 + C // 8) + 1 + C // 8)
    assert full["mask_optimizer"] == hyper + (1 + C // 8) * 9 + 1  # K MLPs, W_base, lambda
    assert full["pe_layer"] == 0
    assert sum(full.values()) == sum(p.numel() for p in tiny().parameters())

    def same_except(parts, **changed):
        assert {k: v for k, v in parts.items() if k not in changed} == \
               {k: v for k, v in full.items() if k not in changed}
        for k, v in changed.items():
            assert parts[k] == v, k

    no_aligner = tiny(aligner=False)
    assert no_aligner.text_prior is None and no_aligner.aligner is None
    same_except(no_aligner.trainable_parts(), text_prior=0, aligner=0, fusion=mlff_plain)
    upscaling = conv_count(C, C // 4, 2) + 2 * (C // 4) + conv_count(C // 4, C // 8, 2)
    no_fusion = tiny(fusion=False)
    assert no_fusion.fusion is None and no_fusion.decoder.output_upscaling is not None
    assert tiny().decoder.output_upscaling is None
    same_except(no_fusion.trainable_parts(), fusion=0, decoder=full["decoder"] + upscaling)
    same_except(tiny(mask_optimizer=False).trainable_parts(), mask_optimizer=0)
    same_except(tiny(text_prior="learned").trainable_parts(), text_prior=(K - 1) * C)
    same_except(tiny(text_prior="none").trainable_parts(), text_prior=0, aligner=2 * 2 * C)
    same_except(tiny(text_projection="trainable").trainable_parts(), text_prior=TEXT_DIM * C + C)


def test_without_mask_optimizer_both_outputs_are_the_coarse_logits():
    torch.manual_seed(0)
    x = torch.randn(2, 1, 32, 32)
    for mask_optimizer in (False, True):
        high, low = tiny(mask_optimizer=mask_optimizer)(x)
        upsampled = F.interpolate(low, size=(32, 32), mode="bilinear", align_corners=False)
        assert torch.allclose(high, upsampled, atol=1e-5) == (not mask_optimizer)


def test_text_embeddings_change_the_prediction_and_are_saved():
    torch.manual_seed(0)
    net = tiny().eval()
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        before = net(x)[0]
        net.text_prior.set_text_embeddings(torch.randn(3, TEXT_DIM))
        after = net(x)[0]
    assert not torch.allclose(before, after)
    assert "text_prior.text_embeddings" in net.state_dict()
    with pytest.raises(RuntimeError, match="never set"):
        PGSAM(num_input_channels=1, num_classes=4, img_size=(32, 32), encoder="vit_tiny")(x)


# ================================================================ SAM checkpoints
def test_official_checkpoint_loads_into_pg_sam(official_sam, tmp_path, small_encoder):
    sam, sd = official_sam()
    path = tmp_path / "sam_vit_test.pth"
    torch.save(sd, path)
    net = PGSAM(num_input_channels=3, num_classes=2, img_size=(128, 128), encoder=small_encoder)
    report = load_sam_checkpoint(net, path)
    state = net.state_dict()
    # image encoder + neck: the same embedding as SAM's own image encoder
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        ours = net.neck(net.encoder(x)[-1].permute(0, 3, 1, 2))
        ref = sam.image_encoder(x)
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)
    neck = [k for k in sd if k.startswith("image_encoder.neck.")]
    transformer = [k for k in sd if k.startswith("mask_decoder.transformer.")]
    assert len(neck) == 6 and len(transformer) > 30
    for k in neck:
        assert torch.equal(state["neck." + k[len("image_encoder.neck."):]], sd[k]), k
    for k in transformer:
        assert torch.equal(state["decoder." + k[len("mask_decoder."):]], sd[k]), k
    assert torch.equal(net.pe_layer.positional_encoding_gaussian_matrix,
                       sd["prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"])
    assert "neck.0.weight" in report.loaded and "pe_layer.positional_encoding_gaussian_matrix" in report.loaded
    # MLFF replaces SAM's upscaling: not loaded; the IoU head and SAM's own mask tokens are not used
    for k in ("mask_decoder.output_upscaling.0.weight", "mask_decoder.iou_prediction_head.layers.0.weight",
              "mask_decoder.mask_tokens.weight"):
        assert k in report.unexpected
    for k in ("encoder.blocks.0.attn.qkv.lora_A", "aligner.proj.weight",
              "fusion.align.weight", "mask_optimizer.base_kernel", "decoder.mask_tokens.weight"):
        assert k in report.missing

    frozen, trainable = net.freeze_pretrained(report)
    encoder = dict(net.encoder.named_parameters())
    assert all(p.requires_grad == (".lora_" in n) for n, p in encoder.items())
    assert all(p.requires_grad for n, p in net.named_parameters() if not n.startswith("encoder."))
    assert frozen == sum(p.numel() for n, p in encoder.items() if ".lora_" not in n)
    assert trainable == net.trainable_parts()["encoder (LoRA)"] > 0
    assert net.trainable_parts()["encoder (other)"] == 0

    net.eval()
    with torch.no_grad():
        high, low = net(torch.randn(1, 3, 128, 128))
    assert high.shape == (1, 2, 128, 128) and low.shape == (1, 2, 32, 32)


def test_without_mlff_sam_upscaling_is_loaded(official_sam, tmp_path, small_encoder):
    _, sd = official_sam()
    path = tmp_path / "sam_vit_test.pth"
    torch.save(sd, path)
    net = PGSAM(num_input_channels=1, num_classes=3, img_size=(64, 64), encoder=small_encoder, fusion=False)
    report = load_sam_checkpoint(net, path)
    upscaling = [k for k in sd if k.startswith("mask_decoder.output_upscaling.")]
    assert len(upscaling) == 6  # two deconvolutions and a LayerNorm2d
    state = net.state_dict()
    for k in upscaling:
        dest = "decoder." + k[len("mask_decoder."):]
        assert dest in report.loaded and torch.equal(state[dest], sd[k]), k
    assert not any(k.startswith("mask_decoder.output_upscaling.") for k in report.unexpected)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_deformable_alignment_runs_in_fp32_under_autocast(dtype):
    """torchvision's deformable convolution has no bf16 kernel (and none in fp16 on CPU): found by the device check
    (benchmarks/gpu_check.py) run on CPU. Under autocast the alignment runs in fp32 and gives the fp32 result."""
    torch.manual_seed(0)
    align = DeformableAlign(8, 4, 8)
    torch.nn.init.normal_(align.offset.weight, std=0.1)  # non-zero offsets: a real deformable sampling
    guide, reference = torch.randn(2, 8, 12, 12), torch.randn(2, 4, 12, 12)
    expected = align(guide, reference)
    with torch.autocast("cpu", dtype=dtype):
        got = align(guide.to(dtype), reference.to(dtype))
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected, rtol=0.05, atol=0.05)  # the inputs' rounding to dtype only

"""DFusedAdapter (Eq. 1), its Table 4 variants, MAdapter and MC-Adapter."""
import pytest
import torch
from torch import nn

from sam_nnunet.modeling.blocks.adapters import ADAPTER_KINDS, DepthFusedAdapter, DepthMLPAdapter, build_adapter
from sam_nnunet.modeling.blocks.modality_adapter import ModalityAdapter
from sam_nnunet.modeling.blocks.multiclass_adapter import MultiClassAdapter


def _set(linear: nn.Linear, weight, bias=None):
    with torch.no_grad():
        linear.weight.copy_(torch.as_tensor(weight, dtype=torch.float32))
        linear.bias.copy_(torch.zeros_like(linear.bias) if bias is None else torch.as_tensor(bias, dtype=torch.float32))


def test_dfused_adapter_matches_a_hand_computed_example():
    """C = 4 (C/4 = 1), D = 2, ReLU, weights chosen so the result can be followed by hand:

    X_0 = [1, 2, 3, 4], X_1 = [0, 1, 0, 1];  W_dn = [1, 1, 1, 1]  ->  σ(X W_dn) = [10, 2] over depth
    W_Dup keeps d0, d1 in its first two rows      ->  σ(. W_Dup) = [10, 2, 0, ...]
    W_Ddn swaps them                              ->  depth term [2, 10];  sum [12, 12]
    W_up = [1, 0, -1, 0.5]                        ->  Y_0 = X_0 + [12, 0, -12, 6] = [13, 2, -9, 10]
                                                      Y_1 = X_1 + [12, 0, -12, 6] = [12, 1, -12, 7]
    """
    a = DepthFusedAdapter(dim=4, depth=2, act_layer=nn.ReLU)
    _set(a.down, [[1, 1, 1, 1]])
    w_dup = torch.zeros(8, 2)
    w_dup[0, 0] = w_dup[1, 1] = 1
    _set(a.depth_mlp.up, w_dup)
    w_ddn = torch.zeros(2, 8)
    w_ddn[0, 1] = w_ddn[1, 0] = 1
    _set(a.depth_mlp.down, w_ddn)
    _set(a.up, [[1], [0], [-1], [0.5]])
    x = torch.tensor([[1, 2, 3, 4], [0, 1, 0, 1]], dtype=torch.float32).view(2, 1, 4)  # (B*D) x L x C, B = 1
    y = a(x)
    assert torch.equal(y.view(2, 4), torch.tensor([[13, 2, -9, 10], [12, 1, -12, 7]], dtype=torch.float32))


def test_dfused_adapter_equals_eq1_written_with_einsum():
    torch.manual_seed(0)
    B, D, H, W, C = 2, 3, 4, 5, 16
    a = DepthFusedAdapter(dim=C, depth=D)
    nn.init.normal_(a.up.weight)  # not the zero init, so the whole formula shows
    x = torch.randn(B * D, H, W, C)
    g = nn.functional.gelu
    X = x.view(B, D, H, W, C)
    h = g(X @ a.down.weight.T + a.down.bias)  # σ(X W_dn): B x D x H x W x C/4
    u = g(torch.einsum("bdhwc,ed->behwc", h, a.depth_mlp.up.weight) + a.depth_mlp.up.bias.view(1, -1, 1, 1, 1))
    depth_term = torch.einsum("behwc,de->bdhwc", u, a.depth_mlp.down.weight) + a.depth_mlp.down.bias.view(1, -1, 1, 1, 1)
    ref = X + (h + depth_term) @ a.up.weight.T + a.up.bias
    torch.testing.assert_close(a(x), ref.view(B * D, H, W, C))


@pytest.mark.parametrize("C,D", [(8, 3), (768, 20), (64, 1)])
def test_dfused_adapter_parameter_count_is_the_formula(C, D):
    a = DepthFusedAdapter(dim=C, depth=D)
    channel = C * (C // 4) + C // 4 + (C // 4) * C + C  # W_dn, b_dn, W_up, b_up
    depth = (D * 4 * D + 4 * D + 4 * D * D + D) if D > 1 else 0  # W_Dup, b_Dup, W_Ddn, b_Ddn
    assert sum(p.numel() for p in a.parameters()) == channel + depth


def test_depth_mixing_stays_within_a_patch():
    torch.manual_seed(0)
    a = DepthFusedAdapter(dim=8, depth=4)
    nn.init.normal_(a.up.weight)
    x = torch.randn(2 * 4, 3, 8)
    y = a(x)
    x2 = x.clone()
    x2[1] += 1.0  # slice 1 of patch 0
    y2 = a(x2)
    assert not torch.allclose(y2[0], y[0])  # slice 0 of the same patch sees it
    torch.testing.assert_close(y2[4:], y[4:])  # patch 1 does not
    vanilla = DepthFusedAdapter(dim=8, depth=1)
    vanilla.load_state_dict({k: v for k, v in a.state_dict().items() if "depth" not in k})
    assert torch.allclose(vanilla(x2)[0], vanilla(x)[0])  # no depth path: slices independent


@pytest.mark.parametrize("kind", [k for k in ADAPTER_KINDS if k != "none"])
def test_every_adapter_kind_starts_as_identity_and_has_the_shape(kind):
    a = build_adapter(kind, dim=16, depth=4)
    x = torch.randn(8, 5, 16)
    torch.testing.assert_close(a(x), x)
    body = build_adapter(kind, dim=16, depth=4, skip=False)
    torch.testing.assert_close(body(x), torch.zeros_like(x))
    assert build_adapter("none", dim=16, depth=4) is None
    with pytest.raises(ValueError, match="unknown adapter kind"):
        build_adapter("lora", dim=16)


def test_depth_mlp_position_differs_between_s4_and_s5():
    torch.manual_seed(0)
    before, after = DepthMLPAdapter(dim=8, depth=2, depth_first=True), DepthMLPAdapter(dim=8, depth=2, depth_first=False)
    after.load_state_dict(before.state_dict())
    for m in (before, after):
        nn.init.normal_(m.adapter.up.weight)
        nn.init.normal_(m.depth_mlp.down.weight)
    after.load_state_dict(before.state_dict())
    x = torch.randn(4, 3, 8)
    assert not torch.allclose(before(x), after(x))


def test_modality_adapter_maps_any_channels_to_rgb():
    for c in (1, 2, 4):
        assert ModalityAdapter(in_channels=c)(torch.randn(3, c, 32, 16)).shape == (3, 3, 32, 16)


def test_mc_adapter_gives_class_probabilities_that_sum_to_one_and_mixes_classes():
    torch.manual_seed(0)
    mc = MultiClassAdapter(num_classes=4)
    for shape in [(2, 4, 8, 8), (2, 4, 3, 8, 8)]:
        x = torch.randn(*shape) * 5
        p = mc.probabilities(x)
        assert p.shape == x.shape and (p >= 0).all()
        torch.testing.assert_close(p.sum(1), torch.ones_like(p.sum(1)))
        assert mc(x).shape == x.shape
    x = torch.randn(1, 4, 6, 6)
    x2 = x.clone()
    x2[:, 3] += 3.0
    assert not torch.allclose(mc(x)[:, 0], mc(x2)[:, 0])  # class 0's logit depends on class 3's map

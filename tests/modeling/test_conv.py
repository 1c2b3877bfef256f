"""The batch-1 oneDNN Conv3d: same outputs, gradients and state dicts as torch's, another backend."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.profiler import profile

from sam_nnunet.modeling.blocks.conv import FLOP_FORMULAS, Conv3d, takes_onednn_path

HAS_ONEDNN = torch.backends.mkldnn.is_available()
# the tests below are about the routed op itself; a torch without oneDNN never routes (asserted above them)
needs_onednn = pytest.mark.skipif(not HAS_ONEDNN, reason="torch built without oneDNN: Conv3d never routes")

CASES = [
    (dict(kernel_size=3, padding=1), (1, 6, 4, 20, 18)),
    (dict(kernel_size=(1, 3, 3), padding=(0, 1, 1), stride=(1, 2, 2)), (1, 6, 1, 20, 18)),
    (dict(kernel_size=3, padding=2, dilation=2, groups=2), (1, 6, 3, 20, 18)),
]


@pytest.mark.parametrize("kwargs,shape", CASES)
def test_same_outputs_and_gradients_as_torch(kwargs, shape):
    torch.manual_seed(0)
    ref = nn.Conv3d(6, 8, **kwargs)
    conv = Conv3d(6, 8, **kwargs)
    conv.load_state_dict(ref.state_dict())
    assert list(conv.state_dict()) == list(ref.state_dict())
    x = torch.randn(*shape)
    assert takes_onednn_path(x, conv) == HAS_ONEDNN
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = conv(xa), ref(xb)
    torch.testing.assert_close(ya, yb, rtol=1e-4, atol=1e-5)
    g = torch.randn_like(ya)
    ya.backward(g)
    yb.backward(g)
    torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(conv.weight.grad, ref.weight.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(conv.bias.grad, ref.bias.grad, rtol=1e-4, atol=1e-4)


@needs_onednn
def test_batch_one_call_runs_in_onednn_where_torch_falls_back():
    conv = Conv3d(8, 8, kernel_size=3, padding=1)
    x = torch.randn(1, 8, 2, 16, 16)

    def kernels(fn):
        with torch.no_grad(), profile() as prof:
            fn(x)
        return {e.key for e in prof.key_averages()}

    assert "aten::mkldnn_convolution" not in kernels(lambda t: F.conv3d(t, conv.weight, conv.bias, padding=1))  # torch's heuristic
    assert "aten::mkldnn_convolution" in kernels(conv)


def test_other_calls_take_torchs_own_path():
    conv = Conv3d(2, 2, kernel_size=3, padding=1)
    assert not takes_onednn_path(torch.randn(2, 2, 2, 8, 8), conv)  # batch > 1: torch already picks oneDNN
    assert not takes_onednn_path(torch.randn(1, 2, 2, 8, 8, dtype=torch.float64), conv)
    assert not takes_onednn_path(torch.randn(1, 2, 2, 8, 8), Conv3d(2, 2, kernel_size=1))  # 1x1x1: torch's is faster
    same = Conv3d(2, 2, kernel_size=3, padding="same")
    assert not takes_onednn_path(torch.randn(1, 2, 2, 8, 8), same)
    assert same(torch.randn(1, 2, 2, 8, 8)).shape == (1, 2, 2, 8, 8)
    circular = Conv3d(2, 2, kernel_size=3, padding=1, padding_mode="circular")
    assert not takes_onednn_path(torch.randn(1, 2, 2, 8, 8), circular)


@needs_onednn
def test_flop_formula_counts_a_routed_call_like_torchs_convolution():
    from torch.utils.flop_counter import FlopCounterMode

    conv = Conv3d(4, 6, kernel_size=3, padding=1, groups=2)
    x = torch.randn(1, 4, 3, 10, 12)
    counts = []
    for fn in (conv, lambda t: F.conv3d(t, conv.weight, conv.bias, padding=1, groups=2)):
        counter = FlopCounterMode(display=False, custom_mapping=FLOP_FORMULAS)
        with torch.no_grad(), counter:
            fn(x)
        counts.append(counter.get_total_flops())
    # 2 * output elements * (input channels per group * 27)
    assert counts[0] == counts[1] == 2 * 6 * 3 * 10 * 12 * 2 * 27


def test_traced_by_torch_compile():
    """nnU-Net compiles networks by default on GPU and on request in its predictor; the routed op has no
    fake-tensor kernel, so traced code must take torch's path (aot_eager traces like inductor, without codegen)."""
    conv = Conv3d(4, 4, kernel_size=3, padding=1)
    x = torch.randn(1, 4, 2, 8, 8)
    with torch.no_grad():
        compiled = torch.compile(conv, backend="aot_eager", fullgraph=True)(x)
        torch.testing.assert_close(compiled, conv(x), rtol=1e-4, atol=1e-5)

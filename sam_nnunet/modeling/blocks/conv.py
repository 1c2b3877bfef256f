"""A ``Conv3d`` that runs nnU-Net's batch-1 tiles through oneDNN on CPU.

PyTorch's CPU backend chooses between oneDNN and a native fallback per call, with a heuristic
(``ConvParams::use_mkldnn``): a float32 convolution goes to oneDNN only if its batch is above 1, a
kernel is larger than 3 x 3, it is grouped, or N*C*size(2)*size(3) exceeds 20480. nnU-Net's
predictor feeds the network one sliding-window tile at a time, and the CPU 3d preset trains with
batch 1, so the 3x3(x3) convolutions of Self-Prompt-SAM's prompt generator took the fallback, which
for 3D kernels is up to 9x slower: 3x3x3, 32 channels, 4 x 128 x 128, 2 cores, 152 ms per forward
against 16 ms through oneDNN; 1x3x3 on one slice of 128 x 128, 8 channels, 1.9 ms against 0.29 ms.

Where the fallback is the faster one, nothing changes: 1x1(x1) kernels (0.05 ms against 0.30 ms
for the MC-Adapter's) and 2D convolutions, whose native path is good (the MAdapter's 3x3 on one
input channel: 0.28 ms against 1.7 ms), keep torch's choice. docs/benchmark_log.md has the network
A/B.

:class:`Conv3d` is ``nn.Conv3d`` (same parameters and state-dict keys) and calls
``torch.mkldnn_convolution`` itself for batch-1 float32 CPU inputs when a kernel side is above 1.
That op's autograd formula is PyTorch's generic convolution backward, so gradients are unchanged
(tested). Everything else (GPU, other dtypes, batch > 1, string padding, code being traced by
``torch.compile`` or by the ONNX exporter) takes the stock path.
``torch.utils.flop_counter`` has no formula for that op: pass :data:`FLOP_FORMULAS` as its
``custom_mapping`` to count these calls.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

_MKLDNN_CONV = getattr(torch, "mkldnn_convolution", None) if torch.backends.mkldnn.is_available() else None
try:
    from torch.compiler import is_compiling as _is_compiling  # torch >= 2.3
except ImportError:  # torch 2.1 / 2.2
    from torch._dynamo import is_compiling as _is_compiling


def _mkldnn_conv_flop(x_shape, w_shape, _bias, _padding, _stride, _dilation, _groups, *, out_shape, **_) -> int:
    from torch.utils.flop_counter import conv_flop_count

    return conv_flop_count(x_shape, w_shape, out_shape, transposed=False)


FLOP_FORMULAS = {torch.ops.aten.mkldnn_convolution: _mkldnn_conv_flop} if _MKLDNN_CONV is not None else {}


def takes_onednn_path(x: torch.Tensor, conv: nn.Conv3d) -> bool:
    """Whether :class:`Conv3d` routes this call itself (see the module docstring)."""
    return (_MKLDNN_CONV is not None and x.shape[0] == 1 and x.device.type == "cpu" and x.dtype == torch.float32
            and max(conv.kernel_size) > 1 and conv.padding_mode == "zeros" and not isinstance(conv.padding, str)
            and not _is_compiling()  # the op has no fake-tensor kernel; compiled code picks its own
            and not torch.jit.is_tracing())  # ONNX export: the op has no ONNX form, aten::_convolution has


class Conv3d(nn.Conv3d):
    """``nn.Conv3d``; batch-1 CPU calls with kernels above 1 go through oneDNN (module docstring)."""

    def _conv_forward(self, input: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
        if takes_onednn_path(input, self):
            return _MKLDNN_CONV(input, weight, bias, self.padding, self.stride, self.dilation, self.groups)
        return super()._conv_forward(input, weight, bias)

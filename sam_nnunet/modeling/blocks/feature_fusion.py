"""PG-SAM's multi-level feature fusion, MLFF (shared/papers/003, section 2.3, Eqs. 4-5).

Replaces SAM's single 4x mask upscaling. From the two-way transformer's output F_trans (B x C x h x w)
and the guide matrix G (B x C x h x w, :mod:`.prior_aligner`)::

    F_up1 = GELU(LN(DeConv2x2(F_trans)))     B x C/2 x 2h x 2w      Eq. 4, t = 1
    F_up2 = GELU(LN(DeConv2x2(F_up1)))       B x C/4 x 4h x 4w      Eq. 4, t = 2   (channels 4:2:1)
    F_fusion = phi(F_up2) + Align(psi(G); theta)   B x C/8 x 4h x 4w   Eq. 5 (psi before Align, see below)

* ``phi`` / ``psi``: 1x1 convolutions to C/8, the width of SAM's hypernetwork outputs, so the mask tokens
  read F_fusion as they read SAM's upscaled features.
* ``Align``: psi(G) is resized bilinearly to the 4h x 4w grid and passed through a 3x3 deformable
  convolution (``torchvision.ops.deform_conv2d``, C/8 to C/8 channels); its offsets (theta) are predicted by
  a 3x3 convolution from psi(G) and F_up2 together, so the guide is moved towards the upsampled features'
  edges. The offset convolution starts at zero, i.e. as a plain convolution, as deformable networks are
  initialised.
* Order: Eq. 5 aligns G (C channels) and compresses afterwards. torchvision's deformable convolution is
  slow on CPU (its backward was 400 of 510 ms of a vit_tiny training step, batch 8, 128 x 128, with
  C -> C/4 channels; 55 of 124 ms in this order), so the 1x1 compression comes first (at h x w, where
  it commutes exactly with the bilinear resize) and the deformable convolution works on C/8 channels, 16x fewer multiply-adds. Both are
  linear in the guide for given offsets, so the composition spans the same maps up to the rank of psi.

The paper writes sigma in Eq. 4 and "LN-GELU" in the text: GELU is used, as in SAM's upscaling.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from segment_anything.modeling.common import LayerNorm2d
from torch import nn
from torchvision.ops import deform_conv2d


def upsample_stage(in_dim: int, out_dim: int) -> nn.Sequential:
    """Eq. 4: B x in_dim x h x w -> B x out_dim x 2h x 2w (2x2 stride-2 DeConv, LayerNorm, GELU)."""
    return nn.Sequential(nn.ConvTranspose2d(in_dim, out_dim, kernel_size=2, stride=2), LayerNorm2d(out_dim), nn.GELU())


class DeformableAlign(nn.Module):
    """Align(G; theta): a 3x3 deformable convolution of G whose offsets come from [G, reference]."""

    #: ONNX has DeformConv from opset 19 (``sam_nnunet.export.onnx_model`` reads this)
    min_onnx_opset = 19

    def __init__(self, in_dim: int, reference_dim: int, out_dim: int, kernel_size: int = 3) -> None:
        super().__init__()
        self.kernel_size = kernel_size
        self.offset = nn.Conv2d(in_dim + reference_dim, 2 * kernel_size * kernel_size, kernel_size,
                                padding=kernel_size // 2)
        nn.init.zeros_(self.offset.weight)
        nn.init.zeros_(self.offset.bias)
        self.weight = nn.Parameter(torch.empty(out_dim, in_dim, kernel_size, kernel_size))
        nn.init.kaiming_uniform_(self.weight, a=5 ** 0.5)
        self.bias = nn.Parameter(torch.zeros(out_dim))

    def forward(self, guide: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        """guide: B x in_dim x H x W; reference: B x reference_dim x H x W -> B x out_dim x H x W."""
        offsets = self.offset(torch.cat([guide, reference.to(guide.dtype)], dim=1))
        if torch.is_autocast_enabled(guide.device.type):
            # torchvision's deformable convolution has no bf16 kernel (and none in fp16 on CPU): under autocast it
            # runs in fp32, as autocast runs other precision-sensitive ops (found by benchmarks/gpu_check.py)
            with torch.autocast(guide.device.type, enabled=False):
                return deform_conv2d(guide.float(), offsets.float(), self.weight, self.bias,
                                     padding=self.kernel_size // 2)
        return deform_conv2d(guide, offsets, self.weight, self.bias, padding=self.kernel_size // 2)


class MultiLevelFeatureFusion(nn.Module):
    def __init__(self, dim: int, with_guide: bool = True) -> None:
        """dim: C, the transformer (decoder) width; the output has C/8 channels. with_guide: False builds no
        Align/psi (no FGMPA, so no G)."""
        super().__init__()
        if dim % 8:
            raise ValueError(f"MLFF needs a decoder width divisible by 8, got {dim}")
        self.up1 = upsample_stage(dim, dim // 2)
        self.up2 = upsample_stage(dim // 2, dim // 4)
        self.phi = nn.Conv2d(dim // 4, dim // 8, kernel_size=1)
        self.psi = nn.Conv2d(dim, dim // 8, kernel_size=1) if with_guide else None
        self.align = DeformableAlign(dim // 8, dim // 4, dim // 8) if with_guide else None

    def forward(self, features: torch.Tensor, guide: Optional[torch.Tensor]) -> torch.Tensor:
        """features: F_trans, B x C x h x w; guide: G, B x C x h x w -> F_fusion, B x C/8 x 4h x 4w.

        Without a guide (a network with MLFF but no FGMPA) F_fusion is phi(F_up2) alone."""
        up = self.up2(self.up1(features))
        if guide is None:
            return self.phi(up)
        guide = F.interpolate(self.psi(guide), size=up.shape[-2:], mode="bilinear", align_corners=False)
        return self.phi(up) + self.align(guide, up)

"""Prompt generators of Self-Prompt-SAM: auxiliary multi-class masks from the image encoder.

:class:`MSPGenerator` (section 2.3): 5 feature maps, namely the input image and the outputs of 4
encoder blocks at increasing depth, go into a hierarchical decoder of convolutions and transposed
convolutions. Starting from the deepest map (1/16 of the input), each stage upsamples 2x and
concatenates the next shallower map, brought to that resolution with transposed convolutions as in
UNETR (whose decoder this follows; the paper cites the same design), until full resolution. A
segmentation head at every stage gives the deep-supervision outputs (full, 1/2, 1/4, 1/8).

:class:`ConvPromptGenerator` is Table 4's S1 baseline, "stacked CNNs": the deepest map alone,
upsampled to full size by 4 transposed-conv stages, one output.

Both work on 5D tensors (B x C x D x H x W; 2D patches have D = 1), so 2D and 3D share the code.
Choices: instance norm + LeakyReLU (the paper uses instance norm; nnU-Net's nonlinearity);
upsampling never touches depth (the encoder keeps all D slices). Widths ``channels`` are for
full, 1/2, 1/4 and 1/8 resolution (default: SAM decoder width / 8, / 4, / 2, / 1).

Depth mixing (``depth_mixing``, the paper does not say whether the generator is 2D or 3D):

* ``True``: a 3D generator. Convolutions are 3x3x3 (they see the neighbouring slices) and instance
  norm takes its statistics over the whole D x H x W patch. Self-Prompt-SAM's full model in 3D.
* ``False``: a 2D generator run on each slice. Convolutions are 1x3x3 and instance norm is per slice
  (H x W), so no slice's output depends on another slice. Table 4's ablation rows use this, so
  that the depth information the table credits to the adapters and the depth positional embedding
  does not already come through the generator (see :mod:`.self_prompt_sam`). 2D patches (D = 1)
  always get the 1x3x3 kernels, whatever the flag.

Both settings have the same parameter names; only the depth extent of the conv kernels differs.
Convolutions are :class:`~sam_nnunet.modeling.blocks.conv.Conv3d` (batch-1 tiles through oneDNN on CPU).
"""
from __future__ import annotations

from typing import List, Sequence

import torch
from torch import nn

from sam_nnunet.modeling.common import traceable_instance_norm
from sam_nnunet.modeling.blocks.conv import Conv3d


def tokens_to_volume(tokens: torch.Tensor, depth: int) -> torch.Tensor:
    """Encoder tokens (B*D) x h x w x E -> B x E x D x h x w."""
    BD, h, w, E = tokens.shape
    return tokens.view(BD // depth, depth, h, w, E).permute(0, 4, 1, 2, 3)


class InstanceNorm(nn.InstanceNorm3d):
    """Affine instance norm of B x C x D x H x W over D x H x W, or over each slice's H x W (``per_slice``)."""

    def __init__(self, num_features: int, *, per_slice: bool) -> None:
        super().__init__(num_features, affine=True)
        self.per_slice = per_slice

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: B x C x D x H x W -> B x C x D x H x W."""
        B, C, D, H, W = x.shape
        if not self.per_slice or D == 1:
            return self._normalise(x)
        slices = x.transpose(1, 2).reshape(B * D, C, 1, H, W)
        return self._normalise(slices).view(B, D, C, H, W).transpose(1, 2).contiguous()

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        return traceable_instance_norm(self, x) if torch.jit.is_tracing() else super().forward(x)


class ConvBlock(nn.Sequential):
    """Conv -> InstanceNorm -> LeakyReLU: 3x3x3 with norm over the patch if ``depth_mixing``, else 1x3x3 with
    per-slice norm (module docstring)."""

    def __init__(self, in_channels: int, out_channels: int, depth_mixing: bool) -> None:
        k = 3 if depth_mixing else 1
        super().__init__(
            Conv3d(in_channels, out_channels, kernel_size=(k, 3, 3), padding=(k // 2, 1, 1)),
            InstanceNorm(out_channels, per_slice=not depth_mixing),
            nn.LeakyReLU(0.01, inplace=True),
        )


class UpBlock(nn.Sequential):
    """2x in-plane transposed convolution followed by a :class:`ConvBlock`."""

    def __init__(self, in_channels: int, out_channels: int, depth_mixing: bool) -> None:
        super().__init__(
            nn.ConvTranspose3d(in_channels, out_channels, kernel_size=(1, 2, 2), stride=(1, 2, 2)),
            ConvBlock(out_channels, out_channels, depth_mixing),
        )


class MSPGenerator(nn.Module):
    def __init__(self, *, image_channels: int, encoder_dim: int, num_classes: int,
                 channels: Sequence[int] = (32, 64, 128, 256), depth_mixing: bool = True) -> None:
        """
        Args:
            image_channels: channels of the image fed as the shallowest (full-resolution) map.
            encoder_dim: E, width of the encoder's feature maps.
            num_classes: K, segmentation heads.
            channels: widths at full, 1/2, 1/4, 1/8 resolution.
            depth_mixing: 3D generator (3x3x3 convs, norm over the patch) or per slice (module docstring);
                False for 2D patches.
        """
        super().__init__()
        if len(channels) != 4:
            raise ValueError(f"MSPGenerator needs 4 widths (full, 1/2, 1/4, 1/8), got {list(channels)}")
        c = list(channels)
        mix = self.depth_mixing = depth_mixing
        self.image_stem = nn.Sequential(ConvBlock(image_channels, c[0], mix), ConvBlock(c[0], c[0], mix))
        # encoder map j (j = 0..2, shallowest first) is brought to 1/2, 1/4, 1/8 by 3, 2, 1 upsamplings
        self.skip_projections = nn.ModuleList(
            nn.Sequential(*[UpBlock(encoder_dim if i == 0 else c[level], c[level], mix) for i in range(4 - level)])
            for level in (1, 2, 3)
        )
        self.bottleneck = ConvBlock(encoder_dim, c[3], mix)
        self.ups = nn.ModuleList(
            nn.ConvTranspose3d(c[min(level + 1, 3)], c[level], kernel_size=(1, 2, 2), stride=(1, 2, 2))
            for level in range(4)
        )
        self.fuse = nn.ModuleList(
            nn.Sequential(ConvBlock(2 * c[level], c[level], mix), ConvBlock(c[level], c[level], mix))
            for level in range(4)
        )
        self.heads = nn.ModuleList(nn.Conv3d(c[level], num_classes, kernel_size=1) for level in range(4))

    def forward(self, image: torch.Tensor, features: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        """
        Args:
            image: B x C x D x H x W (H, W multiples of 16).
            features: 4 encoder maps, shallowest first, each B x E x D x H/16 x W/16.
        Returns:
            auxiliary mask logits at full, 1/2, 1/4, 1/8 resolution: B x K x D x H/2^s x W/2^s.
        """
        if len(features) != 4:
            raise ValueError(f"MSPGenerator takes 4 encoder feature maps, got {len(features)}")
        skips = [self.image_stem(image)] + [proj(f) for proj, f in zip(self.skip_projections, features[:3])]
        x = self.bottleneck(features[3])
        outputs: List[torch.Tensor] = []
        for level in reversed(range(4)):
            x = self.fuse[level](torch.cat([self.ups[level](x), skips[level]], dim=1))
            outputs.append(self.heads[level](x))
        return outputs[::-1]


class ConvPromptGenerator(nn.Module):
    """Table 4's S1: stacked convolutions on the deepest encoder map only, one full-resolution output."""

    def __init__(self, *, encoder_dim: int, num_classes: int, channels: Sequence[int] = (32, 64, 128, 256),
                 depth_mixing: bool = True) -> None:
        """Arguments as :class:`MSPGenerator` (the image is not used)."""
        super().__init__()
        c = list(channels)
        self.depth_mixing = depth_mixing
        self.bottleneck = ConvBlock(encoder_dim, c[3], depth_mixing)
        self.ups = nn.Sequential(*[UpBlock(c[min(level + 1, 3)], c[level], depth_mixing)
                                   for level in reversed(range(4))])
        self.head = nn.Conv3d(c[0], num_classes, kernel_size=1)

    def forward(self, image: torch.Tensor, features: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        """image: unused (kept for the common interface); features[-1]: B x E x D x h x w -> [B x K x D x 16h x 16w]."""
        return [self.head(self.ups(self.bottleneck(features[-1])))]

"""MAdapter (Self-Prompt-SAM section 2.2): any number of image channels -> the 3 SAM expects.

MRI and CT give 1 channel, multi-sequence MRI several; SAM's patch embedding was trained on RGB.
An inverted bottleneck of convolutions learns that mapping during fine-tuning, so the pretrained
RGB patch embedding is used as it is (without the MAdapter, Table 4's S7, the patch embedding is
instead mapped onto the input channels when a checkpoint loads: ``checkpoint.adapt_patch_embed``).

Choices (the paper gives no sizes): 3x3 conv C -> ``expansion`` channels, instance norm, GELU,
1x1 conv -> 3. It runs per slice (2D convolutions on the ``B*D`` slices); depth is the adapters' job.
"""
from __future__ import annotations

import torch
from torch import nn

from sam_nnunet.modeling.common import InstanceNorm2d


class ModalityAdapter(nn.Module):
    def __init__(self, *, in_channels: int, out_channels: int = 3, expansion: int = 32) -> None:
        """
        Args:
            in_channels: image channels from nnU-Net (modalities / sequences).
            out_channels: channels of the SAM encoder's input (3).
            expansion: width of the inverted bottleneck.
        """
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(in_channels, expansion, kernel_size=3, padding=1),
            InstanceNorm2d(expansion, affine=True),  # nn.InstanceNorm2d, exported exactly to ONNX
            nn.GELU(),
            nn.Conv2d(expansion, out_channels, kernel_size=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: N x in_channels x H x W -> N x out_channels x H x W."""
        return self.layers(x)

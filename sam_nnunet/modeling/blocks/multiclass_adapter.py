"""MC-Adapter (Self-Prompt-SAM section 2.5): per-class binary masks -> one multi-class prediction.

SAM's mask decoder runs once per class prompt and each run is trained like a binary (sigmoid)
output, so the K outputs live on different scales and a plain softmax over them mislabels pixels
where every class is unsure (the paper's Fig. 1c). The MC-Adapter is an inverted bottleneck of two
convolutions, K -> ``expansion * K`` -> K, followed by a softmax over the K classes.

nnU-Net convention: networks return logits and nnU-Net applies the softmax (in its Dice + CE loss
and at inference), so :meth:`forward` returns the pre-softmax logits and :meth:`probabilities` is
the adapter's full output. Choice: 1x1(x1) kernels, i.e. a per-pixel recalibration of the K scores,
which is what the paper motivates; the same module serves 2D (B x K x H x W) and 3D (B x K x D x H x W).
"""
from __future__ import annotations

import torch
from torch import nn


class MultiClassAdapter(nn.Module):
    def __init__(self, *, num_classes: int, expansion: int = 4) -> None:
        """
        Args:
            num_classes: K, nnU-Net's segmentation heads (background included).
            expansion: hidden width factor of the inverted bottleneck.
        """
        super().__init__()
        hidden = expansion * num_classes
        self.expand = nn.Conv3d(num_classes, hidden, kernel_size=1)
        self.act = nn.GELU()
        self.project = nn.Conv3d(hidden, num_classes, kernel_size=1)

    def forward(self, masks: torch.Tensor) -> torch.Tensor:
        """masks: B x K x (D x) H x W per-class binary logits -> B x K x (D x) H x W class logits."""
        x = masks if masks.ndim == 5 else masks.unsqueeze(2)
        x = self.project(self.act(self.expand(x)))
        return x if masks.ndim == 5 else x.squeeze(2)

    def probabilities(self, masks: torch.Tensor) -> torch.Tensor:
        """The adapter with its softmax: class probabilities summing to 1 over K."""
        return torch.softmax(self.forward(masks), dim=1)

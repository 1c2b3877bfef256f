"""ESP-MedSAM's Self-Patch Prompt Generator, SPPG (shared/papers/004, section III-C, Eqs. 4-5).

* Patch generator delta: L layers of (2x2 convolution, stride 2, then LayerNorm) for patch merging and a 1x1
  convolution for channel compression, on the image embedding E (B x C x h x w, 1/16 of the input). The patch
  prompts p_hat = sigmoid(delta(E)) are B x K' x h/2^L x w/2^L: one map per foreground class, each cell a
  patch of 16 * 2^L pixels (L = 1, 32-pixel patches, the paper's default; L is a switch).
* Target p (Eq. 5): the label, one-hot per foreground class and max-pooled over each patch
  (:func:`patch_targets`): 1 where the patch holds any pixel of the class. Trained with BCE.
* Dense prompt (DP) encoder: p_hat interpolated (bilinear) to the embedding's h x w and a 1x1 convolution to
  C channels: the dense prompt D, added to E before the decoder (Eq. 6's E + D).

The paper is binary (one map per image); for multi-class datasets there is one map per foreground class
(K' = K - 1). The layers have no activation between them, as the paper lists none. The generator reads only
the image embedding: no label reaches it, in training or at inference (the label is the BCE target only).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from segment_anything.modeling.common import LayerNorm2d
from torch import nn


class SelfPatchPromptGenerator(nn.Module):
    def __init__(self, *, dim: int, num_targets: int, num_layers: int = 1) -> None:
        """
        Args:
            dim: C, the image embedding width (SAM's 256).
            num_targets: K', foreground classes (one patch map each).
            num_layers: L; the patch is 16 * 2^L input pixels.
        """
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"SPPG needs at least one patch-merging layer (L >= 1), got {num_layers}")
        self.num_layers = num_layers
        layers = []
        for _ in range(num_layers):
            layers += [nn.Conv2d(dim, dim, kernel_size=2, stride=2), LayerNorm2d(dim)]
        self.merge = nn.Sequential(*layers)
        self.compress = nn.Conv2d(dim, num_targets, kernel_size=1)
        self.dense = nn.Conv2d(num_targets, dim, kernel_size=1)  # the DP encoder's channel alignment

    @property
    def reduction(self) -> int:
        """How many embedding cells one patch-map cell covers per side (2^L)."""
        return 2 ** self.num_layers

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        """Eq. 4 before the sigmoid: E (B x C x h x w) -> patch logits delta(E), B x K' x h/2^L x w/2^L."""
        return self.compress(self.merge(embedding))

    def dense_prompt(self, patch_logits: torch.Tensor, size) -> torch.Tensor:
        """The DP encoder: patch logits (B x K' x h' x w') -> D, B x C x size (the embedding's h x w)."""
        probs = torch.sigmoid(patch_logits)
        return self.dense(F.interpolate(probs, size=tuple(size), mode="bilinear", align_corners=False))


def patch_targets(segmentation: torch.Tensor, num_classes: int, patch: int, size=None) -> torch.Tensor:
    """Eq. 5's p: the label max-pooled per class over ``patch`` x ``patch`` pixels (in-plane).

    Args:
        segmentation: B x 1 x (D x) H x W integer labels 0..num_classes-1 (other values, e.g. nnU-Net's ignore
            label, count as no class).
        num_classes: K including background; the result has the K - 1 foreground maps.
        patch: pixels per patch side (16 * 2^L).
        size: the patch grid to produce (the network's, from its padded input); default ceil(H / patch) ...
    Returns B x (K-1) x (D x) h' x w' float {0, 1}.
    """
    seg = segmentation[:, 0].long()
    classes = torch.arange(1, num_classes, device=seg.device).view(1, -1, *([1] * (seg.ndim - 1)))
    onehot = (seg.unsqueeze(1) == classes).float()  # B x K' x (D x) H x W
    H, W = onehot.shape[-2:]
    grid = tuple(size) if size is not None else (-(-H // patch), -(-W // patch))
    onehot = F.pad(onehot, (0, grid[1] * patch - W, 0, grid[0] * patch - H))
    lead = onehot.shape[:-2]
    pooled = F.max_pool2d(onehot.reshape(-1, 1, *onehot.shape[-2:]), kernel_size=patch)
    return pooled.reshape(*lead, *pooled.shape[-2:])

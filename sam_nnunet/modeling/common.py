"""Shape helpers shared by the 2D and 3D paths of every SAM network."""
from __future__ import annotations

from typing import List, Sequence, Tuple, Union

import torch
import torch.nn.functional as F


def pad_to_multiple(x: torch.Tensor, multiple: int) -> Tuple[torch.Tensor, Tuple[int, int]]:
    """Zero-pad the last two dims up to a multiple: B x C x H x W -> B x C x H' x W'; returns (x, (H, W))."""
    H, W = x.shape[-2:]
    ph, pw = (-H) % multiple, (-W) % multiple
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph))
    return x, (H, W)


def padded_size(size: Sequence[int], multiple: int) -> Tuple[int, int]:
    return tuple(int(s + (-s) % multiple) for s in size[-2:])


def fold_depth(x: torch.Tensor) -> Tuple[torch.Tensor, int]:
    """B x C x D x H x W -> (B*D) x C x H x W, so a 2D network runs on every slice; returns (x, D)."""
    B, C, D, H, W = x.shape
    return x.permute(0, 2, 1, 3, 4).reshape(B * D, C, H, W), D


def unfold_depth(x: torch.Tensor, depth: int) -> torch.Tensor:
    """(B*D) x K x H x W -> B x K x D x H x W (inverse of :func:`fold_depth`)."""
    BD, K, H, W = x.shape
    return x.view(BD // depth, depth, K, H, W).permute(0, 2, 1, 3, 4)


Outputs = Union[torch.Tensor, List[torch.Tensor]]

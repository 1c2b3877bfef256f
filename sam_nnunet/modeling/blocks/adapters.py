"""Bottleneck adapters for SAM's transformers, with the depth mixing of Self-Prompt-SAM.

Self-Prompt-SAM (shared/papers/002, section 2.1 and appendix C, Eq. 1) adapts a 2D SAM to 3D
patches by running the D slices of a patch through the ViT as a batch and letting an adapter mix
features across those slices::

    DFusedAdapter(X) = X + (σ(X W_dn) + σ(σ(X W_dn) W_Dup) W_Ddn) W_up

with W_dn: C -> C/4 and W_up: C/4 -> C on channels, W_Dup: D -> 4D and W_Ddn: 4D -> D on depth.

Tensor layout: every adapter takes ``N x ... x C`` with ``N = B * D`` and the depth index innermost
(``n = b * D + d``, as :func:`sam_nnunet.modeling.common.fold_depth` produces). The middle axes
(image tokens ``H x W`` in the encoder, tokens in the decoder) are kept; depth layers act on the
``D`` slices of each of the ``B`` patches.

Choices where the paper is silent:

* σ is GELU (the AIM adapters the paper follows use GELU).
* W_up is zero-initialised, so an inserted adapter starts as the identity and pretrained SAM
  computes what it computed before; the depth path's W_Ddn starts at PyTorch's default init (it
  only matters once W_up moves).
* The Table 4 ablations are the ``kind`` of :func:`build_adapter`: ``"vanilla"`` (S3, Houlsby
  bottleneck), ``"depth_before"`` / ``"depth_after"`` (S4 / S5: a depth MLP with its own skip
  before / after a vanilla adapter), ``"dfused"`` (S6+, Eq. 1) and ``"none"``. With D = 1 (2D
  patches) every kind reduces to the vanilla adapter: there is nothing to mix across.
"""
from __future__ import annotations

from typing import Optional, Type

import torch
from torch import nn

ADAPTER_KINDS = ("none", "vanilla", "depth_before", "depth_after", "dfused")


class DepthMLP(nn.Module):
    """Inverted-bottleneck MLP across the D slices of a patch: D -> ratio*D -> D (no skip)."""

    def __init__(self, *, depth: int, ratio: int = 4, act_layer: Type[nn.Module] = nn.GELU,
                 zero_init: bool = False) -> None:
        super().__init__()
        self.depth = depth
        self.up = nn.Linear(depth, ratio * depth)  # W_Dup
        self.act = act_layer()
        self.down = nn.Linear(ratio * depth, depth)  # W_Ddn
        if zero_init:
            nn.init.zeros_(self.down.weight)
            nn.init.zeros_(self.down.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B*D) x ... x C -> (B*D) x ... x C, i.e. σ(x W_Dup) W_Ddn along depth."""
        if x.shape[0] % self.depth:
            raise ValueError(f"batch {x.shape[0]} is not a multiple of the patch depth {self.depth}")
        shape = x.shape
        per_patch = x.reshape(shape[0] // self.depth, self.depth, -1).transpose(1, 2)  # B x (...*C) x D
        mixed = self.down(self.act(self.up(per_patch)))
        return mixed.transpose(1, 2).reshape(shape)


class DepthFusedAdapter(nn.Module):
    """Eq. 1 of Self-Prompt-SAM (``depth=None`` or 1: the vanilla bottleneck adapter, S3)."""

    def __init__(self, *, dim: int, depth: Optional[int] = None, reduction: int = 4, depth_ratio: int = 4,
                 act_layer: Type[nn.Module] = nn.GELU, skip: bool = True) -> None:
        """
        Args:
            dim: C, the token width.
            depth: D, slices per patch; None or 1 switches the depth path off.
            reduction: C -> C / reduction in the channel bottleneck (4 in the paper).
            depth_ratio: D -> depth_ratio * D in the depth inverted bottleneck (4 in the paper).
            skip: add the input (the "X +" of Eq. 1); False returns the adapter branch only (for the
                adapter in parallel to the MLP, whose block adds it to the MLP output).
        """
        super().__init__()
        hidden = max(dim // reduction, 1)
        self.down = nn.Linear(dim, hidden)  # W_dn
        self.act = act_layer()
        self.depth_mlp = DepthMLP(depth=depth, ratio=depth_ratio, act_layer=act_layer) \
            if depth is not None and depth > 1 else None
        self.up = nn.Linear(hidden, dim)  # W_up
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)
        self.skip = skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B*D) x ... x C -> (B*D) x ... x C."""
        h = self.act(self.down(x))
        if self.depth_mlp is not None:
            h = h + self.depth_mlp(h)  # σ(h W_Dup) W_Ddn, h = σ(X W_dn)
        out = self.up(h)
        return x + out if self.skip else out


class DepthMLPAdapter(nn.Module):
    """Table 4's S4 / S5: a depth MLP with its own skip before or after a vanilla adapter."""

    def __init__(self, *, dim: int, depth: int, depth_first: bool, skip: bool = True,
                 act_layer: Type[nn.Module] = nn.GELU) -> None:
        super().__init__()
        self.depth_first = depth_first
        self.depth_mlp = DepthMLP(depth=depth, act_layer=act_layer, zero_init=True)
        self.adapter = DepthFusedAdapter(dim=dim, depth=None, act_layer=act_layer, skip=skip)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B*D) x ... x C -> (B*D) x ... x C."""
        if self.depth_first:
            return self.adapter(x + self.depth_mlp(x))
        y = self.adapter(x)
        return y + self.depth_mlp(y)


def build_adapter(kind: str, *, dim: int, depth: int = 1, skip: bool = True) -> Optional[nn.Module]:
    """An adapter of one of :data:`ADAPTER_KINDS` for tokens of width ``dim`` (None for ``"none"``)."""
    if kind not in ADAPTER_KINDS:
        raise ValueError(f"unknown adapter kind {kind!r}; choose one of {ADAPTER_KINDS}")
    if kind == "none":
        return None
    if kind == "vanilla" or depth <= 1:
        return DepthFusedAdapter(dim=dim, depth=None, skip=skip)
    if kind == "dfused":
        return DepthFusedAdapter(dim=dim, depth=depth, skip=skip)
    return DepthMLPAdapter(dim=dim, depth=depth, depth_first=kind == "depth_before", skip=skip)

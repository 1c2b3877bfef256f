"""Low-rank adaptation (LoRA, Hu et al. 2021) for the SAM image encoder (HSP-SAM section 3.2).

``LoRALinear`` *is* an ``nn.Linear``: it takes over the weight and bias Parameters of an existing
layer (no copy), so the state-dict keys of the frozen base layer stay those of the official SAM
checkpoints (``...attn.qkv.weight``) and the low-rank factors appear next to them
(``...attn.qkv.lora_A`` / ``lora_B``). ``W' = W + (alpha / r) * B A`` with ``B`` zero-initialised,
so a freshly wrapped layer computes exactly what the base layer computed.

Choice (the paper says only "LoRA for every image encoder block, r = 32"): we adapt the fused
``qkv`` projection of every block by default (q, k and v together, as one low-rank update of the
3D x D matrix). ``targets`` selects more layers (``proj``, ``mlp``) for experiments.
"""
from __future__ import annotations

import math
from typing import Iterable, List, Tuple

import torch
import torch.nn.functional as F
from torch import nn

# Attribute paths inside a segment-anything ViT block that LoRA may wrap.
LORA_TARGETS = {
    "qkv": ("attn", "qkv"),
    "proj": ("attn", "proj"),
    "mlp": (("mlp", "lin1"), ("mlp", "lin2")),
}


class LoRALinear(nn.Linear):
    """A linear layer with a trainable low-rank update ``(alpha / rank) * B @ A``.

    Build it from an existing layer with :meth:`from_linear`; the base ``weight``/``bias`` are the
    very same Parameters, so freezing or loading them works as on the original layer.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        rank: int = 32,
        alpha: float | None = None,
    ) -> None:
        """
        Args:
            in_features / out_features / bias: as for ``nn.Linear``.
            rank: rank r of the update (HSP-SAM uses 32).
            alpha: scaling numerator; the update is scaled by ``alpha / rank`` (default alpha = rank).
        """
        super().__init__(in_features, out_features, bias)
        if rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {rank}")
        self.rank = rank
        self.scaling = (alpha if alpha is not None else rank) / rank
        self.lora_A = nn.Parameter(torch.empty(rank, in_features))
        self.lora_B = nn.Parameter(torch.zeros(out_features, rank))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.merged = False

    @classmethod
    def from_linear(cls, linear: nn.Linear, *, rank: int, alpha: float | None = None) -> "LoRALinear":
        """Wrap ``linear``: the returned layer shares its weight and bias Parameters."""
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None, rank=rank, alpha=alpha)
        layer.to(device=linear.weight.device, dtype=linear.weight.dtype)
        layer.weight = linear.weight
        layer.bias = linear.bias
        return layer

    def delta_weight(self) -> torch.Tensor:
        """The low-rank update, ``out_features x in_features``."""
        return (self.lora_B @ self.lora_A) * self.scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: ... x in_features -> ... x out_features."""
        y = F.linear(x, self.weight, self.bias)
        if not self.merged:
            y = y + F.linear(F.linear(x, self.lora_A), self.lora_B) * self.scaling
        return y

    @torch.no_grad()
    def merge(self) -> None:
        """Fold the update into ``weight`` for inference (one matmul instead of three)."""
        if not self.merged:
            self.weight.add_(self.delta_weight().to(self.weight.dtype))
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Undo :meth:`merge` (needed before training on or saving trainable factors again)."""
        if self.merged:
            self.weight.sub_(self.delta_weight().to(self.weight.dtype))
            self.merged = False

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rank={self.rank}, scaling={self.scaling:g}, merged={self.merged}"


def _get(module: nn.Module, path: Tuple[str, ...]) -> nn.Module:
    for name in path:
        module = getattr(module, name)
    return module


def _target_paths(targets: Iterable[str]) -> List[Tuple[str, ...]]:
    paths: List[Tuple[str, ...]] = []
    for t in targets:
        if t not in LORA_TARGETS:
            raise ValueError(f"Unknown LoRA target {t!r}; expected some of {sorted(LORA_TARGETS)}")
        spec = LORA_TARGETS[t]
        paths.extend(spec if isinstance(spec[0], tuple) else [spec])
    return paths


def apply_lora(blocks: Iterable[nn.Module], *, rank: int, targets: Iterable[str] = ("qkv",),
               alpha: float | None = None) -> int:
    """Wrap the ``targets`` linears of every block in ``blocks`` with :class:`LoRALinear`.

    Returns the number of layers wrapped.
    """
    n = 0
    paths = _target_paths(targets)
    for block in blocks:
        for path in paths:
            parent, name = _get(block, path[:-1]), path[-1]
            linear = getattr(parent, name)
            if isinstance(linear, LoRALinear):
                continue
            setattr(parent, name, LoRALinear.from_linear(linear, rank=rank, alpha=alpha))
            n += 1
    return n


def lora_layers(module: nn.Module) -> List[LoRALinear]:
    return [m for m in module.modules() if isinstance(m, LoRALinear)]


def merge_lora(module: nn.Module) -> int:
    """Merge every LoRA layer in ``module`` in place; returns how many were merged."""
    layers = lora_layers(module)
    for layer in layers:
        layer.merge()
    return len(layers)

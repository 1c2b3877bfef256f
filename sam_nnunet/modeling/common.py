"""Shape helpers shared by the 2D and 3D paths of every SAM network, and an instance norm that exports exactly."""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn


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


def check_channels(network: nn.Module, x: torch.Tensor) -> None:
    """A clear error when ``x`` (B x C x ...) does not have the ``num_input_channels`` the network was built for."""
    if x.shape[1] != network.num_input_channels:
        raise ValueError(f"{type(network).__name__} was built for {network.num_input_channels} input channel(s) (the "
                         f"dataset's channel_names) but got an image with {x.shape[1]}: {tuple(x.shape)}")


def slices_for_vit(network: nn.Module, x: torch.Tensor) -> Tuple[torch.Tensor, Optional[int], Tuple[int, int]]:
    """The input of a slice-wise 2D network: channels checked, a 3d patch folded into slices, padded to the ViT
    patch size. B x C x (D x) H x W -> ((B*D) x C x H' x W', D or None, (H, W)); undo with :func:`unfold_depth`
    and a crop to (H, W)."""
    check_channels(network, x)
    depth = None
    if x.ndim == 5:
        x, depth = fold_depth(x)
    x, size = pad_to_multiple(x, network.patch_size)
    return x, depth, size


def traceable_instance_norm(norm: nn.modules.instancenorm._InstanceNorm, x: torch.Tensor) -> torch.Tensor:
    """``norm(x)`` (N x C x *spatial) with mean and variance taken in two passes, as torch takes them.

    Used while tracing for ONNX: ONNX Runtime's InstanceNormalization is about 10x less exact on inputs far
    from zero mean (measured: 2e-5 against torch's 3e-6 at mean 50), which is enough to flip pixels of the
    auxiliary argmax that Self-Prompt-SAM's prompts come from.
    """
    dims = tuple(range(2, x.ndim))
    mean = x.mean(dim=dims, keepdim=True)
    var = (x - mean).pow(2).mean(dim=dims, keepdim=True)
    y = (x - mean) * torch.rsqrt(var + norm.eps)
    if not norm.affine:
        return y
    shape = (1, -1) + (1,) * len(dims)
    return y * norm.weight.view(shape) + norm.bias.view(shape)


class InstanceNorm2d(nn.InstanceNorm2d):
    """``nn.InstanceNorm2d`` (same parameters and keys), exported to ONNX as :func:`traceable_instance_norm`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return traceable_instance_norm(self, x) if torch.jit.is_tracing() else super().forward(x)


def bare_network(network: nn.Module) -> nn.Module:
    """``network`` without the wrappers nnU-Net may put around it: DDP / DataParallel (``.module``) and
    ``torch.compile`` (``._orig_mod``, which ``nnUNet_compile=true`` adds), however nested."""
    from torch._dynamo.eval_frame import OptimizedModule
    from torch.nn.parallel import DataParallel, DistributedDataParallel

    while True:
        if isinstance(network, (DataParallel, DistributedDataParallel)):
            network = network.module
        elif isinstance(network, OptimizedModule):
            network = network._orig_mod
        else:
            return network


def top_level_part(name: str) -> str:
    """A parameter's part: its top-level module (``decoder.layers.0.weight`` -> ``decoder``); the encoder's LoRA
    factors apart from the rest of it (what the papers' parameter counts separate)."""
    part = name.split(".", 1)[0]
    if part == "encoder":
        return "encoder (LoRA)" if ".lora_" in name else "encoder (other)"
    return part


def trainable_by_part(network: nn.Module, parts: Sequence[str] = (), part_of=top_level_part) -> dict:
    """Trainable parameter count per part (``part_of(parameter name)``), ``parts`` first and listed even at 0."""
    counts = dict.fromkeys(parts, 0)
    for name, p in network.named_parameters():
        if p.requires_grad:
            part = part_of(name)
            counts[part] = counts.get(part, 0) + p.numel()
    return counts

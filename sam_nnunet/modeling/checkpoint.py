"""Loading official SAM / MedSAM checkpoints into the project's networks.

Accepted files: the official ``sam_vit_b_01ec64.pth`` / ``sam_vit_l_0b3195.pth`` / ``sam_vit_h_4b8939.pth``
(a flat state dict with ``image_encoder.*``, ``prompt_encoder.*``, ``mask_decoder.*`` keys) and MedSAM's
``medsam_vit_b.pth`` (same layout; copies wrapped as ``{"model": ...}`` / ``{"state_dict": ...}`` or with a
``module.`` prefix are unwrapped). Weights cannot be downloaded by this code: give a path.

What happens to each tensor:

* keys are mapped by the network's ``sam_key_map`` (e.g. ``image_encoder.blocks.3.attn.qkv.weight`` ->
  ``encoder.blocks.3.attn.qkv.weight``; ``image_encoder.neck.*`` -> the deepest level's neck);
* ``pos_embed`` is resized bicubically to the patch grid, ``rel_pos_h/w`` of global blocks linearly;
* the RGB patch embedding is mapped onto the network's input channels (sum for 1 channel, cyclic
  repeat scaled by 3/C otherwise, as timm's ``adapt_input_conv``);
* everything else must match in shape: a checkpoint of another ViT size is an error, not a partial load.

The report names every key loaded, resized, left at its initialisation (missing) and not used
(unexpected); nothing is dropped silently.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import torch
from torch import nn

from .image_encoder import resize_pos_embed, resize_rel_pos
from .registry import ENCODERS

CHECKPOINT_ENV = "SAM_NNUNET_CHECKPOINT"


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be used (unreadable, wrong layout or wrong size)."""


@dataclass
class LoadReport:
    path: str
    loaded: List[str] = field(default_factory=list)
    resized: List[Tuple[str, tuple, tuple]] = field(default_factory=list)
    missing: List[str] = field(default_factory=list)
    unexpected: List[str] = field(default_factory=list)

    def format(self) -> str:
        lines = [f"SAM checkpoint {self.path}: {len(self.loaded)} tensors loaded"]
        for key, src, dst in self.resized:
            lines.append(f"  resized {key}: {list(src)} -> {list(dst)}")
        lines.append(f"  missing (kept at initialisation, trained): {len(self.missing)}")
        lines.extend(f"    {k}" for k in self.missing)
        lines.append(f"  unexpected (in the checkpoint, not used by this network): {len(self.unexpected)}")
        lines.extend(f"    {k}" for k in self.unexpected)
        return "\n".join(lines)


def read_sam_state_dict(path: str | os.PathLike) -> Dict[str, torch.Tensor]:
    """Read a SAM/MedSAM checkpoint file into a flat ``image_encoder.*`` / ``mask_decoder.*`` state dict."""
    path = Path(path)
    hint = ("Expected an official SAM checkpoint (sam_vit_b_01ec64.pth, sam_vit_l_0b3195.pth, "
            "sam_vit_h_4b8939.pth) or MedSAM's medsam_vit_b.pth.")
    if not path.is_file():
        raise CheckpointError(f"SAM checkpoint not found: {path}. {hint}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for truncated / foreign files
        raise CheckpointError(f"Could not read {path} as a PyTorch checkpoint ({type(e).__name__}: {e}). "
                              f"The file is corrupt, truncated or not a checkpoint. {hint}") from e
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a state dict. {hint}")
    for wrapper in ("model", "state_dict"):
        if not any(str(k).startswith("image_encoder.") for k in obj) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
    sd = {re.sub(r"^module\.", "", str(k)): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not any(k.startswith("image_encoder.") for k in sd):
        raise CheckpointError(f"{path} does not look like a SAM checkpoint: no 'image_encoder.*' keys "
                              f"(first keys: {list(sd)[:5]}). {hint}")
    return sd


def checkpoint_encoder_size(sd: Dict[str, torch.Tensor]) -> Tuple[int, int]:
    """(embed_dim, depth) of the ViT in a SAM state dict."""
    embed_dim = sd["image_encoder.patch_embed.proj.weight"].shape[0] if "image_encoder.patch_embed.proj.weight" in sd \
        else sd["image_encoder.pos_embed"].shape[-1]
    blocks = {int(m.group(1)) for k in sd if (m := re.match(r"image_encoder\.blocks\.(\d+)\.", k))}
    return embed_dim, len(blocks)


def _name_of_size(embed_dim: int, depth: int) -> str:
    for name, cfg in ENCODERS.items():
        if cfg.embed_dim == embed_dim and cfg.depth == depth:
            return name
    return "an unknown size"


def adapt_patch_embed(weight: torch.Tensor, in_chans: int) -> torch.Tensor:
    """D x 3 x p x p RGB patch embedding -> D x in_chans x p x p."""
    if weight.shape[1] == in_chans:
        return weight
    if in_chans == 1:
        return weight.sum(dim=1, keepdim=True)
    reps = -(-in_chans // weight.shape[1])
    return weight.repeat(1, reps, 1, 1)[:, :in_chans] * (weight.shape[1] / in_chans)


def _adapt(key: str, value: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    if value.shape == target.shape:
        return value
    if key.endswith("pos_embed") and value.ndim == 4:
        return resize_pos_embed(value, tuple(target.shape[1:3]))
    if re.search(r"rel_pos_[hw]$", key) and value.shape[1:] == target.shape[1:]:
        return resize_rel_pos(value, target.shape[0])
    if key.endswith("patch_embed.proj.weight") and value.shape[0] == target.shape[0]:
        return adapt_patch_embed(value, target.shape[1])
    return value


def load_sam_checkpoint(model: nn.Module, path: str | os.PathLike,
                        key_map: Optional[Callable[[str], List[str]]] = None) -> LoadReport:
    """Load a SAM/MedSAM checkpoint into ``model`` (which provides ``sam_key_map`` and ``encoder``).

    Raises :class:`CheckpointError` for unreadable files, foreign layouts and size mismatches.
    """
    sd = read_sam_state_dict(path)
    key_map = key_map or model.sam_key_map
    embed_dim, depth = checkpoint_encoder_size(sd)
    want_dim, want_depth = model.encoder.embed_dim, len(model.encoder.blocks)
    if (embed_dim, depth) != (want_dim, want_depth):
        raise CheckpointError(
            f"{path} holds a ViT with embed dim {embed_dim} and {depth} blocks ({_name_of_size(embed_dim, depth)}), "
            f"but this network's encoder has embed dim {want_dim} and {want_depth} blocks "
            f"({_name_of_size(want_dim, want_depth)}). Choose the matching encoder.")

    target = model.state_dict()
    report = LoadReport(path=str(path))
    new_state: Dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        dests = [d for d in key_map(key) if d in target]
        if not dests:
            report.unexpected.append(key)
            continue
        for dest in dests:
            adapted = _adapt(key, value, target[dest])
            if adapted.shape != target[dest].shape:
                raise CheckpointError(f"{path}: {key} has shape {list(value.shape)}, which cannot be mapped onto "
                                      f"{dest} of shape {list(target[dest].shape)}.")
            if adapted.shape != value.shape:
                report.resized.append((dest, tuple(value.shape), tuple(adapted.shape)))
            new_state[dest] = adapted.to(target[dest].dtype)
            report.loaded.append(dest)
    report.missing = [k for k in target if k not in new_state]
    model.load_state_dict(new_state, strict=False)
    return report


def freeze_pretrained_encoder(model: nn.Module) -> Tuple[int, int]:
    """Freeze the image encoder except its LoRA factors (HSP-SAM: encoder frozen, LoRA trained).

    Returns (frozen, trainable) parameter counts of the encoder.
    """
    frozen = trainable = 0
    for name, p in model.encoder.named_parameters():
        p.requires_grad = "lora_" in name
        if p.requires_grad:
            trainable += p.numel()
        else:
            frozen += p.numel()
    return frozen, trainable

"""Loading official SAM / MedSAM checkpoints into the project's networks.

Accepted files: the official ``sam_vit_b_01ec64.pth`` / ``sam_vit_l_0b3195.pth`` / ``sam_vit_h_4b8939.pth``
(a flat state dict with ``image_encoder.*``, ``prompt_encoder.*``, ``mask_decoder.*`` keys) and MedSAM's
``medsam_vit_b.pth`` (same layout). Copies wrapped as ``{"model": ...}`` / ``{"state_dict": ...}``, saved
from a ``DataParallel``/DDP module (``module.``) or a ``torch.compile``-d one (``_orig_mod.``), in any
order, are unwrapped. Weights cannot be downloaded by this code: give a path.

Files that are refused, each with a :class:`CheckpointError` that says what the file is:

* unreadable, truncated or not a PyTorch file;
* an nnU-Net training checkpoint (``checkpoint_final.pth`` / ``checkpoint_best.pth``: ``network_weights``,
  ``optimizer_state``, ``trainer_name`` ...), which belongs to ``nnUNetv2_train --c`` / ``nnUNetv2_predict``;
* a SAM 2 / SAM 2.1 checkpoint (``image_encoder.trunk.*``, ``memory_attention.*`` ...): a Hiera encoder,
  not the ViT these networks are built from;
* LoRA factors without the base weights they were trained on (no ``image_encoder.*`` tensors);
* a ViT of another size than the network's encoder;
* a TinyViT file (MobileSAM's, LiteMedSAM's ``lite_medsam.pth``), except for a network that takes the prompt
  encoder and mask decoder alone (``takes_sam_decoder_alone``: Self-Prompt-SAM), which gets those and keeps its
  own ViT trainable (:func:`load_sam_decoder`);
* a partial checkpoint that lacks part of the ViT trunk (see the rule below).

Which missing tensors are fatal: the **trunk** of the ViT (patch embedding, ``pos_embed`` and every
tensor of every block except the relative-position tables) must all be in the file, because these
are what the networks freeze as "pretrained"; a frozen encoder with a randomly initialised piece in it
(one block, or its input projection) is no longer the pretrained encoder, and LoRA/adapters cannot
repair it. Everything else an official file holds may be absent: the relative-position tables
(``rel_pos_h/w``; zero-initialised, i.e. no relative bias, as in an MAE-initialised ViT), the neck,
the prompt encoder and the mask decoder. Such a file loads; what it lacked is listed in
:attr:`LoadReport.not_supplied` and stays trainable (:func:`freeze_supplied` only freezes what the
file supplied).

What happens to each tensor:

* keys are mapped by the network's ``sam_key_map`` (e.g. ``image_encoder.blocks.3.attn.qkv.weight`` ->
  ``encoder.blocks.3.attn.qkv.weight``; ``image_encoder.neck.*`` -> the deepest level's neck);
* ``pos_embed`` is resized bicubically to the patch grid, ``rel_pos_h/w`` of global blocks linearly;
* the RGB patch embedding is mapped onto the network's input channels (sum for 1 channel, cyclic
  repeat scaled by 3/C otherwise, as timm's ``adapt_input_conv``);
* LoRA factors found in the file are not loaded (they are not SAM weights; the network's own train);
* everything else must match in shape: a checkpoint of another ViT size is an error, not a partial load.

The report names every key loaded, resized, left at its initialisation (missing), absent from the
file although an official checkpoint has it (not supplied) and not used (unexpected); nothing is
dropped silently.
"""
from __future__ import annotations

import functools
import os
import re
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List, Optional, Tuple

import torch
from torch import nn

# reading and identifying files; CHECKPOINT_ENV, CheckpointError, file_fingerprint, peek_checkpoint and
# read_sam_state_dict are part of this module's API too
from sam_nnunet.modeling.weights.checkpoint_files import (_LORA_KEY, CHECKPOINT_ENV, EXPECTED, CheckpointError, file_fingerprint,  # noqa: F401
                               peek_checkpoint, read_sam_state_dict)
from sam_nnunet.modeling.blocks.image_encoder import resize_pos_embed, resize_rel_pos
from sam_nnunet.modeling.blocks.registry import ENCODERS

@dataclass
class LoadReport:
    """What :func:`load_sam_checkpoint` did, by network key.

    ``loaded``: every network tensor set from the file (``resized`` ones included).
    ``not_supplied``: network parameters that an official SAM checkpoint fills but this file lacked
    (e.g. ``encoder.blocks.2.attn.rel_pos_h``, the neck, the mask decoder); they keep their
    initialisation and are never frozen by :func:`freeze_supplied`. A subset of ``missing``, which also
    holds the parts SAM has no counterpart for (LoRA, adapters, new heads).
    """

    path: str
    loaded: List[str] = field(default_factory=list)
    resized: List[Tuple[str, tuple, tuple]] = field(default_factory=list)
    missing: List[str] = field(default_factory=list)
    unexpected: List[str] = field(default_factory=list)
    not_supplied: List[str] = field(default_factory=list)

    def format(self) -> str:
        lines = [f"SAM checkpoint {self.path}: {len(self.loaded)} tensors loaded"]
        for key, src, dst in self.resized:
            lines.append(f"  resized {key}: {list(src)} -> {list(dst)}")
        lines.append(f"  not in this file although official SAM checkpoints have them (kept at initialisation, "
                     f"trained): {len(self.not_supplied)}")
        lines.extend(f"    {k}" for k in self.not_supplied)
        lines.append(f"  missing (kept at initialisation, trained): {len(self.missing)}")
        lines.extend(f"    {k}" for k in self.missing)
        lines.append(f"  unexpected (in the checkpoint, not used by this network): {len(self.unexpected)}")
        lines.extend(f"    {k}" for k in self.unexpected)
        return "\n".join(lines)


# ---------------------------------------------------------------- the official layout and what a file lacks
@functools.lru_cache(maxsize=None)
def official_sam_keys(depth: int) -> Tuple[str, ...]:
    """Keys of an official SAM checkpoint whose ViT has ``depth`` blocks (12 / 24 / 32 for vit_b / l / h).

    Taken from segment-anything's own classes, built on the meta device (names only, no memory); the
    names do not depend on the widths, so small ones are used.
    """
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, TwoWayTransformer

    with torch.device("meta"):
        sam = nn.Module()
        sam.image_encoder = ImageEncoderViT(img_size=32, patch_size=16, embed_dim=8, depth=depth, num_heads=1,
                                            use_rel_pos=True, qkv_bias=True, out_chans=8, window_size=1)
        sam.prompt_encoder = PromptEncoder(embed_dim=16, image_embedding_size=(2, 2), input_image_size=(32, 32),
                                           mask_in_chans=4)
        sam.mask_decoder = MaskDecoder(transformer_dim=16, num_multimask_outputs=3, iou_head_hidden_dim=8,
                                       transformer=TwoWayTransformer(depth=2, embedding_dim=16, mlp_dim=8,
                                                                     num_heads=2))
    return tuple(sam.state_dict())


def is_trunk_key(key: str) -> bool:
    """A tensor of the ViT trunk, which a usable file must supply (module docstring: which missing tensors are
    fatal): patch embedding, ``pos_embed`` and the blocks' weights, but not their relative-position tables."""
    return (key.startswith("image_encoder.") and not key.startswith("image_encoder.neck.")
            and not re.search(r"\.rel_pos_[hw]$", key))


def _trunk_group(key: str) -> str:
    m = re.match(r"(image_encoder\.(?:blocks\.\d+|patch_embed))\.", key)
    return m.group(1) if m else key


def _describe_absent(absent: List[str], official: Iterable[str], limit: int = 8) -> str:
    """``image_encoder.pos_embed, image_encoder.blocks.5.*, ...``: whole groups as ``.*``, else single keys."""
    groups: Dict[str, List[str]] = {}
    for key in official:
        if is_trunk_key(key):
            groups.setdefault(_trunk_group(key), []).append(key)
    absent_set, items = set(absent), []
    for group, keys in groups.items():
        gone = [k for k in keys if k in absent_set]
        if len(gone) == len(keys) > 1:
            items.append(group + ".*")
        else:
            items.extend(gone)
    more = f" and {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def checkpoint_encoder_size(sd: Dict[str, torch.Tensor]) -> Tuple[Optional[int], int]:
    """(embed_dim, depth) of the ViT in a SAM state dict.

    ``embed_dim`` comes from the patch embedding, ``pos_embed`` or a block's first norm, whichever the
    file has (None if none); ``depth`` is the highest block index + 1, so a missing middle block shows
    as a partial file rather than as another ViT size.
    """
    embed_dim = None
    if "image_encoder.patch_embed.proj.weight" in sd:
        embed_dim = sd["image_encoder.patch_embed.proj.weight"].shape[0]
    elif "image_encoder.pos_embed" in sd:
        embed_dim = sd["image_encoder.pos_embed"].shape[-1]
    else:
        norm = next((v for k, v in sd.items() if re.match(r"image_encoder\.blocks\.\d+\.norm1\.weight$", k)), None)
        embed_dim = norm.shape[0] if norm is not None else None
    blocks = {int(m.group(1)) for k in sd if (m := re.match(r"image_encoder\.blocks\.(\d+)\.", k))}
    return embed_dim, max(blocks) + 1 if blocks else 0


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


#: the RGB input convolution of SAM's ViT and of MobileSAM's TinyViT (mapped onto the image channels)
PATCH_EMBED_KEYS = ("patch_embed.proj.weight", "patch_embed.seq.0.c.weight")


def _adapt(key: str, value: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    if value.shape == target.shape:
        return value
    if key.endswith("pos_embed") and value.ndim == 4:
        return resize_pos_embed(value, tuple(target.shape[1:3]))
    if re.search(r"rel_pos_[hw]$", key) and value.shape[1:] == target.shape[1:]:
        return resize_rel_pos(value, target.shape[0])
    if (key.endswith(PATCH_EMBED_KEYS) and value.ndim == 4 and value.shape[0] == target.shape[0]
            and value.shape[2:] == target.shape[2:]):
        return adapt_patch_embed(value, target.shape[1])
    return value


def load_sam_checkpoint(model: nn.Module, path: str | os.PathLike,
                        key_map: Optional[Callable[[str], List[str]]] = None) -> LoadReport:
    """Load a SAM/MedSAM checkpoint into ``model`` (which provides ``sam_key_map`` and ``encoder``).

    Raises :class:`CheckpointError` for unreadable files, foreign layouts, size mismatches and files
    that lack part of the ViT trunk; in every such case ``model`` is left untouched.
    """
    sd = read_sam_state_dict(path)
    key_map = key_map or model.sam_key_map
    if holds_tinyvit(sd):
        if getattr(model, "takes_sam_decoder_alone", False):
            return load_sam_decoder(model, sd, key_map, path)
        raise CheckpointError(
            f"{path} holds a TinyViT image encoder (MobileSAM / LiteMedSAM layout: image_encoder.layers.*), not the "
            f"SAM ViT this network's encoder is. ESP-MedSAM, HSP-SAM and PG-SAM take it with a light_encoder (plans "
            f"presets cpu_medsam, cpu_hsp_medsam, cpu_pg_medsam for LiteMedSAM's); Self-Prompt-SAM takes its prompt "
            f"encoder and mask decoder alone.")
    embed_dim, depth = checkpoint_encoder_size(sd)
    want_dim, want_depth = model.encoder.embed_dim, len(model.encoder.blocks)
    if (embed_dim is not None and embed_dim != want_dim) or depth > want_depth:
        raise CheckpointError(
            f"{path} holds a ViT with embed dim {embed_dim} and {depth} blocks ({_name_of_size(embed_dim, depth)}), "
            f"but this network's encoder has embed dim {want_dim} and {want_depth} blocks "
            f"({_name_of_size(want_dim, want_depth)}). Choose the matching encoder.")
    official = official_sam_keys(want_depth)
    absent = [k for k in official if k not in sd]
    absent_trunk = [k for k in absent if is_trunk_key(k)]
    if absent_trunk:
        n_trunk = sum(map(is_trunk_key, official))
        raise CheckpointError(
            f"{path} is a partial SAM checkpoint: missing {_describe_absent(absent_trunk, official)} "
            f"({len(absent_trunk)} of the {n_trunk} image-encoder tensors that are frozen as pretrained). "
            f"The patch embedding, pos_embed and all {want_depth} blocks must come from the file: a frozen encoder "
            f"with randomly initialised parts is not the pretrained encoder. (Relative-position tables, neck, "
            f"prompt encoder and mask decoder may be absent; they are then trained.) A copy cut short is "
            f"usually unreadable instead; check the file against its source. {EXPECTED}")

    return load_mapped_state(model, sd, key_map, path, absent)


def holds_tinyvit(sd: Dict[str, torch.Tensor]) -> bool:
    """Whether a SAM-layout state dict's image encoder is a TinyViT (MobileSAM's, LiteMedSAM's) rather than a ViT."""
    return any(k.startswith(("image_encoder.layers.", "image_encoder.patch_embed.seq.")) for k in sd)


def load_sam_decoder(model: nn.Module, sd: Dict[str, torch.Tensor], key_map: Callable[[str], List[str]],
                     path: str | os.PathLike) -> LoadReport:
    """The file's SAM prompt encoder and mask decoder into a network whose ViT the file cannot fill (a TinyViT file):
    its image encoder and neck are reported unused, and the network's encoder keeps its initialisation (trained).

    The decoder must be SAM's width: a ``model.mask_decoder`` of another width is refused with the encoder preset that
    has SAM's decoder. Raises :class:`CheckpointError` without touching ``model``.
    """
    if not any(k.startswith("mask_decoder.") for k in sd):
        raise CheckpointError(f"{path} holds no SAM mask decoder (mask_decoder.*), so nothing of it fits this "
                              f"network's ViT encoder or its decoder.")
    width = sd["mask_decoder.mask_tokens.weight"].shape[-1] if "mask_decoder.mask_tokens.weight" in sd else None
    own = model.mask_decoder.transformer.embedding_dim
    if width != own:
        raise CheckpointError(
            f"{path} holds a {width}-wide SAM mask decoder, but this network's decoder is {own} wide (its encoder "
            f"preset's decoder_dim). Use an encoder preset with SAM's decoder, e.g. 'vit_tiny_sam_decoder' "
            f"(plans preset cpu_selfprompt_medsam), or a SAM ViT size.")
    return load_mapped_state(model, sd, lambda k: [] if k.startswith("image_encoder.") else key_map(k), path)


def load_mapped_state(model: nn.Module, sd: Dict[str, torch.Tensor], key_map: Callable[[str], List[str]],
                      path: str | os.PathLike, absent: Iterable[str] = ()) -> LoadReport:
    """Load the checked state dict ``sd`` of the file ``path`` into ``model`` through ``key_map`` (file key ->
    network keys; position tables and the RGB input convolution adapted, every other shape must match);
    ``absent``: keys a complete file has and this one lacks (their network tensors become ``not_supplied``)."""
    target = model.state_dict()
    report = LoadReport(path=str(path))
    new_state: Dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        dests = [d for d in key_map(key) if d in target] if not _LORA_KEY.search(key) else []
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
    params = dict(model.named_parameters())
    report.not_supplied = list(dict.fromkeys(
        d for k in absent for d in key_map(k) if d in params and d not in new_state))
    model.load_state_dict(new_state, strict=False)
    return report


# ---------------------------------------------------------------- freezing
def freeze_supplied(model: nn.Module, report: LoadReport, prefix: str = "") -> Tuple[int, int]:
    """Freeze exactly the parameters under ``prefix`` that the checkpoint supplied (``report.loaded``,
    resized ones included); the one freezing rule of both networks.

    Everything else under ``prefix`` keeps its ``requires_grad``: LoRA factors and adapters (not SAM
    weights) and ``report.not_supplied`` (SAM weights this file lacked) are trained; a parameter a network
    froze by design stays frozen. HSP-SAM passes ``prefix="encoder."`` (its paper freezes the encoder
    only), Self-Prompt-SAM the whole network.

    Returns (frozen, trainable) parameter counts under ``prefix``.
    """
    supplied = set(report.loaded)
    frozen = trainable = 0
    for name, p in model.named_parameters():
        if not name.startswith(prefix):
            continue
        if name in supplied:
            p.requires_grad_(False)
        if p.requires_grad:
            trainable += p.numel()
        else:
            frozen += p.numel()
    return frozen, trainable


def freeze_pretrained_encoder(model: nn.Module, report: Optional[LoadReport] = None) -> Tuple[int, int]:
    """HSP-SAM's freezing: the encoder tensors the checkpoint supplied are frozen, LoRA and all else trained.

    Without a report (no file, e.g. tests of the LoRA training path) every non-LoRA encoder parameter
    counts as supplied, i.e. the encoder of a complete checkpoint. A network without LoRA (``lora_rank`` 0:
    the encoder is fine-tuned in full, HSP-SAM's Ft-SAM) freezes nothing. Returns (frozen, trainable) encoder
    counts.
    """
    if getattr(model, "lora_rank", None) == 0:
        return 0, sum(p.numel() for p in model.encoder.parameters() if p.requires_grad)
    if report is None:
        report = LoadReport(path="<complete SAM checkpoint assumed>", loaded=[
            f"encoder.{n}" for n, _ in model.encoder.named_parameters() if not _LORA_KEY.search(n)])
    return freeze_supplied(model, report, prefix="encoder.")

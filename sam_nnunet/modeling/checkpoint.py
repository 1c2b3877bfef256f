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
import hashlib
import io
import os
import pickle
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Set, Tuple

import torch
from torch import nn

from .image_encoder import resize_pos_embed, resize_rel_pos
from .registry import ENCODERS

CHECKPOINT_ENV = "SAM_NNUNET_CHECKPOINT"
EXPECTED = ("Expected an official SAM checkpoint (sam_vit_b_01ec64.pth, sam_vit_l_0b3195.pth, "
            "sam_vit_h_4b8939.pth) or MedSAM's medsam_vit_b.pth.")

# prefixes added by DataParallel/DDP (``module.``) and torch.compile (``_orig_mod.``), nested in any order
_WRAPPER_PREFIX = re.compile(r"^(?:(?:module|_orig_mod)\.)+")
# LoRA factors as saved by this project (``...qkv.lora_A``), PEFT (``...lora_A.weight``, ``lora_A.default``),
# kohya-style ``lora_down/up`` and SAMed's ``save_lora_parameters`` (``w_a_000``, ``w_b_000``)
_LORA_KEY = re.compile(r"(?:^|\.)lora_(?:A|B|down|up)(?:\.|$)|^w_[ab]_\d+$")
# top-level modules of SAM 2 / SAM 2.1 (sam2.modeling.sam2_base.SAM2Base) that SAM (v1) does not have
_SAM2_MARKERS = ("image_encoder.trunk.", "image_encoder.neck.convs.", "memory_attention.", "memory_encoder.",
                 "sam_prompt_encoder.", "sam_mask_decoder.")
# entries of the dict nnUNetTrainer.save_checkpoint writes
_NNUNET_KEYS = ("network_weights", "optimizer_state", "grad_scaler_state", "logging", "_best_ema", "current_epoch",
                "init_args", "trainer_name", "inference_allowed_mirroring_axes")
_PEEK_LIMIT = 256 << 20  # bytes of data.pkl read to identify a file (tensor data is stored outside it)


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be used (unreadable, wrong layout or wrong size)."""


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


def file_fingerprint(path: str | os.PathLike, chunk_size: int = 16 << 20) -> Dict[str, Any]:
    """Content identity of a file: ``{"size": bytes, "sha256": hex digest}``.

    The file is streamed in ``chunk_size`` pieces (a ViT-H checkpoint is 2.5 GB), so memory stays
    flat. Two paths with the same bytes give equal fingerprints; a changed byte changes the hash.
    Raises ``OSError`` (e.g. ``FileNotFoundError``) when the file cannot be read.
    """
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            digest.update(chunk)
            size += len(chunk)
    return {"size": size, "sha256": digest.hexdigest()}


# ---------------------------------------------------------------- identifying a file without loading it
class _Inert:
    """Stands in for every object a pickle asks to build; nothing named in the file is imported or called."""

    def __new__(cls, *args, **kwargs):
        return object.__new__(cls)

    def __init__(self, *args, **kwargs) -> None:
        pass

    def __setstate__(self, state) -> None:
        pass

    def __setitem__(self, key, value) -> None:
        pass

    def append(self, value) -> None:
        pass

    def extend(self, values) -> None:
        pass


class _InertUnpickler(pickle.Unpickler):
    """Rebuilds a pickle's containers and plain values, with :class:`_Inert` for every global.

    ``find_class`` is the only way a pickle reaches code (GLOBAL/STACK_GLOBAL/INST/OBJ and the copyreg
    extension codes all go through it; REDUCE/NEWOBJ/BUILD can only call what it returned), so
    answering it with an inert class makes loading side-effect free.
    """

    def __init__(self, file) -> None:
        super().__init__(file)
        self.globals_seen: Set[str] = set()

    def find_class(self, module: str, name: str):
        self.globals_seen.add(f"{module}.{name}")
        return _Inert

    def persistent_load(self, pid):  # torch's tensor storages
        return _Inert()


def peek_checkpoint(path: str | os.PathLike) -> Optional[Tuple[Any, List[str]]]:
    """The top-level object of a ``torch.save`` zip file and the globals its pickle names, or None.

    Used only to say what a file is when ``torch.load(weights_only=True)`` refuses it. Why this and not
    the alternatives:

    * ``weights_only=False`` executes whatever the file's pickle names: never for a file we only
      want to identify.
    * torch's allowlist (``torch.serialization.safe_globals``): the objects in an nnU-Net checkpoint
      (numpy scalars in its log, ``torch.device``, plans and optimizer state of any trainer subclass)
      vary with nnU-Net, numpy and the trainer, so a list would be incomplete, and every entry widens
      what a foreign file may run.
    * this: read only the zip's ``data.pkl`` (kilobytes to megabytes; tensor data lives in other
      records and is not read) with :class:`_InertUnpickler`, which returns a placeholder for every
      global. Dicts, lists, strings and numbers come back as they are, so top-level keys and values
      such as ``trainer_name`` are readable; nothing from the file runs.

    Returns None for files that are not a torch zip (legacy format, garbage, truncated).
    """
    try:
        with zipfile.ZipFile(path) as zf:
            name = next((n for n in zf.namelist() if n == "data.pkl" or n.endswith("/data.pkl")), None)
            if name is None or zf.getinfo(name).file_size > _PEEK_LIMIT:
                return None
            data = zf.read(name)
        unpickler = _InertUnpickler(io.BytesIO(data))
        return unpickler.load(), sorted(unpickler.globals_seen)
    except Exception:  # anything unreadable is simply "not identified"
        return None


def _strip_wrappers(key: Any) -> str:
    return _WRAPPER_PREFIX.sub("", str(key))


def _refuse_training_checkpoint(path: Path, top: Any) -> None:
    """An nnU-Net ``checkpoint_*.pth`` given as SAM weights: say what it is and where it belongs."""
    if not (isinstance(top, dict) and "network_weights" in top
            and {"optimizer_state", "trainer_name", "init_args"} & set(map(str, top))):
        return
    trainer = top.get("trainer_name") if isinstance(top.get("trainer_name"), str) else "(name not recorded)"
    epoch = top.get("current_epoch")
    epochs = f", saved after {epoch} epoch{'' if epoch == 1 else 's'}" if isinstance(epoch, int) else ""
    present = [k for k in _NNUNET_KEYS if k in top]
    raise CheckpointError(
        f"{path} is an nnU-Net training checkpoint of trainer {trainer}{epochs} ({', '.join(present)}), "
        f"not pretrained SAM weights. {CHECKPOINT_ENV} takes pretrained SAM weights. {EXPECTED} "
        f"To continue that training use nnUNetv2_train DATASET CONFIGURATION FOLD -tr {trainer} --c (it finds "
        f"checkpoint_latest.pth in its results folder); to predict with it use nnUNetv2_predict ... -tr {trainer} "
        f"-chk {path.name}.")


def _refuse_unsafe_file(path: Path, error: Exception) -> None:
    """``torch.load(weights_only=True)`` refused the file: identify it without running it, then raise."""
    peeked = peek_checkpoint(path)
    if peeked is None:
        # torch's own text advises weights_only=False, which is wrong for a broken file: keep only the reason
        detail = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\n\s*\n|$)", str(error), re.S)
        reason = detail.group(1).strip() if detail else str(error).strip()
        raise CheckpointError(f"Could not read {path} as a PyTorch checkpoint ({type(error).__name__}: {reason}). "
                              f"The file is corrupt, truncated or not a checkpoint. {EXPECTED}") from error
    top, names = peeked
    _refuse_training_checkpoint(path, top)
    keys = f" (top-level keys: {[str(k) for k in list(top)[:8]]})" if isinstance(top, dict) else ""
    raise CheckpointError(
        f"{path} holds Python objects besides tensors ({', '.join(names[:6])}){keys}, which a weights-only load "
        f"refuses, so it is not a SAM state dict. {EXPECTED} If it is a training checkpoint of yours that wraps SAM "
        f"weights and you trust it, save the state dict alone: torch.save(torch.load(p, weights_only=False)"
        f"['model'], 'sam_weights.pth').") from error


def _unwrap(obj: dict) -> Dict[str, torch.Tensor]:
    """``{"model": ...}`` / ``{"state_dict": ...}`` wrappers and ``module.`` / ``_orig_mod.`` prefixes removed."""
    for _ in range(3):
        if any(_strip_wrappers(k).startswith("image_encoder.") for k in obj):
            break
        inner = next((obj[w] for w in ("model", "state_dict") if isinstance(obj.get(w), dict)), None)
        if inner is None:
            break
        obj = inner
    return {_strip_wrappers(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def _refuse_foreign_layout(path: Path, sd: Dict[str, torch.Tensor]) -> None:
    """SAM 2, LoRA-only and other non-SAM state dicts, each named."""
    sam2 = [m for m in _SAM2_MARKERS if any(k.startswith(m) for k in sd)]
    if sam2:
        raise CheckpointError(
            f"{path} looks like a SAM 2 checkpoint ({', '.join(m + '*' for m in sam2)}): SAM 2 / SAM 2.1 use a "
            f"Hiera image encoder with a memory model, not the ViT that HSP-SAM and Self-Prompt-SAM are built "
            f"from, so its weights cannot be mapped. {EXPECTED}")
    lora = [k for k in sd if _LORA_KEY.search(k)]
    base = [k for k in sd if k.startswith("image_encoder.") and not _LORA_KEY.search(k)]
    if lora and not base:
        others = sorted({k.split(".")[0] + ".*" for k in sd if k not in set(lora)})
        holds = (f"holds LoRA factors ({len(lora)} tensors, e.g. {', '.join(lora[:3])}) and {len(sd) - len(lora)} "
                 f"other tensors ({', '.join(others[:4])})" if others else
                 f"holds only LoRA factors ({len(lora)} tensors, e.g. {', '.join(lora[:3])})")
        raise CheckpointError(
            f"{path} {holds}, not the SAM base weights: it has no image_encoder.* tensors. Give the base checkpoint "
            f"the factors were trained on. {EXPECTED}")
    if not base:
        raise CheckpointError(f"{path} does not look like a SAM checkpoint: no 'image_encoder.*' keys "
                              f"(first keys: {list(sd)[:5]}). {EXPECTED}")


def read_sam_state_dict(path: str | os.PathLike) -> Dict[str, torch.Tensor]:
    """Read a SAM/MedSAM checkpoint file into a flat ``image_encoder.*`` / ``mask_decoder.*`` state dict.

    The file is read with ``torch.load(weights_only=True)``: SAM checkpoints hold only tensors, and a
    file that holds more is identified with :func:`peek_checkpoint` (which runs nothing) to say what it
    is. Raises :class:`CheckpointError` for every file that is not SAM (v1) weights (see module docstring).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"SAM checkpoint not found: {path}. {EXPECTED}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:  # not weights only, or not a pickle at all
        _refuse_unsafe_file(path, e)
    except Exception as e:  # torch raises many types for truncated / foreign files
        raise CheckpointError(f"Could not read {path} as a PyTorch checkpoint ({type(e).__name__}: {e}). "
                              f"The file is corrupt, truncated or not a checkpoint. {EXPECTED}") from e
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a state dict. {EXPECTED}")
    _refuse_training_checkpoint(path, obj)
    sd = _unwrap(obj)
    _refuse_foreign_layout(path, sd)
    return sd


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

    Raises :class:`CheckpointError` for unreadable files, foreign layouts, size mismatches and files
    that lack part of the ViT trunk; in every such case ``model`` is left untouched.
    """
    sd = read_sam_state_dict(path)
    key_map = key_map or model.sam_key_map
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
    counts as supplied, i.e. the encoder of a complete checkpoint. Returns (frozen, trainable) encoder counts.
    """
    if report is None:
        report = LoadReport(path="<complete SAM checkpoint assumed>", loaded=[
            f"encoder.{n}" for n, _ in model.encoder.named_parameters() if not _LORA_KEY.search(n)])
    return freeze_supplied(model, report, prefix="encoder.")

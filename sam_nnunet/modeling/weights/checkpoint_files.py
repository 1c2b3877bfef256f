"""Reading and identifying checkpoint files given as ``SAM_NNUNET_CHECKPOINT``, before any weight is used.

:func:`read_sam_state_dict` returns a flat SAM (v1) state dict, or raises :class:`CheckpointError` naming
what the file is instead: unreadable or truncated, an nnU-Net training checkpoint, SAM 2 / 2.1, LoRA factors
without their base weights, or another layout. Wrappers are removed first: ``{"model": ...}`` /
``{"state_dict": ...}`` and the ``module.`` / ``_orig_mod.`` key prefixes of DDP and ``torch.compile``.
Files are loaded with ``weights_only=True``; one that holds more than tensors is identified by
:func:`peek_checkpoint`, which runs nothing from it. :func:`file_fingerprint` identifies a file by content
(the trainer's resume guard). How the tensors are then mapped, resized and frozen: :mod:`.checkpoint`.
"""
from __future__ import annotations

import hashlib
import io
import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Set, Tuple

import torch

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


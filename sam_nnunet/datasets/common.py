"""Pieces every converter shares: the layout error, where datasets go, atomic assembly, dataset.json and splits.

A converter builds its dataset inside a hidden temporary folder next to the target
(``<raw>/.DatasetNNN_Name.partial-XXXX``) and renames it into place only when every file and the
``dataset.json`` are written, so an interrupted or failed conversion never leaves a folder that nnU-Net
would take for a complete dataset. Existing datasets are never overwritten, and a new dataset is refused
when another folder already uses its id (nnU-Net resolves ``-d NNN`` by that prefix and fails on two).
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, TypeVar

from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json

T = TypeVar("T")
PathLike = str | os.PathLike


class DatasetLayoutError(ValueError):
    """The source folder is not in the layout the converter expects."""


def env_folder(name: str) -> Path:
    value = os.environ.get(name)
    if not value:
        raise DatasetLayoutError(f"{name} is not set: export {name}=/path/to/folder (see nnU-Net's "
                                 f"documentation/setting_up_paths.md) or pass the folder explicitly.")
    return Path(value)


def require_folder(folder: Path, layout: str) -> Path:
    """``folder`` if it is a directory, else a DatasetLayoutError that shows the expected layout."""
    if not folder.is_dir():
        raise DatasetLayoutError(f"{folder} does not exist: expected {layout}")
    return folder


def first(items: Sequence[T], n: Optional[int]) -> List[T]:
    """The first ``n`` items (all of them when ``n`` is None); ``n`` must be positive."""
    if n is not None and n < 1:
        raise ValueError(f"the number of cases to take must be at least 1, got {n}")
    return list(items[:n] if n else items)


def new_dataset_folder(raw_root: Optional[PathLike], dataset_id: int, name: str) -> Path:
    """``<raw_root>/Dataset{id:03d}_{name}`` (raw_root defaults to $nnUNet_raw), checked to be unused.

    Raises FileExistsError when that folder, or any other ``Dataset{id:03d}_*`` folder, exists.
    """
    if not 0 < dataset_id < 1000:
        raise ValueError(f"nnU-Net dataset ids have three digits (1-999), got {dataset_id}")
    root = Path(raw_root) if raw_root else env_folder("nnUNet_raw")
    target = root / f"Dataset{dataset_id:03d}_{name}"
    if target.exists():
        raise FileExistsError(f"{target} already exists; not overwriting it. Remove it or choose another -d.")
    clash = sorted(p.name for p in root.glob(f"Dataset{dataset_id:03d}_*")) if root.is_dir() else []
    if clash:
        raise FileExistsError(f"dataset id {dataset_id} is already used by {root / clash[0]}; not overwriting it. "
                              f"Choose another -d.")
    return target


@contextmanager
def assembling(target: Path) -> Iterator[Path]:
    """Yields an empty temporary folder next to ``target``; it becomes ``target`` when the block completes.

    On any exception the temporary folder is deleted and the exception propagates: nothing is left behind.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    try:
        yield tmp
        os.replace(tmp, target)  # fails rather than replace a non-empty folder created meanwhile
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_dataset_json(folder: Path, *, channel_names: Dict[int, str], labels: Dict[str, int], file_ending: str,
                       dataset_name: str, reference: str, licence: str, description: str, **extra) -> dict:
    """Write ``folder/dataset.json`` with nnU-Net's ``generate_dataset_json``; returns what was written.

    ``numTraining`` is counted from ``folder/labelsTr`` so it always matches the files on disk.
    """
    num_training = sum(1 for f in (folder / "labelsTr").iterdir() if f.name.endswith(file_ending))
    generate_dataset_json(str(folder), channel_names=dict(channel_names), labels=dict(labels),
                          num_training_cases=num_training, file_ending=file_ending, dataset_name=dataset_name,
                          reference=reference, license=licence, description=description,
                          converted_by="sam_nnunet.datasets", **extra)
    return json.loads((folder / "dataset.json").read_text())


def write_splits(preprocessed_root: Optional[PathLike], dataset_name: str, splits: List[Dict[str, List[str]]]) -> Path:
    """Write ``<preprocessed_root>/<dataset_name>/splits_final.json`` (default root: $nnUNet_preprocessed).

    An existing file with the same splits is left as it is; one with other splits is never overwritten.
    """
    root = Path(preprocessed_root) if preprocessed_root else env_folder("nnUNet_preprocessed")
    splits_file = root / dataset_name / "splits_final.json"
    if splits_file.exists() and json.loads(splits_file.read_text()) != splits:
        raise FileExistsError(f"{splits_file} exists with other splits; not overwriting it. Remove it to use the "
                              f"splits of this conversion.")
    splits_file.parent.mkdir(parents=True, exist_ok=True)
    splits_file.write_text(json.dumps(splits, indent=1))
    return splits_file

"""Pieces every converter shares: the layout error, where datasets go, atomic assembly, dataset.json and splits.

A converter builds its dataset inside a hidden temporary folder next to the target
(``<raw>/.DatasetNNN_Name.partial-XXXX``) and renames it into place only when every file and the
``dataset.json`` are written, so an interrupted or failed conversion never leaves a folder that nnU-Net
would take for a complete dataset. Existing datasets are never overwritten, and a new dataset is refused
when another folder already uses its id (nnU-Net resolves ``-d NNN`` by that prefix and fails on two).

A converter that also fixes the cross-validation folds (``splits_final.json`` in ``$nnUNet_preprocessed``)
hands them to :func:`assembling`, which makes them part of the same all-or-nothing step: see there.

Everything is created with the permissions a plain ``mkdir``/``open`` gives under the current umask
(folders ``0o777 & ~umask``, files ``0o666 & ~umask``), so a dataset is as readable by the group as any
other folder the user makes; ``tempfile.mkdtemp`` is not used because it creates its folder ``0o700``.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence, TypeVar

from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json

T = TypeVar("T")
PathLike = str | os.PathLike
Splits = List[Dict[str, List[str]]]


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


def _partial_folder(target: Path) -> Path:
    """A new empty hidden folder ``.<target name>.partial-XXXXXXXX`` next to ``target``, made by a plain mkdir."""
    while True:
        tmp = target.parent / f".{target.name}.partial-{secrets.token_hex(4)}"
        try:
            tmp.mkdir()
            return tmp
        except FileExistsError:
            continue


@contextmanager
def assembling(target: Path, *, splits: Optional[Splits] = None,
               preprocessed_root: Optional[PathLike] = None) -> Iterator[Path]:
    """Yields an empty temporary folder next to ``target``; it becomes ``target`` when the block completes.

    On any exception the temporary folder is deleted and the exception propagates: nothing is left behind.

    With ``splits``, ``<preprocessed_root>/<target name>/splits_final.json`` (default root
    ``$nnUNet_preprocessed``) is part of the same step. A splits file that exists with other splits is refused
    before anything is written (one with the same splits is kept as it is). The splits are written after the
    block, just before the rename that publishes the dataset, and removed again (with any folder made for them)
    if that rename fails; so a failure at any point leaves neither the dataset nor a new splits file. Splits
    first, dataset last, because of what an interruption between the two (a killed process) would leave: a raw
    dataset without its splits is the harmful state (nnU-Net would silently make its own random folds), while
    a splits file without a dataset is inert and a rerun that computes the same splits accepts it.
    """
    splits_file = splits_path(preprocessed_root, target.name) if splits is not None else None
    splits_present = splits_file is not None and _has_splits(splits_file, splits)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _partial_folder(target)
    try:
        yield tmp
        undo = _put_splits(splits_file, splits) if splits_file is not None and not splits_present else None
        try:
            os.replace(tmp, target)  # fails rather than replace a non-empty folder created meanwhile
        except BaseException:
            if undo is not None:
                undo()
            raise
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


def splits_path(preprocessed_root: Optional[PathLike], dataset_name: str) -> Path:
    """``<preprocessed_root>/<dataset_name>/splits_final.json``; the root defaults to $nnUNet_preprocessed."""
    root = Path(preprocessed_root) if preprocessed_root else env_folder("nnUNet_preprocessed")
    return root / dataset_name / "splits_final.json"


def _has_splits(splits_file: Path, splits: Splits) -> bool:
    """True when ``splits_file`` holds ``splits``, False when it does not exist; FileExistsError otherwise."""
    if not splits_file.exists():
        return False
    try:
        same = json.loads(splits_file.read_text()) == splits
    except ValueError:  # unreadable or not JSON: not these splits either
        same = False
    if not same:
        raise FileExistsError(f"{splits_file} exists with other splits; not overwriting it. Remove it to use the "
                              f"splits of this conversion, or convert with another dataset id.")
    return True


def _put_splits(splits_file: Path, splits: Splits) -> Callable[[], None]:
    """Write ``splits_file``, never over an existing file; returns a function that removes it, and the folders
    made for it, again. A failure here removes them at once."""
    made = [d for d in (splits_file.parent.parent, splits_file.parent) if not d.exists()]

    def remove_folders() -> None:
        for folder in reversed(made):
            try:
                folder.rmdir()  # only while empty: never removes what someone else put there meanwhile
            except OSError:
                pass

    def remove() -> None:
        splits_file.unlink(missing_ok=True)
        remove_folders()

    try:
        splits_file.parent.mkdir(parents=True, exist_ok=True)
        f = open(splits_file, "x")  # "x": a file created meanwhile is an error, not overwritten
    except BaseException:
        remove_folders()
        raise
    try:
        with f:
            f.write(json.dumps(splits, indent=1))
    except BaseException:
        remove()
        raise
    return remove

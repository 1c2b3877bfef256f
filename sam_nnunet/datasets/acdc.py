"""ACDC (official release layout) -> nnU-Net raw dataset, with patient-grouped 5-fold splits.

Input: ``ACDC/training/patientXXX/patientXXX_frameYY.nii.gz`` + ``..._gt.nii.gz`` (and ``testing/``,
which may be empty). Output: ``$nnUNet_raw/DatasetNNN_ACDC`` with imagesTr/labelsTr (and imagesTs,
plus labelsTs for patients held out with ``holdout``) and ``dataset.json``; and
``$nnUNet_preprocessed/DatasetNNN_ACDC/splits_final.json``, five folds with both frames of a patient
in the same fold.

Reuses nnU-Net's ``create_ACDC_split`` and ``generate_dataset_json``. Not its
``convert_acdc``/``make_out_dirs``: in nnunetv2 2.8.1 they call ``.replace`` on the ``nnUNet_raw``
path object and crash. The dataset is assembled in a temporary folder next to the target and
renamed into place at the end, so an interrupted conversion never leaves a dataset that looks
complete; an existing dataset is never overwritten.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Dict, List, Optional

import nibabel as nib
import numpy as np
from nnunetv2.dataset_conversion.Dataset027_ACDC import create_ACDC_split
from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json

LABELS = {"background": 0, "RV": 1, "MLV": 2, "LVC": 3}
FRAME = re.compile(r"^(patient\d{3})_frame(\d{2})\.nii\.gz$")


class DatasetLayoutError(ValueError):
    """The source folder is not in the layout the converter expects."""


def env_folder(name: str) -> Path:
    value = os.environ.get(name)
    if not value:
        raise DatasetLayoutError(f"{name} is not set: export {name}=/path/to/folder (see nnU-Net's "
                                 f"documentation/setting_up_paths.md) or pass the folder explicitly.")
    return Path(value)


def find_acdc_cases(source: Path, split: str = "training", need_labels: bool = True) -> Dict[str, List[Path]]:
    """patient id -> sorted frame image paths, after checking every image has its label."""
    folder = source / split
    if not folder.is_dir():
        raise DatasetLayoutError(f"{folder} does not exist: expected the official ACDC layout "
                                 f"<ACDC>/{split}/patientXXX/patientXXX_frameYY.nii.gz")
    cases: Dict[str, List[Path]] = {}
    for patient in sorted(p for p in folder.iterdir() if p.is_dir()):
        frames = sorted(f for f in patient.iterdir() if FRAME.match(f.name) and f.name.startswith(patient.name))
        if need_labels:
            for f in frames:
                gt = f.with_name(f.name.replace(".nii.gz", "_gt.nii.gz"))
                if not gt.is_file():
                    raise DatasetLayoutError(f"image {f} has no label file {gt.name}")
        if frames:
            cases[patient.name] = frames
    if need_labels and not cases:
        raise DatasetLayoutError(f"no patientXXX/patientXXX_frameYY.nii.gz images found under {folder}")
    return cases


def _check_pair(image: Path, label: Path) -> None:
    try:
        img, seg = nib.load(str(image)), nib.load(str(label))
        values = np.unique(np.asarray(seg.dataobj))
    except Exception as e:
        raise DatasetLayoutError(f"cannot read {image} / {label} as NIfTI: {e}") from e
    if img.shape[:3] != seg.shape[:3]:
        raise DatasetLayoutError(f"{image.name} has shape {img.shape} but {label.name} has {seg.shape}")
    bad = sorted(set(values.tolist()) - set(LABELS.values()))
    if bad:
        raise DatasetLayoutError(f"{label} holds label values {bad}; ACDC labels are {sorted(LABELS.values())}")


def convert_acdc(source: str | os.PathLike, dataset_id: int = 27, *, max_patients: Optional[int] = None,
                 holdout: int = 0, raw_root: Optional[str | os.PathLike] = None,
                 preprocessed_root: Optional[str | os.PathLike] = None, verbose: bool = True) -> Path:
    """Convert ACDC to ``<raw_root>/Dataset{id:03d}_ACDC``; returns that folder.

    Args:
        source: the ACDC folder holding ``training/`` (and optionally ``testing/``).
        max_patients: use only the first N training patients (small demos and tests).
        holdout: the last N of those patients go to imagesTs/labelsTs instead of training.
        raw_root / preprocessed_root: default ``$nnUNet_raw`` / ``$nnUNet_preprocessed``.
    """
    source = Path(source)
    raw_root = Path(raw_root) if raw_root else env_folder("nnUNet_raw")
    preprocessed_root = Path(preprocessed_root) if preprocessed_root else env_folder("nnUNet_preprocessed")
    name = f"Dataset{dataset_id:03d}_ACDC"
    target = raw_root / name
    if target.exists():
        raise FileExistsError(f"{target} already exists; not overwriting it. Remove it or choose another -d.")

    patients = find_acdc_cases(source)
    ids = list(patients)[:max_patients] if max_patients else list(patients)
    if holdout < 0 or len(ids) - holdout < 5:
        raise DatasetLayoutError(f"need at least 5 training patients for 5 folds; have {len(ids)} with "
                                 f"{holdout} held out")
    train_ids, test_ids = ids[: len(ids) - holdout], ids[len(ids) - holdout:]
    test_only = find_acdc_cases(source, "testing", need_labels=False) if (source / "testing").is_dir() else {}

    raw_root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.partial-", dir=raw_root))
    try:
        for sub in ("imagesTr", "labelsTr", "imagesTs") + (("labelsTs",) if test_ids else ()):
            (tmp / sub).mkdir()
        n_train = 0
        for pid in ids:
            images, labels = ("imagesTr", "labelsTr") if pid in train_ids else ("imagesTs", "labelsTs")
            for frame in patients[pid]:
                gt = frame.with_name(frame.name.replace(".nii.gz", "_gt.nii.gz"))
                _check_pair(frame, gt)
                case = frame.name[: -len(".nii.gz")]
                shutil.copyfile(frame, tmp / images / f"{case}_0000.nii.gz")
                shutil.copyfile(gt, tmp / labels / f"{case}.nii.gz")
                n_train += images == "imagesTr"
        for frames in test_only.values():
            for frame in frames:
                shutil.copyfile(frame, tmp / "imagesTs" / frame.name.replace(".nii.gz", "_0000.nii.gz"))
        generate_dataset_json(str(tmp), channel_names={0: "cineMRI"}, labels=LABELS, file_ending=".nii.gz",
                              num_training_cases=n_train, dataset_name=name,
                              reference="Bernard et al., IEEE TMI 37(11), 2018 (ACDC)",
                              description=f"ACDC cine MRI, {len(train_ids)} training patients, "
                                          f"{len(test_ids)} held out in imagesTs/labelsTs")
        splits = create_ACDC_split(str(tmp / "labelsTr"))
        splits = [{"train": sorted(s["train"]), "val": sorted(s["val"])} for s in splits]
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise

    splits_file = preprocessed_root / name / "splits_final.json"
    if splits_file.exists() and json.loads(splits_file.read_text()) != splits:
        raise FileExistsError(f"{splits_file} exists with other splits; not overwriting it. Remove it to use the "
                              f"patient-grouped splits of this conversion.")
    splits_file.parent.mkdir(parents=True, exist_ok=True)
    splits_file.write_text(json.dumps(splits, indent=1))
    if verbose:
        print(f"ACDC -> {target}: {n_train} training volumes ({len(train_ids)} patients), "
              f"{2 * len(test_ids) if test_ids else 0} held-out volumes; patient-grouped splits in {splits_file}")
    return target

"""ACDC (official release layout) -> nnU-Net raw dataset, with patient-grouped 5-fold splits.

Input: ``ACDC/training/patientXXX/patientXXX_frameYY.nii.gz`` + ``..._gt.nii.gz`` (and ``testing/``,
which may be empty). Output: ``$nnUNet_raw/DatasetNNN_ACDC`` with imagesTr/labelsTr (and imagesTs,
plus labelsTs for patients held out with ``holdout``) and ``dataset.json``; and
``$nnUNet_preprocessed/DatasetNNN_ACDC/splits_final.json``, five folds with both frames of a patient
in the same fold.

The folds are those of nnU-Net's ``create_ACDC_split`` (see :func:`patient_grouped_splits`); the dataset.json
comes from its ``generate_dataset_json``. Not its ``convert_acdc``/``make_out_dirs``: in nnunetv2 2.8.1 they
call ``.replace`` on the ``nnUNet_raw`` path object and crash. Every image and label is read in full and each
pair's geometry checked before it is copied (:mod:`sam_nnunet.datasets.volumes`). The splits are computed
from the case names before anything is written, and dataset and splits are published together
(:func:`sam_nnunet.datasets.common.assembling`): a conflicting ``splits_final.json`` stops the conversion
before it starts, and a failed or interrupted conversion leaves neither a dataset nor a new splits file, never
a raw dataset without its patient-grouped splits (nnU-Net would then split by volume, putting the two frames
of one patient on both sides of a fold). An existing dataset is never overwritten.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from sam_nnunet.datasets.common import (DatasetLayoutError, Splits, assembling, new_dataset_folder, splits_path,
                                        write_dataset_json)
from sam_nnunet.datasets.volumes import copy_image, copy_pair

LABELS = {"background": 0, "RV": 1, "MLV": 2, "LVC": 3}
FRAME = re.compile(r"^(patient\d{3})_frame(\d{2})\.nii\.gz$")
SPLIT_SEED = 1234  # create_ACDC_split's default


def patient_grouped_splits(case_ids: List[str], seed: int = SPLIT_SEED) -> Splits:
    """Five folds with every frame of a patient in the same fold: nnU-Net's ``create_ACDC_split``.

    That function (``nnunetv2/dataset_conversion/Dataset027_ACDC.py``) lists a labelsTr folder; this does the
    same from the case ids (``patientXXX_frameYY``), so the splits are known before anything is written: the
    patients are shuffled with ``RandomState(seed)`` and fold k validates on every fifth of them from k on.
    ``tests/datasets/test_acdc.py`` checks the result equals ``create_ACDC_split`` on the converted labelsTr.
    """
    cases = sorted(case_ids)
    patient = {c: c[: len("patient000")] for c in cases}
    patients = np.unique(list(patient.values()))
    np.random.RandomState(seed).shuffle(patients)
    splits = []
    for fold in range(5):
        val_patients = set(patients[fold::5])
        splits.append({"train": [c for c in cases if patient[c] not in val_patients],
                       "val": [c for c in cases if patient[c] in val_patients]})
    return splits


def case_name(frame: Path) -> str:
    """``patientXXX_frameYY`` for ``.../patientXXX_frameYY.nii.gz``."""
    return frame.name[: -len(".nii.gz")]


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
    target = new_dataset_folder(raw_root, dataset_id, "ACDC")
    name = target.name
    splits_file = splits_path(preprocessed_root, name)  # resolved first: a missing $nnUNet_preprocessed stops here

    patients = find_acdc_cases(source)
    ids = list(patients)[:max_patients] if max_patients else list(patients)
    if holdout < 0 or len(ids) - holdout < 5:
        raise DatasetLayoutError(f"need at least 5 training patients for 5 folds; have {len(ids)} with "
                                 f"{holdout} held out")
    train_ids, test_ids = ids[: len(ids) - holdout], ids[len(ids) - holdout:]
    test_only = find_acdc_cases(source, "testing", need_labels=False) if (source / "testing").is_dir() else {}
    splits = patient_grouped_splits([case_name(f) for pid in train_ids for f in patients[pid]])

    with assembling(target, splits=splits, preprocessed_root=preprocessed_root) as tmp:
        for sub in ("imagesTr", "labelsTr", "imagesTs") + (("labelsTs",) if test_ids else ()):
            (tmp / sub).mkdir()
        n_train = 0
        for pid in ids:
            images, labels = ("imagesTr", "labelsTr") if pid in train_ids else ("imagesTs", "labelsTs")
            for frame in patients[pid]:
                gt = frame.with_name(frame.name.replace(".nii.gz", "_gt.nii.gz"))
                copy_pair(frame, gt, tmp / images / f"{case_name(frame)}_0000.nii.gz",
                          tmp / labels / f"{case_name(frame)}.nii.gz", allowed=LABELS.values(), dataset="ACDC")
                n_train += images == "imagesTr"
        for frames in test_only.values():
            for frame in frames:
                copy_image(frame, tmp / "imagesTs" / f"{case_name(frame)}_0000.nii.gz")
        write_dataset_json(tmp, channel_names={0: "cineMRI"}, labels=LABELS, file_ending=".nii.gz", dataset_name=name,
                           reference="Bernard et al., IEEE TMI 37(11), 2018 (ACDC)",
                           licence="research use (ACDC terms)",
                           description=f"ACDC cine MRI, {len(train_ids)} training patients, "
                                       f"{len(test_ids)} held out in imagesTs/labelsTs")

    if verbose:
        print(f"ACDC -> {target}: {n_train} training volumes ({len(train_ids)} patients), "
              f"{2 * len(test_ids) if test_ids else 0} held-out volumes; patient-grouped splits in {splits_file}")
    return target

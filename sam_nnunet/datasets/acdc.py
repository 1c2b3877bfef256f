"""ACDC (official release layout) -> nnU-Net raw dataset, with patient-grouped 5-fold splits.

Input: ``ACDC/training/patientXXX/patientXXX_frameYY.nii.gz`` + ``..._gt.nii.gz`` (and ``testing/``,
which may be empty). Output: ``$nnUNet_raw/DatasetNNN_ACDC`` with imagesTr/labelsTr (and imagesTs,
plus labelsTs for patients held out with ``holdout``) and ``dataset.json``; and
``$nnUNet_preprocessed/DatasetNNN_ACDC/splits_final.json``, five folds with both frames of a patient
in the same fold.

Reuses nnU-Net's ``create_ACDC_split`` and ``generate_dataset_json``. Not its
``convert_acdc``/``make_out_dirs``: in nnunetv2 2.8.1 they call ``.replace`` on the ``nnUNet_raw``
path object and crash. The dataset is assembled in a temporary folder next to the target and
renamed into place at the end (:mod:`sam_nnunet.datasets.common`), so an interrupted conversion never
leaves a dataset that looks complete; an existing dataset is never overwritten.
"""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Dict, List, Optional

from nnunetv2.dataset_conversion.Dataset027_ACDC import create_ACDC_split

from sam_nnunet.datasets.common import (DatasetLayoutError, assembling, env_folder, new_dataset_folder,
                                        write_dataset_json, write_splits)
from sam_nnunet.datasets.volumes import read_label_pair

LABELS = {"background": 0, "RV": 1, "MLV": 2, "LVC": 3}
FRAME = re.compile(r"^(patient\d{3})_frame(\d{2})\.nii\.gz$")


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
    preprocessed_root = Path(preprocessed_root) if preprocessed_root else env_folder("nnUNet_preprocessed")
    target = new_dataset_folder(raw_root, dataset_id, "ACDC")
    name = target.name

    patients = find_acdc_cases(source)
    ids = list(patients)[:max_patients] if max_patients else list(patients)
    if holdout < 0 or len(ids) - holdout < 5:
        raise DatasetLayoutError(f"need at least 5 training patients for 5 folds; have {len(ids)} with "
                                 f"{holdout} held out")
    train_ids, test_ids = ids[: len(ids) - holdout], ids[len(ids) - holdout:]
    test_only = find_acdc_cases(source, "testing", need_labels=False) if (source / "testing").is_dir() else {}

    with assembling(target) as tmp:
        for sub in ("imagesTr", "labelsTr", "imagesTs") + (("labelsTs",) if test_ids else ()):
            (tmp / sub).mkdir()
        n_train = 0
        for pid in ids:
            images, labels = ("imagesTr", "labelsTr") if pid in train_ids else ("imagesTs", "labelsTs")
            for frame in patients[pid]:
                gt = frame.with_name(frame.name.replace(".nii.gz", "_gt.nii.gz"))
                read_label_pair(frame, gt, LABELS.values(), "ACDC")
                case = frame.name[: -len(".nii.gz")]
                shutil.copyfile(frame, tmp / images / f"{case}_0000.nii.gz")
                shutil.copyfile(gt, tmp / labels / f"{case}.nii.gz")
                n_train += images == "imagesTr"
        for frames in test_only.values():
            for frame in frames:
                shutil.copyfile(frame, tmp / "imagesTs" / frame.name.replace(".nii.gz", "_0000.nii.gz"))
        write_dataset_json(tmp, channel_names={0: "cineMRI"}, labels=LABELS, file_ending=".nii.gz", dataset_name=name,
                           reference="Bernard et al., IEEE TMI 37(11), 2018 (ACDC)",
                           licence="research use (ACDC terms)",
                           description=f"ACDC cine MRI, {len(train_ids)} training patients, "
                                       f"{len(test_ids)} held out in imagesTs/labelsTs")
        splits = create_ACDC_split(str(tmp / "labelsTr"))
        splits = [{"train": sorted(s["train"]), "val": sorted(s["val"])} for s in splits]

    splits_file = write_splits(preprocessed_root, name, splits)
    if verbose:
        print(f"ACDC -> {target}: {n_train} training volumes ({len(train_ids)} patients), "
              f"{2 * len(test_ids) if test_ids else 0} held-out volumes; patient-grouped splits in {splits_file}")
    return target

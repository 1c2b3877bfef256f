"""Synapse multi-organ CT (BTCV, MICCAI 2015 "Beyond the Cranial Vault") -> nnU-Net raw dataset, 8 organs.

Input: the official release, ``<Abdomen>/RawData/Training/img/img0001.nii.gz`` and
``.../RawData/Training/label/label0001.nii.gz`` (30 labelled CTs, numbered 0001-0010 and 0021-0040; ``RawData/
Testing`` has no labels and is not used). The source labels are the 13 BTCV organs: 1 spleen, 2 right
kidney, 3 left kidney, 4 gallbladder, 5 esophagus, 6 liver, 7 stomach, 8 aorta, 9 inferior vena cava,
10 portal and splenic vein, 11 pancreas, 12 right adrenal gland, 13 left adrenal gland.

Output: ``DatasetNNN_Synapse8`` with the 8-organ protocol of TransUNet, SAMed and Self-Prompt-SAM:
1 spleen, 2 right kidney, 3 left kidney, 4 gallbladder, 5 liver, 6 stomach, 7 aorta, 8 pancreas; esophagus,
vena cava, portal/splenic vein and the adrenal glands become background. Numbering and mapping are those of
SAMed's ``preprocess/preprocess_data.py`` (``hashmap``) and its ``preprocess/README.md``.

Split: TransUNet's, fixed, not cross-validated: the 12 cases in TransUNet's ``lists/lists_Synapse/test_vol.txt``
go to imagesTs/labelsTs and the 18 cases of ``lists/lists_Synapse/train.txt`` (its slices' case numbers) to
imagesTr/labelsTr; checked against github.com/Beckschen/TransUNet and SAMed's ``test_data`` list. nnU-Net then
makes its own 5 folds over the 18 training cases, as the published protocol has no validation split.

Unlike TransUNet/SAMed preprocessing, intensities are not clipped or rescaled (nnU-Net's CT normalisation
does that from the training data) and images are copied unchanged, after the checks of
:mod:`sam_nnunet.datasets.volumes` (every file reads in full, each label lies on its image's voxel grid). A copy
with only some of the 30 cases converts those it has (a summary says how many of each split); a case number
outside the 30 is an error.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Dict, Optional

import numpy as np

from sam_nnunet.datasets.common import (DatasetLayoutError, PathLike, assembling, first, new_dataset_folder,
                                        require_folder, write_dataset_json)
from sam_nnunet.datasets.volumes import copy_pair

DEFAULT_ID = 301
NAME = "Synapse8"
BTCV_ORGANS = ("spleen", "right kidney", "left kidney", "gallbladder", "esophagus", "liver", "stomach", "aorta",
               "inferior vena cava", "portal and splenic vein", "pancreas", "right adrenal gland",
               "left adrenal gland")
KEPT_ORGANS = ("spleen", "right kidney", "left kidney", "gallbladder", "liver", "stomach", "aorta", "pancreas")
LABELS = {"background": 0, **{organ: i + 1 for i, organ in enumerate(KEPT_ORGANS)}}
# source value -> new value: kept organs are renumbered 1..8 in BTCV order, all others become background
LOOKUP = np.zeros(len(BTCV_ORGANS) + 1, dtype=np.uint8)
for _value, _organ in enumerate(BTCV_ORGANS, start=1):
    LOOKUP[_value] = LABELS.get(_organ, 0)

TEST_CASES = (1, 2, 3, 4, 8, 22, 25, 29, 32, 35, 36, 38)
TRAIN_CASES = (5, 6, 7, 9, 10, 21, 23, 24, 26, 27, 28, 30, 31, 33, 34, 37, 39, 40)
IMAGE = re.compile(r"^img(\d{4})\.nii\.gz$")
LAYOUT = "the official Synapse layout <input>/RawData/Training/img/img0001.nii.gz + .../label/label0001.nii.gz"


def find_synapse_cases(source: Path) -> Dict[int, Path]:
    """case number -> image path, after checking that every image has its label and every number is known."""
    training = source / "RawData" / "Training"
    img_dir = require_folder(training / "img", LAYOUT)
    label_dir = require_folder(training / "label", LAYOUT)
    cases: Dict[int, Path] = {}
    for image in sorted(img_dir.iterdir()):
        match = IMAGE.match(image.name)
        if not match:
            continue
        number = int(match.group(1))
        if number not in TEST_CASES + TRAIN_CASES:
            raise DatasetLayoutError(f"{image} is not one of the 30 labelled Synapse training cases "
                                     f"(0001-0010, 0021-0040); remove it or point -i at the official release")
        if not (label_dir / f"label{number:04d}.nii.gz").is_file():
            raise DatasetLayoutError(f"image {image} has no label file {label_dir / f'label{number:04d}.nii.gz'}")
        cases[number] = image
    if not cases:
        raise DatasetLayoutError(f"no imgXXXX.nii.gz images found in {img_dir}: expected {LAYOUT}")
    return cases


def convert_synapse(input_folder: PathLike, dataset_id: int = DEFAULT_ID, *, max_cases: Optional[int] = None,
                    raw_root: Optional[PathLike] = None, verbose: bool = True) -> Path:
    """Convert Synapse/BTCV to ``<raw_root>/Dataset{id:03d}_Synapse8`` (8 organs, TransUNet split).

    Args:
        input_folder: the folder holding ``RawData/Training/img`` and ``RawData/Training/label``.
        max_cases: use only the first N training and the first N test cases (quick runs).
        raw_root: default ``$nnUNet_raw``.
    Returns the created dataset folder.
    """
    source = Path(input_folder)
    target = new_dataset_folder(raw_root, dataset_id, NAME)
    cases = find_synapse_cases(source)
    train = first([n for n in TRAIN_CASES if n in cases], max_cases)
    test = first([n for n in TEST_CASES if n in cases], max_cases)
    label_dir = source / "RawData" / "Training" / "label"
    with assembling(target) as tmp:
        for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
            (tmp / sub).mkdir()
        for numbers, images, labels in ((train, "imagesTr", "labelsTr"), (test, "imagesTs", "labelsTs")):
            for n in numbers:
                copy_pair(cases[n], label_dir / f"label{n:04d}.nii.gz", tmp / images / f"case{n:04d}_0000.nii.gz",
                          tmp / labels / f"case{n:04d}.nii.gz", allowed=range(len(LOOKUP)), dataset="Synapse (BTCV)",
                          lookup=LOOKUP)
        write_dataset_json(tmp, channel_names={0: "CT"}, labels=LABELS, file_ending=".nii.gz",
                           dataset_name=target.name,
                           reference="Landman et al., MICCAI 2015 Multi-Atlas Labeling Beyond the Cranial Vault "
                                     "(https://www.synapse.org/#!Synapse:syn3193805)",
                           licence="see the Synapse BTCV data use terms",
                           description=f"Synapse/BTCV abdominal CT, 8 organs (TransUNet/SAMed protocol); TransUNet "
                                       f"split: {len(train)} of 18 training cases in imagesTr, {len(test)} of 12 "
                                       f"test cases in imagesTs/labelsTs")
    if verbose:
        print(f"Synapse -> {target}: {len(train)} of 18 training cases, {len(test)} of 12 test cases (TransUNet split)")
    return target

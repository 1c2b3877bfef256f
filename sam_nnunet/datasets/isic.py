"""ISIC 2017 / ISIC 2018 lesion segmentation (dermoscopy, 2D RGB) -> nnU-Net 2D dataset with the official split.

Input: the challenge's folders side by side in one folder (as unzipped from challenge.isic-archive.com):

    ISIC 2018 (Task 1)                                      ISIC 2017 (Part 1)
    ISIC2018_Task1-2_Training_Input/ISIC_0000000.jpg        ISIC-2017_Training_Data/ISIC_0000000.jpg
    ISIC2018_Task1_Training_GroundTruth/                    ISIC-2017_Training_Part1_GroundTruth/
        ISIC_0000000_segmentation.png                           ISIC_0000000_segmentation.png
    ISIC2018_Task1-2_Validation_Input/ (optional)           ISIC-2017_Validation_Data/ (optional)
    ISIC2018_Task1_Validation_GroundTruth/                  ISIC-2017_Validation_Part1_GroundTruth/
    ISIC2018_Task1-2_Test_Input/ (optional)                 ISIC-2017_Test_v2_Data/ (optional)
    ISIC2018_Task1_Test_GroundTruth/ (optional)             ISIC-2017_Test_v2_Part1_GroundTruth/ (optional)

Only ``ISIC_<7 digits>.jpg`` images and ``ISIC_<7 digits>_segmentation.png`` masks are read; the licence and
attribution files and ISIC 2017's ``*_superpixels.png`` are ignored. The year is read from the folder names
(pass ``year`` when a folder holds both). Masks are made binary with the rules of
:mod:`sam_nnunet.datasets.natural2d`.

Output: ``DatasetNNN_ISIC2017`` / ``DatasetNNN_ISIC2018`` (default ids 317 / 318), labels 0 background /
1 lesion. The official split is kept: training and validation images both go to imagesTr/labelsTr, and when
the validation folder is there ``splits_final.json`` holds that split as nnU-Net's single fold 0 (train =
official training, val = official validation; train with fold 0). Test images go to imagesTs, with labelsTs
when the test ground truth is there. Without a validation folder nnU-Net makes its own 5 folds.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from sam_nnunet.datasets.common import DatasetLayoutError, PathLike, first
from sam_nnunet.datasets.natural2d import Case, convert_pairs, files_by_key, match_masks

# year -> subset -> (image folder, mask folder)
FOLDERS: Dict[int, Dict[str, Tuple[str, str]]] = {
    2017: {"training": ("ISIC-2017_Training_Data", "ISIC-2017_Training_Part1_GroundTruth"),
           "validation": ("ISIC-2017_Validation_Data", "ISIC-2017_Validation_Part1_GroundTruth"),
           "test": ("ISIC-2017_Test_v2_Data", "ISIC-2017_Test_v2_Part1_GroundTruth")},
    2018: {"training": ("ISIC2018_Task1-2_Training_Input", "ISIC2018_Task1_Training_GroundTruth"),
           "validation": ("ISIC2018_Task1-2_Validation_Input", "ISIC2018_Task1_Validation_GroundTruth"),
           "test": ("ISIC2018_Task1-2_Test_Input", "ISIC2018_Task1_Test_GroundTruth")},
}
DEFAULT_IDS = {2017: 317, 2018: 318}
IMAGE = re.compile(r"^(ISIC_\d{7})\.jpg$")
MASK = re.compile(r"^(ISIC_\d{7})_segmentation\.png$")
REFERENCES = {2017: "Codella et al., Skin Lesion Analysis Toward Melanoma Detection (ISIC 2017), ISBI 2018",
              2018: "Codella et al., arXiv:1902.03368 and Tschandl et al., Sci. Data 5, 2018 (ISIC 2018 / HAM10000)"}


def detect_year(source: Path) -> int:
    found = [y for y, subsets in FOLDERS.items() if (source / subsets["training"][0]).is_dir()]
    if len(found) == 1:
        return found[0]
    if not found:
        raise DatasetLayoutError(f"{source} holds neither {FOLDERS[2018]['training'][0]}/ (ISIC 2018) nor "
                                 f"{FOLDERS[2017]['training'][0]}/ (ISIC 2017): expected the ISIC challenge folders "
                                 f"side by side in it")
    raise DatasetLayoutError(f"{source} holds both ISIC 2017 and ISIC 2018 folders; choose one with year=2017|2018")


def find_subset(source: Path, year: int, subset: str, *, masks_required: bool) -> List[Case]:
    """The cases of one official subset ([] when its image folder is absent)."""
    image_folder, mask_folder = (source / f for f in FOLDERS[year][subset])
    layout = f"ISIC {year} {subset} images in {image_folder.name}/ and masks in {mask_folder.name}/"
    if subset != "training" and not image_folder.is_dir():
        return []
    images = files_by_key(image_folder, IMAGE, layout + " (ISIC_0000000.jpg)")
    if not images:
        raise DatasetLayoutError(f"no ISIC_XXXXXXX.jpg images in {image_folder}")
    if not masks_required and not mask_folder.is_dir():
        return [Case(key, image, None) for key, image in images.items()]
    masks = files_by_key(mask_folder, MASK, layout + " (ISIC_0000000_segmentation.png)")
    return match_masks(images, masks, case_id=lambda key: key,
                       expected_mask=lambda key: str(mask_folder / f"{key}_segmentation.png"))


def convert_isic(input_folder: PathLike, dataset_id: Optional[int] = None, *, year: Optional[int] = None,
                 max_cases: Optional[int] = None, raw_root: Optional[PathLike] = None,
                 preprocessed_root: Optional[PathLike] = None, verbose: bool = True) -> Path:
    """Convert ISIC 2017 or 2018 (Task 1) to ``<raw_root>/Dataset{id:03d}_ISIC{year}``; returns that folder.

    Args:
        input_folder: the folder holding the challenge's image and ground-truth folders.
        dataset_id: default 317 (2017) or 318 (2018).
        year: 2017 or 2018; default: read from the folder names.
        max_cases: use only the first N images of each official subset (training, validation, test).
        raw_root / preprocessed_root: default ``$nnUNet_raw`` / ``$nnUNet_preprocessed`` (splits_final.json).
    """
    source = Path(input_folder)
    if year is None:
        year = detect_year(source)
    elif year not in FOLDERS:
        raise ValueError(f"year must be 2017 or 2018, got {year}")
    train = first(find_subset(source, year, "training", masks_required=True), max_cases)
    val = first(find_subset(source, year, "validation", masks_required=True), max_cases)
    test = first(find_subset(source, year, "test", masks_required=False), max_cases)
    ids = [c.case_id for c in train + val + test]
    if len(set(ids)) != len(ids):
        twice = sorted({i for i in ids if ids.count(i) > 1})
        raise DatasetLayoutError(f"{twice[0]} appears in more than one ISIC {year} subset; each image belongs to one")
    splits = [{"train": [c.case_id for c in train], "val": [c.case_id for c in val]}] if val else None
    n_test_labels = sum(c.mask is not None for c in test)
    folds = "official split as fold 0" if val else "nnU-Net's 5 folds"
    target = convert_pairs(name=f"ISIC{year}", dataset_id=dataset_id or DEFAULT_IDS[year], train=train + val,
                           test=test, foreground="lesion", modality="dermoscopy", reference=REFERENCES[year],
                           licence="see the LICENSE and ATTRIBUTION files of the ISIC release",
                           description=f"ISIC {year} lesion segmentation: {len(train)} training + {len(val)} "
                                       f"validation images in imagesTr ({folds}),"
                                       f" {len(test)} test images in imagesTs ({n_test_labels} with labelsTs)",
                           splits=splits, raw_root=raw_root, preprocessed_root=preprocessed_root)
    if verbose:
        print(f"ISIC {year} -> {target}: {len(train)} training + {len(val)} validation images, {len(test)} test images"
              + (" (official split written as fold 0 of splits_final.json)" if splits else ""))
    return target

"""CVC-ClinicDB (colonoscopy polyps, 612 frames, 2D RGB) -> nnU-Net 2D dataset.

Input: ``<CVC-ClinicDB>/Original/<n>.tif`` + ``<CVC-ClinicDB>/Ground Truth/<n>.tif`` (the original TIFF
release) or the same with ``.png`` (the PNG release); ``<n>`` is the frame number 1-612 and an image's mask
has the same number. Copies that ship both releases side by side (``PNG/`` and ``TIF/``) must be pointed at
one of them. Masks are made binary with the rules of :mod:`sam_nnunet.datasets.natural2d`.

Output: ``DatasetNNN_CVCClinicDB`` (default id 312), cases ``cvc_0001`` ... in imagesTr/labelsTr, labels
0 background / 1 polyp. The release has no official split, so no ``splits_final.json`` is written and nnU-Net
makes its own 5 folds. Beware: the frames come from 31 colonoscopy sequences and neighbouring frames are near
duplicates, so random folds put frames of one polyp on both sides; the release does not say which frame
belongs to which sequence, so that grouping is not attempted here.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Dict, Optional

from sam_nnunet.datasets.common import PathLike, first
from sam_nnunet.datasets.natural2d import convert_pairs, files_by_key, match_masks

DEFAULT_ID = 312
NAME = "CVCClinicDB"
FRAME = re.compile(r"^(\d+)\.(?:png|tiff?)$", re.IGNORECASE)
LAYOUT = ("the CVC-ClinicDB layout <CVC-ClinicDB>/Original/<n>.tif|.png + <CVC-ClinicDB>/Ground Truth/<n>.tif|.png "
          "(if your copy has PNG/ and TIF/ subfolders, pass one of them)")


def _by_frame_number(files: Dict[str, Path]) -> Dict[str, Path]:
    return dict(sorted(files.items(), key=lambda item: int(item[0])))


def convert_cvc(input_folder: PathLike, dataset_id: int = DEFAULT_ID, *, max_cases: Optional[int] = None,
                raw_root: Optional[PathLike] = None, verbose: bool = True) -> Path:
    """Convert CVC-ClinicDB to ``<raw_root>/Dataset{id:03d}_CVCClinicDB``; returns that folder.

    Args:
        input_folder: the folder holding ``Original/`` and ``Ground Truth/``.
        max_cases: use only the first N frames (by frame number).
        raw_root: default ``$nnUNet_raw``.
    """
    source = Path(input_folder)
    images = _by_frame_number(files_by_key(source / "Original", FRAME, LAYOUT))
    masks = _by_frame_number(files_by_key(source / "Ground Truth", FRAME, LAYOUT))
    cases = match_masks(images, masks, case_id=lambda key: f"cvc_{int(key):04d}",
                        expected_mask=lambda key: f"{source / 'Ground Truth' / key}.tif or .png")
    cases = first(cases, max_cases)
    target = convert_pairs(name=NAME, dataset_id=dataset_id, train=cases, test=[], foreground="polyp", modality="endoscopy",
                           reference="Bernal et al., WM-DOVA maps for accurate polyp highlighting in colonoscopy, "
                                     "CMIG 43, 2015 (CVC-ClinicDB)",
                           licence="research use (CVC-ClinicDB terms)",
                           description=f"CVC-ClinicDB polyps, {len(cases)} frames; no official split (nnU-Net "
                                       f"5-fold cross-validation; frames of one sequence can fall in different "
                                       f"folds)", raw_root=raw_root)
    if verbose:
        print(f"CVC-ClinicDB -> {target}: {len(cases)} training frames")
    return target

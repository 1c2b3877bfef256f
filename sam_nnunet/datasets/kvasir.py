"""Kvasir-SEG (colonoscopy polyps, 2D RGB) -> nnU-Net 2D dataset.

Input: the official release, ``Kvasir-SEG/images/<id>.jpg`` and ``Kvasir-SEG/masks/<id>.jpg`` with the same
file names (other files, such as ``kavsir_bboxes.json``, are ignored). Masks are JPEG, so they are thresholded
(> 127 is polyp) with the rules of :mod:`sam_nnunet.datasets.natural2d`.

Output: ``DatasetNNN_KvasirSEG`` (default id 311), labels 0 background / 1 polyp, every case in
imagesTr/labelsTr under its original file name. Kvasir-SEG has no official split (the 900/100 split of
PraNet-style polyp benchmarks comes from a separate list, not the release), so no ``splits_final.json`` is
written and nnU-Net makes its own 5 folds.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

from sam_nnunet.datasets.common import PathLike, first
from sam_nnunet.datasets.natural2d import convert_pairs, files_by_key, match_masks

DEFAULT_ID = 311
NAME = "KvasirSEG"
JPEG = re.compile(r"^(.+)\.jpe?g$", re.IGNORECASE)
LAYOUT = "the Kvasir-SEG layout <Kvasir-SEG>/images/<id>.jpg + <Kvasir-SEG>/masks/<id>.jpg"


def convert_kvasir(input_folder: PathLike, dataset_id: int = DEFAULT_ID, *, max_cases: Optional[int] = None,
                   raw_root: Optional[PathLike] = None, verbose: bool = True) -> Path:
    """Convert Kvasir-SEG to ``<raw_root>/Dataset{id:03d}_KvasirSEG``; returns that folder.

    Args:
        input_folder: the folder holding ``images/`` and ``masks/``.
        max_cases: use only the first N pairs (sorted by file name).
        raw_root: default ``$nnUNet_raw``.
    """
    source = Path(input_folder)
    images = files_by_key(source / "images", JPEG, LAYOUT)
    masks = files_by_key(source / "masks", JPEG, LAYOUT)
    cases = match_masks(images, masks, case_id=lambda key: key,
                        expected_mask=lambda key: str(source / "masks" / images[key].name))
    cases = first(cases, max_cases)
    target = convert_pairs(name=NAME, dataset_id=dataset_id, train=cases, test=[], foreground="polyp", modality="endoscopy",
                           reference="Jha et al., Kvasir-SEG: A Segmented Polyp Dataset, MMM 2020",
                           licence="research and educational use (Kvasir-SEG terms)",
                           description=f"Kvasir-SEG polyps, {len(cases)} images; no official split (nnU-Net "
                                       f"5-fold cross-validation)", raw_root=raw_root)
    if verbose:
        print(f"Kvasir-SEG -> {target}: {len(cases)} training images")
    return target

"""AMOS22 (abdominal multi-organ CT and MRI) -> nnU-Net raw dataset, CT, MRI or both.

Input: the official release (zenodo.org/record/7262581, ``amos22/``): ``dataset.json``,
``imagesTr/amos_XXXX.nii.gz`` + ``labelsTr/``, ``imagesVa/`` + ``labelsVa/`` and ``imagesTs/`` (no labels).
15 organs: 1 spleen, 2 right kidney, 3 left kidney, 4 gallbladder, 5 esophagus, 6 liver, 7 stomach, 8 aorta,
9 postcava (inferior vena cava), 10 pancreas, 11 right adrenal gland, 12 left adrenal gland, 13 duodenum,
14 bladder, 15 prostate/uterus. Label names are taken from the release's ``dataset.json`` ``labels`` dict
(``{"0": "background", "1": "spleen", ...}``) when it is there, verbatim; the list above otherwise.

Modality: the release's readme says case ids below 500 are CT and the others MRI; ``modality`` picks
``"CT"`` (default), ``"MRI"`` or ``"both"``. Note that nnU-Net's own Dataset218 converter counts
``amos_0500`` of imagesTs as CT; with this rule it goes to the MRI (or both) dataset. Each modality is its
own dataset (``DatasetNNN_AMOS22_CT`` / ``_MRI`` / ``_CTMRI``, default ids 302 / 303 / 304); the channel is
named ``CT`` (nnU-Net's CT normalisation), ``MRI``, or ``nonCT`` for the mix (per-image z-score, as nnU-Net's
Dataset223 does), so one normalisation never gets applied to the other modality.

Split: like nnU-Net's Dataset218/223 converters, training and validation cases (both labelled) all go to
imagesTr/labelsTr and nnU-Net's 5-fold cross-validation replaces the single official train/val split;
imagesTs goes to imagesTs. Images and labels are copied unchanged after checking that every image has its
label, every file reads in full (:mod:`sam_nnunet.datasets.volumes`: not truncated, finite), each image and
its label share one voxel grid (shape, spacing, origin, direction), and the labels hold only the known values.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from sam_nnunet.datasets.common import (DatasetLayoutError, PathLike, assembling, first, new_dataset_folder,
                                        require_folder, write_dataset_json)
from sam_nnunet.datasets.volumes import copy_image, copy_pair

ORGANS = ("spleen", "right kidney", "left kidney", "gallbladder", "esophagus", "liver", "stomach", "aorta",
          "postcava", "pancreas", "right adrenal gland", "left adrenal gland", "duodenum", "bladder",
          "prostate/uterus")
MODALITIES = {"CT": ("AMOS22_CT", 302, "CT"), "MRI": ("AMOS22_MRI", 303, "MRI"), "both": ("AMOS22_CTMRI", 304, "nonCT")}
FIRST_MRI_ID = 500
CASE = re.compile(r"^amos_(\d{4})\.nii\.gz$")
LAYOUT = ("the official AMOS22 layout <amos22>/imagesTr/amos_XXXX.nii.gz + labelsTr/ "
          "(and imagesVa/, labelsVa/, imagesTs/)")


def amos_labels(source: Path) -> Dict[str, int]:
    """name -> value, from the release's dataset.json when present; must be 0 background and 1..15."""
    meta = source / "dataset.json"
    if not meta.is_file():
        return {"background": 0, **{organ: i + 1 for i, organ in enumerate(ORGANS)}}
    try:
        labels = json.loads(meta.read_text())["labels"]
        values = {int(k): str(v) for k, v in labels.items()}
    except (ValueError, KeyError, AttributeError, TypeError) as e:
        raise DatasetLayoutError(f"{meta} has no readable \"labels\" dict ({e!r}); expected the official AMOS22 "
                                 f"dataset.json with labels {{\"0\": \"background\", \"1\": \"spleen\", ...}}") from e
    if sorted(values) != list(range(len(ORGANS) + 1)):
        raise DatasetLayoutError(f"{meta} lists label values {sorted(values)}; AMOS22 has 0 (background) and "
                                 f"1-{len(ORGANS)}")
    if len(set(values.values())) != len(values):
        raise DatasetLayoutError(f"{meta} gives two labels the same name: {values}")
    return {values[v]: v for v in sorted(values)}


def release_licence(source: Path) -> str:
    """The licence named in the release's dataset.json ("licence", sic), if any."""
    try:
        return str(json.loads((source / "dataset.json").read_text())["licence"])
    except (OSError, ValueError, KeyError, TypeError):
        return "see the AMOS22 release terms (https://amos22.grand-challenge.org)"


def find_amos_cases(source: Path, images: str, labels: Optional[str]) -> List[Tuple[str, Path, Optional[Path]]]:
    """(case id, image, label or None) for each amos_XXXX image in ``images``; a missing label is an error."""
    folder = source / images
    if not folder.is_dir():
        return []
    cases = []
    for image in sorted(folder.iterdir()):
        if not CASE.match(image.name):
            continue
        label = source / labels / image.name if labels else None
        if label is not None and not label.is_file():
            raise DatasetLayoutError(f"image {image} has no label file {label}")
        cases.append((image.name[: -len(".nii.gz")], image, label))
    return cases


def is_mri(case: str) -> bool:
    return int(case.split("_")[1]) >= FIRST_MRI_ID


def convert_amos(input_folder: PathLike, dataset_id: Optional[int] = None, *, modality: str = "CT",
                 max_cases: Optional[int] = None, raw_root: Optional[PathLike] = None, verbose: bool = True) -> Path:
    """Convert AMOS22 to ``<raw_root>/Dataset{id:03d}_AMOS22_{CT|MRI|CTMRI}``; returns that folder.

    Args:
        input_folder: the ``amos22`` folder holding imagesTr/, labelsTr/ (and imagesVa/, labelsVa/, imagesTs/).
        dataset_id: default 302 (CT), 303 (MRI), 304 (both).
        modality: "CT", "MRI" or "both".
        max_cases: use only the first N labelled (training + validation) and the first N test cases.
        raw_root: default ``$nnUNet_raw``.
    """
    if modality not in MODALITIES:
        raise ValueError(f"modality must be one of {sorted(MODALITIES)}, got {modality!r}")
    name, default_id, channel = MODALITIES[modality]
    source = Path(input_folder)
    target = new_dataset_folder(raw_root, dataset_id or default_id, name)
    require_folder(source / "imagesTr", LAYOUT)
    require_folder(source / "labelsTr", LAYOUT)
    if (source / "imagesVa").is_dir():
        require_folder(source / "labelsVa", LAYOUT + "; imagesVa/ needs labelsVa/")
    labels = amos_labels(source)

    def wanted(case: str) -> bool:
        return modality == "both" or is_mri(case) == (modality == "MRI")

    labelled = find_amos_cases(source, "imagesTr", "labelsTr") + find_amos_cases(source, "imagesVa", "labelsVa")
    labelled = [c for c in labelled if wanted(c[0])]
    test = [c for c in find_amos_cases(source, "imagesTs", None) if wanted(c[0])]
    labelled, test = first(sorted(labelled), max_cases), first(test, max_cases)
    if not labelled:
        ids = {"CT": f"ids < {FIRST_MRI_ID}", "MRI": f"ids >= {FIRST_MRI_ID}", "both": "any id"}[modality]
        raise DatasetLayoutError(f"no labelled {modality} cases (amos_XXXX.nii.gz, {ids}) in {source / 'imagesTr'} "
                                 f"or {source / 'imagesVa'}")
    with assembling(target) as tmp:
        for sub in ("imagesTr", "labelsTr", "imagesTs"):
            (tmp / sub).mkdir()
        for case, image, label in labelled:
            copy_pair(image, label, tmp / "imagesTr" / f"{case}_0000.nii.gz", tmp / "labelsTr" / f"{case}.nii.gz",
                      allowed=labels.values(), dataset="AMOS22")
        for case, image, _ in test:
            copy_image(image, tmp / "imagesTs" / f"{case}_0000.nii.gz")
        write_dataset_json(tmp, channel_names={0: channel}, labels=labels, file_ending=".nii.gz",
                           dataset_name=target.name,
                           reference="Ji et al., AMOS: A Large-Scale Abdominal Multi-Organ Benchmark, NeurIPS 2022 "
                                     "(https://amos22.grand-challenge.org)",
                           licence=release_licence(source),
                           description=f"AMOS22 {modality}: training and validation cases in imagesTr "
                                       f"({len(labelled)}), test images in imagesTs ({len(test)}); ids < "
                                       f"{FIRST_MRI_ID} are CT")
    if verbose:
        print(f"AMOS22 {modality} -> {target}: {len(labelled)} labelled cases (training + validation), "
              f"{len(test)} test images")
    return target

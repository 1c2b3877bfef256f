"""NIfTI image/label pairs for the 3D converters: validate, copy, and remap labels without touching geometry.

Images are copied byte for byte, so their headers (affine, qform/sform, spacing, data type) stay exactly as
released. Labels are read with nibabel and, when remapped, written back with the source label's own header
(only the data type changes, to uint8), so the remapped file has the same affine and voxel grid.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Iterable, Optional, Tuple

import nibabel as nib
import numpy as np

from sam_nnunet.datasets.common import DatasetLayoutError


def read_label_pair(image: Path, label: Path, allowed: Iterable[int],
                    dataset: str) -> Tuple[nib.Nifti1Image, np.ndarray]:
    """Load ``label`` after checking it matches ``image``'s voxel grid and holds only ``allowed`` values.

    Returns the label image and its integer voxel array. Every problem is a DatasetLayoutError naming the file.
    """
    try:
        img, seg = nib.load(str(image)), nib.load(str(label))
        data = np.asanyarray(seg.dataobj)
    except Exception as e:
        raise DatasetLayoutError(f"cannot read {image} / {label} as NIfTI: {e}") from e
    if img.shape[:3] != seg.shape[:3]:
        raise DatasetLayoutError(f"{image.name} has shape {img.shape} but {label.name} has {seg.shape}; "
                                 f"an image and its label must share one voxel grid")
    values = np.unique(data)
    if not np.issubdtype(values.dtype, np.integer) and not np.array_equal(values, np.round(values)):
        raise DatasetLayoutError(f"{label} holds non-integer label values; {dataset} labels are integers")
    allowed = sorted(int(v) for v in allowed)
    bad = sorted(set(int(v) for v in values) - set(allowed))
    if bad:
        raise DatasetLayoutError(f"{label} holds label values {bad}; {dataset} labels are {allowed}")
    return seg, data.astype(np.int64, copy=False)


def copy_pair(image: Path, label: Optional[Path], image_out: Path, label_out: Optional[Path], *,
              allowed: Iterable[int], dataset: str, lookup: Optional[np.ndarray] = None) -> None:
    """Copy one case into the nnU-Net folders; with ``lookup`` the label is remapped as ``lookup[value]``."""
    if label is not None:
        seg, data = read_label_pair(image, label, allowed, dataset)
        if lookup is None:
            shutil.copyfile(label, label_out)
        else:
            out = nib.Nifti1Image(lookup[data].astype(np.uint8), seg.affine, seg.header)
            out.set_data_dtype(np.uint8)
            nib.save(out, str(label_out))
    shutil.copyfile(image, image_out)

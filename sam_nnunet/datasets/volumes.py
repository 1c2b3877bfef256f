"""NIfTI image/label pairs for the 3D converters: read in full, check, copy, remap labels without touching geometry.

Every image and label is read completely before it is copied: the whole gzip stream is decompressed (so its
CRC and length are checked) and the voxel data is read with nibabel, so a truncated or corrupt download is an
error here rather than a volume of zeros later. This matters because SimpleITK, the reader nnU-Net uses for
``.nii.gz``, fills the missing part of a truncated file with zeros and reads a corrupted one as it comes,
without a word (nnunetv2 2.8.1, SimpleITK 2.5), so nnU-Net's own ``check_cases`` passes such files.
Floating-point voxels must be finite (``check_cases`` rejects NaN too; an infinite value breaks nnU-Net's
normalisation just the same).

An image and its label must lie on one voxel grid: same shape, and spacing, origin and direction equal within
the tolerances below, as SimpleITK reads them (the geometry nnU-Net works with, in its LPS convention; the
numbers in the messages are the ones nnU-Net and ITK-based viewers show). nnU-Net's ``check_cases`` compares
the same four with ``np.allclose`` defaults (``|label - image| <= 1e-8 + 1e-5 * |image|``); a spacing mismatch
is an error there, origin and direction only warnings. Here all four are errors, with:

* spacing: nnU-Net's own tolerance. A looser one would pass datasets that ``nnUNetv2_plan_and_preprocess
  --verify_dataset_integrity`` then rejects.
* origin: nnU-Net's relative term plus 1e-3 mm. Its absolute 1e-8 mm would turn float32 rounding of a
  coordinate near 0 into an error; a micrometre is far below any voxel size.
* direction: nnU-Net's relative term plus 1e-4. Direction cosines are written as float32 or rebuilt from the
  qform quaternion (noise about 1e-7) by whatever tool saved the label; a 1e-4 rad tilt moves a point 50 cm
  from the origin by 0.05 mm, well under a voxel, while 1e-3 would allow half a millimetre.

The copies keep the released bytes: images, and labels that need no remapping, are written back exactly as
read (headers stay as released). Remapped labels are written with the source label's own header (only the data
type changes, to uint8), so they keep its affine and voxel grid.
"""
from __future__ import annotations

import gzip
import zlib
from pathlib import Path
from typing import Iterable, NamedTuple, Optional, Sequence, Tuple

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from sam_nnunet.datasets.common import DatasetLayoutError


class Tolerance(NamedTuple):
    """``|label - image| <= atol + rtol * |image|`` for every coordinate (``np.allclose`` with the image as b)."""
    rtol: float
    atol: float

    def allows(self, label: Sequence[float], image: Sequence[float]) -> bool:
        return bool(np.allclose(label, image, rtol=self.rtol, atol=self.atol))

    def __str__(self) -> str:
        return f"{self.atol:g} + {self.rtol:g} x |image value|"


SPACING_TOLERANCE = Tolerance(rtol=1e-5, atol=1e-8)
ORIGIN_TOLERANCE = Tolerance(rtol=1e-5, atol=1e-3)
DIRECTION_TOLERANCE = Tolerance(rtol=1e-5, atol=1e-4)
GRID_TOLERANCES = {"spacing": SPACING_TOLERANCE, "origin": ORIGIN_TOLERANCE, "direction": DIRECTION_TOLERANCE}


class Volume(NamedTuple):
    """One NIfTI file read in full and checked: the file's bytes as released, and the image made from them."""
    content: bytes
    image: nib.Nifti1Image


def read_volume(path: Path, what: str) -> Volume:
    """Read ``path`` (a ``what``: "image" or "label") completely; a DatasetLayoutError names the file otherwise.

    The gzip stream is decompressed to its end, so its CRC and length are checked: truncation and corruption
    anywhere raise. nibabel alone would not do: it never checks the CRC, so a flipped byte inside the voxel
    data passes it (checked with nibabel 5.4). Non-finite voxels are refused. The file is held in memory
    compressed and uncompressed while it is checked (about twice its voxel data at the peak, a few hundred MB
    for the largest AMOS CT), so the bytes written out are exactly the bytes checked.
    """
    content = path.read_bytes()
    try:
        raw = gzip.decompress(content) if content[:2] == b"\x1f\x8b" else content
    except (EOFError, OSError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
        raise DatasetLayoutError(f"{what} {path} is truncated or corrupt ({e}); download or extract it again") from e
    try:
        image = nib.Nifti1Image.from_bytes(raw)
        voxels = image.dataobj.get_unscaled()
    except OSError as e:  # nibabel: fewer voxel bytes than the header promises
        raise DatasetLayoutError(f"{what} {path} is truncated or corrupt ({e}); download or extract it again") from e
    except Exception as e:
        raise DatasetLayoutError(f"cannot read {what} {path} as NIfTI-1: {e}") from e
    if not np.issubdtype(voxels.dtype, np.integer):
        bad = ~np.isfinite(voxels)
        if bad.any():
            first = tuple(int(i) for i in np.argwhere(bad)[0])
            raise DatasetLayoutError(f"{what} {path} holds {int(bad.sum())} NaN or infinite voxel values (the first at "
                                     f"voxel {first}); nnU-Net cannot normalise or train on them. Replace them (for "
                                     f"an image with its minimum, for a label with 0) and convert again")
    return Volume(content, image)


def grid(path: Path, what: str) -> dict:
    """Shape, spacing, origin and direction of ``path`` as SimpleITK (nnU-Net's reader) reads its header."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as e:
        raise DatasetLayoutError(f"SimpleITK, the reader nnU-Net uses, cannot read the geometry of {what} {path}: "
                                 f"{str(e).strip().splitlines()[-1]}") from e
    return {"shape": reader.GetSize(), "spacing": reader.GetSpacing(), "origin": reader.GetOrigin(),
            "direction": reader.GetDirection()}


def _side_by_side(label: Sequence[float], image: Sequence[float]) -> Tuple[str, str]:
    """Both tuples rounded to the fewest decimals (6 or more) at which they still differ, -0.0 shown as 0.0."""
    for decimals in (6, 9, 12):
        shown = [tuple(round(float(v), decimals) + 0.0 for v in values) for values in (label, image)]
        if shown[0] != shown[1]:
            break
    else:
        shown = [tuple(float(v) + 0.0 for v in values) for values in (label, image)]
    return str(shown[0]), str(shown[1])


def check_same_grid(image: Path, label: Path) -> None:
    """DatasetLayoutError unless ``label`` lies on ``image``'s voxel grid (see the module docstring)."""
    img, seg = grid(image, "image"), grid(label, "label")
    if tuple(img["shape"]) != tuple(seg["shape"]):
        raise DatasetLayoutError(f"label {label} does not lie on the voxel grid of image {image}: label shape "
                                 f"{tuple(seg['shape'])} vs image shape {tuple(img['shape'])}. Pair the label with "
                                 f"its own image, or resample it onto the image's grid")
    problems = []
    for key, tolerance in GRID_TOLERANCES.items():
        if not tolerance.allows(seg[key], img[key]):
            shown_label, shown_image = _side_by_side(seg[key], img[key])
            problems.append(f"label {key} {shown_label} vs image {key} {shown_image} (tolerance {tolerance})")
    if problems:
        raise DatasetLayoutError(f"label {label} does not lie on the voxel grid of image {image}: "
                                 f"{'; '.join(problems)}. If the voxels do correspond, give the label the image's "
                                 f"header geometry (SimpleITK: label.CopyInformation(image)); otherwise pair it with "
                                 f"its own image")


def read_label_pair(image: Path, label: Path, allowed: Iterable[int],
                    dataset: str) -> Tuple[Volume, Volume, np.ndarray]:
    """Read ``image`` and ``label`` in full, check they share one voxel grid and the label holds only ``allowed``.

    Returns the image and label volumes and the label's integer voxel array (scaled, as a viewer shows it).
    Every problem is a DatasetLayoutError naming the file.
    """
    image_volume, label_volume = read_volume(image, "image"), read_volume(label, "label")
    check_same_grid(image, label)
    data = np.asanyarray(label_volume.image.dataobj)
    values = np.unique(data)
    if not np.issubdtype(values.dtype, np.integer) and not np.array_equal(values, np.round(values)):
        raise DatasetLayoutError(f"{label} holds non-integer label values; {dataset} labels are integers")
    allowed = sorted(int(v) for v in allowed)
    bad = sorted(set(int(v) for v in values) - set(allowed))
    if bad:
        raise DatasetLayoutError(f"{label} holds label values {bad}; {dataset} labels are {allowed}")
    return image_volume, label_volume, data.astype(np.int64, copy=False)


def copy_image(image: Path, image_out: Path) -> None:
    """Copy an image without a label (a test image) after reading it in full; the bytes stay as released."""
    image_out.write_bytes(read_volume(image, "image").content)


def copy_pair(image: Path, label: Path, image_out: Path, label_out: Path, *, allowed: Iterable[int], dataset: str,
              lookup: Optional[np.ndarray] = None) -> None:
    """Copy one labelled case into the nnU-Net folders after :func:`read_label_pair`'s checks; with ``lookup``
    the label is remapped as ``lookup[value]``, otherwise it is copied unchanged like the image."""
    image_volume, label_volume, data = read_label_pair(image, label, allowed, dataset)
    if lookup is None:
        label_out.write_bytes(label_volume.content)
    else:
        seg = label_volume.image
        out = nib.Nifti1Image(lookup[data].astype(np.uint8), seg.affine, seg.header)
        out.set_data_dtype(np.uint8)
        nib.save(out, str(label_out))
    image_out.write_bytes(image_volume.content)

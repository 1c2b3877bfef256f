"""The writer the 2D RGB converters share (Kvasir-SEG, CVC-ClinicDB, ISIC): image/mask pairs -> nnU-Net 2D dataset.

Output follows nnU-Net's own natural-image example (``Dataset120_RoadSegmentation``): each case is one RGB
PNG ``imagesTr/<case>_0000.png`` holding the three channels (``channel_names`` R, G, B) and one single-channel
PNG ``labelsTr/<case>.png`` with 0 background / 1 foreground; ``file_ending`` is ``.png`` and
``overwrite_image_reader_writer`` is ``NaturalImage2DIO``. PNG because nnU-Net refuses JPEG (lossy) for this
reader. Images are decoded and re-encoded losslessly; grey-scale, palette or RGBA sources become RGB.

Masks are made binary by these rules, and anything else is a DatasetLayoutError naming the file:
  * a multi-channel mask must be grey (its colour channels within 16 levels of each other);
  * a mask holding only 0 and 1 is taken as is;
  * otherwise foreground is value > 127 (0/255 masks, including JPEG masks with compression noise and masks
    with anti-aliased edges), and at most 5% of the pixels may be mid-grey (32-223): more means the file is
    not a two-level mask (a photo, a probability map);
  * a mask whose values stay in 2-127 (a label map with small values) would threshold to nothing: error.
An image without a mask, a mask without an image, and an image whose mask has another size are errors too.

Every image and mask is decoded in full before anything is written from it, and a truncated or corrupt file is a
DatasetLayoutError naming it. PIL raises on truncation only while ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES`` is
False; some libraries set it True for the whole process, and then PIL fills the missing part with grey without
a word. :func:`decoded` therefore holds it False while it decodes (and restores it afterwards).
"""
from __future__ import annotations

import re
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

from sam_nnunet.datasets.common import (DatasetLayoutError, PathLike, Splits, assembling, new_dataset_folder,
                                        require_folder, write_dataset_json)

MID_GREY = (32, 223)
MAX_MID_GREY_FRACTION = 0.05
MAX_CHANNEL_SPREAD = 16


@dataclass(frozen=True)
class Case:
    """One image and its mask (None for test images released without masks), under an nnU-Net case id."""
    case_id: str
    image: Path
    mask: Optional[Path]


def match_masks(images: Dict[str, Path], masks: Dict[str, Path], *, case_id: Callable[[str], str],
                expected_mask: Callable[[str], str]) -> List[Case]:
    """Pair images and masks that share a key (``images`` order is kept); ``case_id`` names the nnU-Net case.

    An image without a mask and a mask without an image are both DatasetLayoutErrors naming the file;
    ``expected_mask(key)`` says in the message which mask file was looked for.
    """
    for key, image in images.items():
        if key not in masks:
            raise DatasetLayoutError(f"image {image} has no mask: expected {expected_mask(key)}")
    orphans = sorted(str(masks[k]) for k in set(masks) - set(images))
    if orphans:
        more = f" (and {len(orphans) - 1} more)" if len(orphans) > 1 else ""
        raise DatasetLayoutError(f"mask {orphans[0]} has no image{more}")
    return [Case(case_id(key), image, masks[key]) for key, image in images.items()]


def files_by_key(folder: Path, pattern: re.Pattern, layout: str) -> Dict[str, Path]:
    """key (``pattern``'s first group) -> file, for the files in ``folder`` whose names match ``pattern``.

    Files that do not match (licences, attribution lists, ISIC 2017 superpixel maps) are ignored; two files
    with one key (``1.png`` and ``1.tif``) are an error.
    """
    found: Dict[str, Path] = {}
    for f in sorted(require_folder(folder, layout).iterdir()):
        m = pattern.match(f.name)
        if m and f.is_file():
            if m.group(1) in found:
                raise DatasetLayoutError(f"{found[m.group(1)]} and {f} are both case {m.group(1)}; keep one")
            found[m.group(1)] = f
    return found


@contextmanager
def decoded(path: Path, what: str) -> Iterator[Image.Image]:
    """``path`` opened and fully decoded by PIL (a ``what``: "image" or "mask"); closed after the block.

    A file PIL cannot identify, and a truncated or corrupt one, is a DatasetLayoutError naming it; see the
    module docstring for why ``LOAD_TRUNCATED_IMAGES`` is held False here.
    """
    try:
        im = Image.open(path)
    except UnidentifiedImageError as e:
        raise DatasetLayoutError(f"cannot read {what} {path}: PIL does not recognise it as an image (empty, cut off "
                                 f"before its header, or not an image file)") from e
    except (OSError, SyntaxError, ValueError) as e:
        raise DatasetLayoutError(f"{what} {path} is truncated or corrupt ({e}); download or extract it again") from e
    with im:
        allow_truncated, ImageFile.LOAD_TRUNCATED_IMAGES = ImageFile.LOAD_TRUNCATED_IMAGES, False
        try:
            im.load()
        except (OSError, SyntaxError, ValueError, EOFError) as e:
            raise DatasetLayoutError(f"{what} {path} is truncated or corrupt ({e}); download or extract it "
                                     f"again") from e
        finally:
            ImageFile.LOAD_TRUNCATED_IMAGES = allow_truncated
        yield im


def read_rgb(path: Path) -> np.ndarray:
    """H x W x 3 uint8."""
    with decoded(path, "image") as im:
        return np.asarray(im.convert("RGB"))


def read_binary_mask(path: Path) -> np.ndarray:
    """H x W uint8 of 0/1, by the rules in the module docstring."""
    with decoded(path, "mask") as im:
        pixels = np.asarray(im.convert("RGB") if im.mode in ("P", "RGBA", "LA", "CMYK", "YCbCr") else im)
    if pixels.ndim == 3:
        colour = pixels[..., :3].astype(np.int32)
        if np.ptp(colour, axis=-1).max() > MAX_CHANNEL_SPREAD:
            raise DatasetLayoutError(f"mask {path} is a colour image; expected a grey-scale (binary) mask")
        pixels = colour[..., 0]
    if pixels.dtype == bool:
        return pixels.astype(np.uint8)
    top = int(pixels.max())
    if top <= 1:
        return (pixels > 0).astype(np.uint8)
    if top <= 127:
        raise DatasetLayoutError(f"mask {path} holds values up to {top}: expected a binary mask, 0/255 (foreground "
                                 f"> 127) or 0/1")
    mid = float(np.mean((pixels >= MID_GREY[0]) & (pixels <= MID_GREY[1])))
    if mid > MAX_MID_GREY_FRACTION:
        raise DatasetLayoutError(f"mask {path} is not binary: {mid:.0%} of its pixels are mid-grey "
                                 f"({MID_GREY[0]}-{MID_GREY[1]}); expected 0/255 (or 0/1)")
    return (pixels > 127).astype(np.uint8)


def write_case(case: Case, images_dir: Path, labels_dir: Optional[Path]) -> None:
    rgb = read_rgb(case.image)
    if case.mask is not None:
        mask = read_binary_mask(case.mask)
        if mask.shape != rgb.shape[:2]:
            raise DatasetLayoutError(f"image {case.image} is {rgb.shape[1]}x{rgb.shape[0]} but its mask {case.mask} "
                                     f"is {mask.shape[1]}x{mask.shape[0]}; they must be the same size")
        Image.fromarray(mask).save(labels_dir / f"{case.case_id}.png")
    Image.fromarray(rgb).save(images_dir / f"{case.case_id}_0000.png")


def convert_pairs(*, name: str, dataset_id: int, train: List[Case], test: List[Case], foreground: str,
                  modality: str, reference: str, licence: str, description: str, splits: Optional[Splits] = None,
                  raw_root: Optional[PathLike] = None, preprocessed_root: Optional[PathLike] = None) -> Path:
    """Write ``Dataset{id:03d}_{name}``: ``train`` to imagesTr/labelsTr, ``test`` to imagesTs (and labelsTs for
    those with masks); ``splits`` (case ids) to ``$nnUNet_preprocessed/<dataset>/splits_final.json``, published
    together with the dataset (:func:`sam_nnunet.datasets.common.assembling`). ``modality`` (endoscopy,
    dermoscopy ...) goes into dataset.json as ``"imaging_modality"`` (not ``"modality"``: nnU-Net reads that legacy
    key as the channel names): R, G, B channel names do not tell it, and ESP-MedSAM chooses its modality bags by it."""
    target = new_dataset_folder(raw_root, dataset_id, name)
    if not train:
        raise DatasetLayoutError(f"no training images found for {name}")
    with assembling(target, splits=splits, preprocessed_root=preprocessed_root) as tmp:
        for sub in ("imagesTr", "labelsTr", "imagesTs") + (("labelsTs",) if any(c.mask for c in test) else ()):
            (tmp / sub).mkdir()
        for case in train:
            write_case(case, tmp / "imagesTr", tmp / "labelsTr")
        for case in test:
            write_case(case, tmp / "imagesTs", tmp / "labelsTs" if case.mask else None)
        write_dataset_json(tmp, channel_names={0: "R", 1: "G", 2: "B"}, labels={"background": 0, foreground: 1},
                           file_ending=".png", dataset_name=target.name, reference=reference, licence=licence,
                           description=description, overwrite_image_reader_writer="NaturalImage2DIO",
                           imaging_modality=modality)
    return target

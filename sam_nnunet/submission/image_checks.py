"""Is an image file whole? Header facts and completeness checks that image decoders skip.

Decoders are lenient in ways that turn a damaged file into a plausible image (measured with SimpleITK 2.5):

* a ``.nii.gz`` or ``.nii`` cut short is read without an error, its missing voxels filled with zeros;
* a multi-page TIFF whose page chain is cut short is read as a shorter volume;
* a truncated ``.mha`` fails, but with the message "No such file or directory".

:func:`check_complete` therefore compares the pixel data a file holds with what its header promises, per
format: ``.nii.gz``, compressed ``.mha`` and gzip ``.nrrd`` are inflated to the end of their stream (a cut stream
lacks its end marker and checksum) and must give the header's data offset plus voxels x bytes per voxel; ``.nii``,
uncompressed ``.mha`` and raw ``.nrrd`` must be that long on disk; a TIFF's page chain must be intact and every
strip or tile inside the file; PNG and JPEG must decode fully with PIL's ``LOAD_TRUNCATED_IMAGES`` off. NIfTI
voxels must also be finite: SimpleITK's NIfTI reader reads NaN and inf as 0 (SimpleITK 2.5), so a later check on the
array it returns would pass them.
:func:`read_header` gives what a header says (dimension, size, pixel components and type, geometry) without
reading pixels, and :func:`grid_difference` compares two headers' grids.
"""
from __future__ import annotations

import logging
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

PHOTO_EXTENSIONS = (".png", ".jpg", ".jpeg")
TIFF_EXTENSIONS = (".tif", ".tiff")
CHUNK = 1 << 22
# bytes per value of the MetaImage element types (MetaIO's MET_ValueTypeSize; MET_LONG is 32 bit there)
METAIMAGE_TYPE_SIZES = {"MET_CHAR": 1, "MET_UCHAR": 1, "MET_SHORT": 2, "MET_USHORT": 2, "MET_INT": 4,
                        "MET_UINT": 4, "MET_LONG": 4, "MET_ULONG": 4, "MET_LONG_LONG": 8, "MET_ULONG_LONG": 8,
                        "MET_FLOAT": 4, "MET_DOUBLE": 8}
# NRRD's type names (its specification lists the C spellings too), by element size in bytes
NRRD_TYPE_SIZES = {**dict.fromkeys(("signed char", "int8", "int8_t", "uchar", "unsigned char", "uint8", "uint8_t"), 1),
                   **dict.fromkeys(("short", "short int", "signed short", "signed short int", "int16", "int16_t",
                                    "ushort", "unsigned short", "unsigned short int", "uint16", "uint16_t"), 2),
                   **dict.fromkeys(("int", "signed int", "int32", "int32_t", "uint", "unsigned int", "uint32",
                                    "uint32_t", "float"), 4),
                   **dict.fromkeys(("longlong", "long long", "long long int", "signed long long",
                                    "signed long long int", "int64", "int64_t", "ulonglong", "unsigned long long",
                                    "unsigned long long int", "uint64", "uint64_t", "double"), 8)}
GRID_TOLERANCE = 1e-4
INFLATE_ZLIB_OR_GZIP = zlib.MAX_WBITS | 32  # detects the wrapper, as MetaIO and gzip readers do


class ImageCheckError(ValueError):
    """An image file is unreadable, incomplete or not what its header says; the message names the file."""


@dataclass(frozen=True)
class ImageHeader:
    """What an image file's header says. ``size`` is x, y[, z]; geometry is None for PNG/JPEG (no geometry)."""
    path: Path
    dimension: int
    size: Tuple[int, ...]
    components: int
    pixel_type: str
    eight_bit: bool  # 8-bit unsigned components (PIL modes other than I, I;16..., F)
    spacing: Optional[Tuple[float, ...]] = None
    origin: Optional[Tuple[float, ...]] = None
    direction: Optional[Tuple[float, ...]] = None
    photo_mode: Optional[str] = None

    def describe(self) -> str:
        """e.g. '2D 622x529 image with 3 component(s) of 8-bit unsigned integer'."""
        return (f"{self.dimension}D {'x'.join(map(str, self.size))} image with {self.components} component(s) "
                f"of {self.pixel_type}")


def lower_suffix(path: Path) -> str:
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def read_header(path: Path) -> ImageHeader:
    """The header of ``path`` (PIL for PNG/JPEG, SimpleITK for the rest), without decoding its pixels."""
    if lower_suffix(path) in PHOTO_EXTENSIONS:
        from PIL import Image

        try:
            with Image.open(path) as im:
                bands, mode, size = len(im.getbands()), im.mode, im.size
        except Exception as e:
            raise ImageCheckError(f"cannot read {path.name} as an image: {e}") from e
        return ImageHeader(path, 2, size, bands, f"PIL mode {mode}", eight_bit=not mode.startswith(("I", "F")),
                           photo_mode=mode)
    import SimpleITK as sitk

    info = sitk.ImageFileReader()
    info.SetFileName(str(path))
    try:
        info.ReadImageInformation()
    except RuntimeError as e:
        raise ImageCheckError(f"cannot read {path.name} as an image: {str(e).strip().splitlines()[-1]}")
    pixel = sitk.GetPixelIDValueAsString(info.GetPixelID()).replace("vector of ", "")
    return ImageHeader(path, info.GetDimension(), tuple(info.GetSize()), info.GetNumberOfComponents(), pixel,
                       eight_bit=pixel == "8-bit unsigned integer",
                       spacing=tuple(info.GetSpacing()), origin=tuple(info.GetOrigin()),
                       direction=tuple(info.GetDirection()))


def grid_difference(a: ImageHeader, b: ImageHeader) -> Optional[str]:
    """None when ``a`` and ``b`` share size, spacing, origin and direction (to 1e-4), else what differs."""
    if a.size != b.size:
        return f"size {a.size} vs {b.size}"
    for name in ("spacing", "origin", "direction"):
        va, vb = getattr(a, name), getattr(b, name)
        if (va is None) != (vb is None) or (va is not None and not np.allclose(va, vb, rtol=0, atol=GRID_TOLERANCE)):
            return f"{name} {va} vs {vb}"
    return None


# ------------------------------------------------------------------------------------------- completeness
def _truncated(path: Path, promised: int, found: int) -> ImageCheckError:
    return ImageCheckError(f"{path.name} is truncated: its header promises {promised} bytes of pixel data, the file "
                           f"holds {found}; copy or export the file again")


def _check_nifti(path: Path) -> None:
    import nibabel as nib

    try:
        proxy = nib.load(str(path)).dataobj
    except Exception as e:
        raise ImageCheckError(f"cannot read {path.name} as NIfTI: {e}") from e
    promised = int(proxy.offset) + int(np.prod(proxy.shape)) * proxy.dtype.itemsize
    found = path.stat().st_size if lower_suffix(path) == ".nii" else _inflated_length(path, 0, promised)
    if found < promised:
        raise _truncated(path, promised, found)
    # SimpleITK's NIfTI reader (nnU-Net's) turns NaN and inf into 0 without a word, so the check on the array the
    # model reads cannot see them: nibabel reads them as stored
    voxels = np.asanyarray(proxy)
    if voxels.dtype.kind in "fc" and not np.isfinite(voxels).all():
        raise ImageCheckError(f"{path.name} holds NaN or infinite values ({int((~np.isfinite(voxels)).sum())} "
                              f"voxels); the model needs finite intensities: replace them (e.g. by the background "
                              f"value) in the exported image")


def _inflated_length(path: Path, start: int, promised: int) -> int:
    """How many bytes the zlib/gzip stream from byte ``start`` of ``path`` inflates to, decompressed to its end.

    Several gzip members in a row (bgzip writes those) are one stream; a stream that stops before its end
    marker and checksum, or does not inflate, is an ImageCheckError.
    """
    found, inflate = 0, zlib.decompressobj(INFLATE_ZLIB_OR_GZIP)
    with open(path, "rb") as f:
        f.seek(start)
        try:
            while chunk := f.read(CHUNK):
                while chunk:
                    found += len(inflate.decompress(chunk))
                    chunk = inflate.unused_data if inflate.eof else b""
                    if chunk:  # the next gzip member
                        inflate = zlib.decompressobj(INFLATE_ZLIB_OR_GZIP)
        except zlib.error as e:
            raise ImageCheckError(f"{path.name} is corrupt: its compressed data do not inflate ({e})") from e
    if not inflate.eof:
        raise ImageCheckError(f"{path.name} is truncated: its compressed data stop before the end of the stream "
                              f"({found} of the {promised} bytes its header promises inflated); copy or export "
                              f"the file again")
    return found


def _metaimage_fields(path: Path) -> Tuple[Dict[str, str], int]:
    """The ``key = value`` fields of a MetaImage header and the header's length in bytes."""
    fields: Dict[str, str] = {}
    length = 0
    with open(path, "rb") as f:
        for line in iter(f.readline, b""):
            length += len(line)
            key, sep, value = line.decode("latin-1").partition("=")
            if not sep:
                break
            fields[key.strip()] = value.strip()
            if key.strip() == "ElementDataFile":  # the last field; the pixel data follows
                return fields, length
    raise ImageCheckError(f"{path.name} has no MetaImage header ending in 'ElementDataFile = LOCAL'")


def _check_metaimage(path: Path) -> None:
    fields, header_length = _metaimage_fields(path)
    if fields["ElementDataFile"] != "LOCAL":
        raise ImageCheckError(f"{path.name} keeps its pixels in another file ({fields['ElementDataFile']}); expected "
                              f"one self-contained .mha (ElementDataFile = LOCAL)")
    try:
        voxels = int(np.prod([int(v) for v in fields["DimSize"].split()]))
        promised = voxels * int(fields.get("ElementNumberOfChannels", 1)) * METAIMAGE_TYPE_SIZES[fields["ElementType"]]
    except (KeyError, ValueError) as e:
        raise ImageCheckError(f"{path.name}: MetaImage header without a usable DimSize/ElementType ({e})") from None
    compressed = fields.get("CompressedData", "False").lower() == "true"
    found = _inflated_length(path, header_length, promised) if compressed else path.stat().st_size - header_length
    if found < promised:
        raise _truncated(path, promised, found)


def _check_nrrd(path: Path) -> None:
    """An attached-data NRRD (``.nrrd``): raw or gzip data after the header's blank line, as long as its sizes say."""
    fields: Dict[str, str] = {}
    length = 0
    with open(path, "rb") as f:
        if not f.readline().startswith(b"NRRD"):
            raise ImageCheckError(f"{path.name} is not a NRRD file (no NRRD magic line)")
        length = f.tell()
        for line in iter(f.readline, b""):
            length += len(line)
            if not line.strip():
                break
            key, sep, value = line.decode("latin-1").partition(":")
            if sep and not line.startswith(b"#"):
                fields[key.strip().lower()] = value.strip().lstrip("=").strip()
    if "data file" in fields or "datafile" in fields:
        raise ImageCheckError(f"{path.name} keeps its pixels in another file; expected one self-contained .nrrd")
    try:
        promised = int(np.prod([int(v) for v in fields["sizes"].split()])) * NRRD_TYPE_SIZES[fields["type"].lower()]
    except (KeyError, ValueError) as e:
        raise ImageCheckError(f"{path.name}: NRRD header without usable sizes/type ({e})") from None
    encoding = fields.get("encoding", "raw").lower()
    if encoding not in ("raw", "gzip", "gz"):
        raise ImageCheckError(f"{path.name}: NRRD encoding {encoding!r}; expected raw or gzip")
    found = _inflated_length(path, length, promised) if encoding != "raw" else path.stat().st_size - length
    if found < promised:
        raise _truncated(path, promised, found)


class _Collect(logging.Handler):
    def __init__(self, messages: List[str]):
        super().__init__(logging.WARNING)
        self.messages = messages

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _check_tiff(path: Path) -> None:
    import tifffile

    # tifffile logs (does not raise) a page chain that points past the end of the file, then stops reading pages
    problems: List[str] = []
    handler, logger = _Collect(problems), logging.getLogger("tifffile")
    logger.addHandler(handler)
    try:
        with tifffile.TiffFile(path) as tif:
            pages = list(tif.pages)
    except tifffile.TiffFileError as e:
        raise ImageCheckError(f"cannot read {path.name} as TIFF: {e}") from e
    finally:
        logger.removeHandler(handler)
    size = path.stat().st_size
    ends = [offset + count for page in pages for offset, count in zip(page.dataoffsets, page.databytecounts)]
    if problems or not pages or max(ends, default=0) > size:
        detail = problems[0] if problems else f"pixel data up to byte {max(ends, default=0)}, file size {size}"
        raise ImageCheckError(f"{path.name} is truncated or corrupt ({detail}); copy or export the file again")


def _check_photo(path: Path) -> None:
    from PIL import Image, ImageFile

    ImageFile.LOAD_TRUNCATED_IMAGES = False  # a cut file must fail here, not decode with its missing rows grey
    try:
        with Image.open(path) as im:
            im.load()
    except Exception as e:
        raise ImageCheckError(f"cannot decode {path.name}: {e}; copy or export the file again") from e


COMPLETENESS_CHECKS: Dict[str, Callable[[Path], None]] = {
    ".nii.gz": _check_nifti, ".nii": _check_nifti, ".mha": _check_metaimage, ".nrrd": _check_nrrd,
    **{ext: _check_tiff for ext in TIFF_EXTENSIONS}, **{ext: _check_photo for ext in PHOTO_EXTENSIONS}}


def check_complete(path: Path) -> None:
    """Raise ImageCheckError unless ``path`` holds all the pixel data its header promises (formats above)."""
    ext = lower_suffix(path)
    if ext not in COMPLETENESS_CHECKS:
        raise ImageCheckError(f"{path.name}: no completeness check for {ext or 'files without extension'}; "
                              f"expected one of {', '.join(COMPLETENESS_CHECKS)}")
    COMPLETENESS_CHECKS[ext](path)

"""The model's images: what a case is for a volume model or a natural-image model, how it is read and written.

:func:`model_images` picks :class:`VolumeImages` or :class:`NaturalImages` from the model's plans (its nnU-Net image
I/O class); the package docstring (:mod:`sam_nnunet.submission`) says what each takes.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np

from sam_nnunet.submission.image_checks import PHOTO_EXTENSIONS, TIFF_EXTENSIONS, ImageHeader

FLAT, GRAND_CHALLENGE = "flat", "grand-challenge"
VOLUME_EXTENSIONS = (".nii.gz", ".nii", ".mha", ".nrrd")
GRAND_CHALLENGE_EXTENSIONS = (".mha",) + TIFF_EXTENSIONS
MODEL_ENV, INPUT_SLUGS_ENV, OUTPUT_SLUG_ENV = "SAM_NNUNET_MODEL", "SAM_NNUNET_INPUT_SLUGS", "SAM_NNUNET_OUTPUT_SLUG"
DEFAULT_OUTPUT_SLUG = "segmentation"
CHANNEL_SUFFIX = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")
# PIL modes of multi-band pixels, by band count: how a 2D .mha/.tif with that many components reads as a photo
MODE_OF_COMPONENTS = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}


class SubmissionError(Exception):
    """Bad input or usage; the message says what was expected."""


def split_extension(name: str, extensions: Sequence[str]) -> Tuple[str, str]:
    """(stem, extension) for the first of ``extensions`` that ``name`` ends with (any case), else (name, '')."""
    for ext in extensions:
        if name.lower().endswith(ext):
            return name[: -len(ext)], name[-len(ext):].lower()
    return name, ""


class VolumeImages:
    """Scalar 2D/3D images, one file per channel, read and written with the model's nnU-Net image I/O class."""
    extensions = VOLUME_EXTENSIONS

    def __init__(self, reader_writer, channel_names: List[str]):
        self.reader_writer, self.channel_names = reader_writer, channel_names
        self.files_per_case = len(channel_names)

    def describe_case(self) -> str:
        return f"{self.files_per_case} file(s) per case: " + ", ".join(
            f"channel {i} {name!r}" for i, name in enumerate(self.channel_names))

    def mask_extension(self, image_extension: str) -> str:
        return image_extension

    def check_header(self, header: ImageHeader) -> None:
        if header.components != 1 or header.dimension not in (2, 3):
            n = self.files_per_case
            raise SubmissionError(
                f"{header.path.name} is a {header.describe()}; the model expects {n} channel(s), each a scalar "
                f"2D/3D image" + (f" in files CASE_0000 ... CASE_{n - 1:04d}" if n > 1 else ""))

    def conversion_note(self, header: ImageHeader) -> Optional[str]:
        return None

    def read(self, files: Sequence[Path]) -> Tuple[np.ndarray, dict]:
        """(C x [Z x] Y x X float32 in the model's axis order, nnU-Net properties)."""
        return self.reader_writer().read_images([str(f) for f in files])

    def write(self, seg: np.ndarray, properties: dict, path: Path) -> None:
        self.reader_writer().write_seg(seg, str(path), properties)


class NaturalImages:
    """2D 8-bit images for NaturalImage2DIO models: one file holds every channel (RGB, or grey for one channel)."""
    extensions = PHOTO_EXTENSIONS
    files_per_case = 1

    def __init__(self, channel_names: List[str]):
        if len(channel_names) not in (1, 3):
            raise SubmissionError(f"natural-image model with {len(channel_names)} channels {channel_names}: only grey "
                                  f"(1 channel) and RGB (3 channels) models are supported")
        self.channel_names = channel_names
        self.mode = "L" if len(channel_names) == 1 else "RGB"

    def describe_case(self) -> str:
        return f"1 file per case holding {', '.join(self.channel_names)} ({self.mode})"

    def mask_extension(self, image_extension: str) -> str:
        return ".png"

    @staticmethod
    def source_mode(header: ImageHeader) -> str:
        return header.photo_mode or MODE_OF_COMPONENTS.get(header.components, f"{header.components} components")

    def check_header(self, header: ImageHeader) -> None:
        expected = ("an 8-bit RGB image (PNG, JPEG, or a 2D .mha/.tif with 3 components of 8-bit unsigned integer)"
                    if self.mode == "RGB" else "an 8-bit grey image (1 component)")
        one_slice = header.dimension == 2 or (header.dimension == 3 and header.size[2] == 1)
        convertible = (self.source_mode(header) in ("L", "1") if self.mode == "L"
                       else header.components <= 4)
        if not (one_slice and header.eight_bit and convertible):
            raise SubmissionError(f"{header.path.name} is a {header.describe()}; the model segments 2D images and "
                                  f"expects {expected}")

    def conversion_note(self, header: ImageHeader) -> Optional[str]:
        source = self.source_mode(header)
        if source == self.mode:
            return None
        return (f"{header.path.name} is {source}, converted to {self.mode} as the training images were "
                f"(grey replicated to R = G = B, palette expanded, alpha dropped)")

    def read(self, files: Sequence[Path]) -> Tuple[np.ndarray, dict]:
        """(C x 1 x Y x X float32, properties) as NaturalImage2DIO reads them, plus the input's geometry under
        SimpleITKIO's ``sitk_stuff`` key (identity for PNG/JPEG) for writing .mha masks."""
        from PIL import Image

        (path,) = files
        if split_extension(path.name, PHOTO_EXTENSIONS)[1]:
            with Image.open(path) as im:
                pixels = np.asarray(im.convert(self.mode))
            geometry = {"spacing": (1.0, 1.0), "origin": (0.0, 0.0), "direction": (1.0, 0.0, 0.0, 1.0)}
        else:
            import SimpleITK as sitk

            image = sitk.ReadImage(str(path))
            array = sitk.GetArrayFromImage(image)
            array = array[0] if image.GetDimension() == 3 else array  # a 3D image of one slice
            pixels = np.asarray(Image.fromarray(array).convert(self.mode))
            geometry = {"spacing": image.GetSpacing(), "origin": image.GetOrigin(), "direction": image.GetDirection()}
        channels = pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)
        return channels[:, None].astype(np.float32), {"spacing": (999, 1, 1), "sitk_stuff": geometry}

    def write(self, seg: np.ndarray, properties: dict, path: Path) -> None:
        """``seg``: 1 x Y x X. PNG as nnU-Net writes natural-image masks; .mha with the input's geometry."""
        from nnunetv2.imageio.natural_image_reader_writer import NaturalImage2DIO
        from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

        writer = NaturalImage2DIO if path.name.lower().endswith(".png") else SimpleITKIO
        writer().write_seg(seg, str(path), properties)


def model_images(model_dir: Path):
    """VolumeImages or NaturalImages for the model in ``model_dir``, from its dataset.json and plans.json."""
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.imageio.natural_image_reader_writer import NaturalImage2DIO
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    dataset_json = load_json(str(model_dir / "dataset.json"))
    channels = dataset_json.get("channel_names", dataset_json.get("modality", {}))
    channel_names = [channels[k] for k in sorted(channels, key=int)]
    reader_writer = PlansManager(str(model_dir / "plans.json")).image_reader_writer_class
    if issubclass(reader_writer, NaturalImage2DIO):
        return NaturalImages(channel_names)
    return VolumeImages(reader_writer, channel_names)

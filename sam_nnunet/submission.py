"""Challenge-submission entrypoint: image files in, masks out, with a trained nnU-Net model (any trainer).

Used as the Docker image's entrypoint (``docker/Dockerfile``) and runnable as is::

    python -m sam_nnunet.submission --model MODEL_DIR [--input /input] [--output /output]
        [--layout auto|flat|grand-challenge] [--input-slug SLUG ...] [--output-slug SLUG] [--overwrite]
        [--folds 0 1 2 3 4] [--no-mirroring] [--device auto|cuda|cpu] [--checkpoint checkpoint_final.pth]

Model
  ``MODEL_DIR``: a trained-model folder (``<Trainer>__<Plans>__<configuration>`` holding plans.json,
  dataset.json and fold_X/checkpoint_final.pth), or a folder with exactly one such folder below it (what
  ``sam_nnunet export-model`` writes, and ``nnUNetv2_export_model_to_zip`` packs). Default:
  ``$SAM_NNUNET_MODEL``. A folder written by ``sam_nnunet export-onnx`` (``onnx_export.json``,
  ``fold_X/model.onnx``) runs on ONNX Runtime on the CPU (:mod:`sam_nnunet.onnx_predictor`), with the same
  preprocessing, sliding window and export. The model's nnU-Net image I/O class (plans.json ``image_reader_writer``) decides
  what a case is:

  * volume models (SimpleITKIO and nnU-Net's other medical readers): scalar 2D/3D images, one file per
    channel, read and written by the model's own I/O class so that the axis conventions match training;
  * natural-image models (``NaturalImage2DIO``, dataset.json ``file_ending`` ``.png``: Kvasir-SEG,
    CVC-ClinicDB, ISIC): one 2D 8-bit image holds all channels. Inputs are converted the way
    :mod:`sam_nnunet.datasets.natural2d` converted the training images (PIL ``convert("RGB")``): grey is
    replicated to R = G = B, a palette is expanded, an alpha channel is dropped (not composited); a note
    is printed for each converted file. 16-bit or float pixels and 3D images (other than one slice) are
    refused. A one-channel (grey) natural-image model takes grey images only.

Layouts (``--layout``; ``auto``, the default, is grand-challenge when ``INPUT/images/`` exists, else flat)
  flat
    The files directly in INPUT. Volume models: ``.nii.gz``, ``.nii``, ``.mha``; a model with N channels
    takes N files per case, ``CASE_0000`` ... ``CASE_000{N-1}`` (nnU-Net's naming). Natural-image models:
    ``.png``, ``.jpg``, ``.jpeg``, one file per case. Masks: ``OUTPUT/CASE`` plus the input's extension
    (volume models; with the input's size, spacing, origin and direction), ``OUTPUT/CASE.png``
    (natural-image models: lossless, never JPEG), holding nnU-Net's label values.
  grand-challenge
    grand-challenge.org mounts one folder per input interface, ``INPUT/images/<slug>/<uuid>.mha``, and
    collects ``OUTPUT/images/<slug>/<name>.mha``. Inputs: what the flat layout takes, plus ``.mha``,
    ``.tif`` and ``.tiff`` (an RGB image there is a 2D image with 3 components of 8 bits). Each channel
    file comes from its own slug, named with ``--input-slug`` once per channel in channel order (else
    ``$SAM_NNUNET_INPUT_SLUGS``, comma-separated; else the one folder under ``INPUT/images/``, and an
    error listing the folders when there are several). Natural-image models take one slug. A mask goes to
    ``OUTPUT/images/<output slug>/<input name>.mha`` (``--output-slug``, else ``$SAM_NNUNET_OUTPUT_SLUG``,
    else ``segmentation``; it must match the algorithm's output interface), where the input name is the
    first slug's file name without its extension, with the input's size, spacing, origin and direction.
    Grand-challenge gives one file per interface and job; several files per slug are paired across slugs
    by sorted file name, only when every slug holds as many files (the pairs are printed), else an error.

Order of work
  1. Usage and layout: the output folder must not be the input folder or inside it; no two inputs may
     map to one mask; masks that exist already stop the run, listed, unless ``--overwrite``.
  2. One pass over all cases before the first prediction, reading each case fully and releasing it: every
     file must hold all the pixel data its header promises (:mod:`sam_nnunet.image_checks`: truncated
     ``.nii.gz``, ``.nii``, ``.mha``, TIFF, PNG, JPEG), the pixels must suit the model (components,
     dimension, bit depth), all channel files of a case must share one grid, the case must read as the
     model's channel count, and every value must be finite (NaN/inf is an error naming the file).
  3. Prediction, one case at a time (read, predict, write, release), so memory does not grow with the
     number of cases; progress ``[i/n] case -> mask (seconds)``. A mask is written under a hidden name
     (``.NAME.partial-PID<ext>``) in its output folder and renamed into place, so a run killed while
     writing leaves no half-written file under a mask's name.
  The input folder is only ever read.

Exit codes: 0 done; 2 bad input or usage (:class:`SubmissionError`, reason on stderr, nothing written).
"""
from __future__ import annotations

import argparse
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from sam_nnunet.image_checks import (PHOTO_EXTENSIONS, TIFF_EXTENSIONS, ImageCheckError, ImageHeader,
                                     check_complete, grid_difference, read_header)

FLAT, GRAND_CHALLENGE = "flat", "grand-challenge"
VOLUME_EXTENSIONS = (".nii.gz", ".nii", ".mha")
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


# ------------------------------------------------------------------------------------------- the model's images
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


def find_model_folder(path: Path) -> Path:
    if (path / "plans.json").is_file() and (path / "dataset.json").is_file():
        return path
    found = sorted(p.parent for p in path.glob("*/*/plans.json")) + sorted(p.parent for p in path.glob("*/plans.json"))
    found = [p for p in dict.fromkeys(found) if (p / "dataset.json").is_file()]
    if len(found) != 1:
        raise SubmissionError(f"expected one trained nnU-Net model (plans.json + dataset.json + fold_X/) in or "
                              f"below {path}; found {len(found)}: {[str(p) for p in found]}")
    return found[0]


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


# ------------------------------------------------------------------------------------------- layouts
@dataclass(frozen=True)
class Case:
    """One prediction: its input files in channel order and the mask it writes."""
    name: str
    files: Tuple[Path, ...]
    output: Path


def input_files(folder: Path, extensions: Sequence[str]) -> List[Path]:
    """The files in ``folder`` with one of ``extensions``, sorted by name; the others are named in a note."""
    files, others = [], []
    for p in sorted(folder.iterdir()):
        if p.is_file():
            (files if split_extension(p.name, extensions)[1] else others).append(p)
    if others:
        shown = ", ".join(p.name for p in others[:5]) + (" ..." if len(others) > 5 else "")
        print(f"note: ignoring {len(others)} file(s) in {folder} that are not {', '.join(extensions)}: {shown}")
    return files


def group_channels(files: Sequence[Path], files_per_case: int, extensions: Sequence[str]) -> Dict[str, List[Path]]:
    """Flat layout: case name -> its channel files in channel order (nnU-Net's CASE_XXXX naming)."""
    cases: Dict[str, List[Path]] = {}
    if files_per_case == 1:
        for f in files:
            stem = split_extension(f.name, extensions)[0]
            m = CHANNEL_SUFFIX.match(stem)
            case = m.group("case") if m and m.group("channel") == "0000" else stem
            if case in cases:
                raise SubmissionError(f"two inputs map to case {case!r}: {cases[case][0].name} and {f.name}; keep one")
            cases[case] = [f]
        return cases
    by_case: Dict[str, Dict[int, Path]] = {}
    for f in files:
        stem, ext = split_extension(f.name, extensions)
        m = CHANNEL_SUFFIX.match(stem)
        if not m:
            raise SubmissionError(f"{f.name}: this model takes {files_per_case} channels per case, named "
                                  f"CASE_0000{ext} ... CASE_{files_per_case - 1:04d}{ext}")
        by_case.setdefault(m.group("case"), {})[int(m.group("channel"))] = f
    for case, channels in by_case.items():
        if sorted(channels) != list(range(files_per_case)):
            raise SubmissionError(f"case {case!r} has channel files {sorted(channels)}; the model expects "
                                  f"{list(range(files_per_case))}")
        cases[case] = [channels[i] for i in range(files_per_case)]
    return cases


def flat_cases(input_dir: Path, output_dir: Path, images) -> List[Case]:
    files = input_files(input_dir, images.extensions)
    if not files:
        raise SubmissionError(f"input folder {input_dir} holds no {', '.join(images.extensions)} files (for the "
                              f"grand-challenge layout, put them in {input_dir}/images/<slug>/)")
    cases = []
    for name, channel_files in group_channels(files, images.files_per_case, images.extensions).items():
        extension = split_extension(channel_files[0].name, images.extensions)[1]
        cases.append(Case(name, tuple(channel_files), output_dir / (name + images.mask_extension(extension))))
    return cases


def input_slugs_for(images_dir: Path, given: Sequence[str], images) -> List[str]:
    """The input slugs in channel order: ``given``, or the only folder under ``images_dir``."""
    available = sorted(p.name for p in images_dir.iterdir() if p.is_dir())
    how = (f"the model takes {images.describe_case()}: give --input-slug once per channel file, in channel order, "
           f"or set {INPUT_SLUGS_ENV}=SLUG[,SLUG...]")
    if not given:
        if len(available) != 1:
            raise SubmissionError(f"{images_dir} holds {len(available)} input folders {available}, so the input "
                                  f"slug is ambiguous; {how}")
        given = available
    missing = [s for s in given if s not in available]
    if missing:
        raise SubmissionError(f"input slug(s) {missing} not found: {images_dir} holds {available}; {how}")
    if len(given) != images.files_per_case:
        raise SubmissionError(f"got {len(given)} input slug(s) {list(given)}; {how}")
    return list(given)


def grand_challenge_cases(input_dir: Path, output_dir: Path, images, input_slugs: Sequence[str],
                          output_slug: str) -> List[Case]:
    if not output_slug or output_slug in (".", "..") or "/" in output_slug or "\\" in output_slug:
        raise SubmissionError(f"output slug {output_slug!r} must be one folder name: the slug of the algorithm's "
                              f"output interface (default {DEFAULT_OUTPUT_SLUG!r})")
    extensions = tuple(dict.fromkeys(images.extensions + GRAND_CHALLENGE_EXTENSIONS))
    slugs = input_slugs_for(input_dir / "images", input_slugs, images)
    per_slug = [input_files(input_dir / "images" / slug, extensions) for slug in slugs]
    counts = [len(files) for files in per_slug]
    if not all(counts):
        raise SubmissionError(f"{input_dir / 'images' / slugs[counts.index(0)]} holds no {', '.join(extensions)} files")
    if len(set(counts)) > 1:
        raise SubmissionError("cannot pair the channel files: " + ", ".join(
            f"images/{s}/ holds {n}" for s, n in zip(slugs, counts)) + "; grand-challenge gives one file per input "
            "interface; with several, every slug must hold as many files (they are paired by sorted name)")
    groups = list(zip(*per_slug))
    if len(slugs) > 1 and len(groups) > 1:
        print("note: several files per slug, paired by sorted file name: "
              + "; ".join(" + ".join(f.name for f in group) for group in groups))
    masks = output_dir / "images" / output_slug
    return [Case(stem, group, masks / f"{stem}.mha")
            for group in groups for stem in [split_extension(group[0].name, extensions)[0]]]


def find_cases(layout: str, input_dir: Path, output_dir: Path, images, input_slugs: Sequence[str],
               output_slug: str) -> Tuple[str, List[Case]]:
    """(the layout used, its cases); ``layout`` 'auto' is grand-challenge when INPUT/images/ exists."""
    if not input_dir.is_dir():
        raise SubmissionError(f"input folder {input_dir} does not exist")
    has_images = (input_dir / "images").is_dir()
    if layout == "auto":
        layout = GRAND_CHALLENGE if has_images else FLAT
    if layout == FLAT:
        if input_slugs:
            print(f"note: flat layout; the input slugs {list(input_slugs)} are not used")
        return layout, flat_cases(input_dir, output_dir, images)
    if not has_images:
        raise SubmissionError(f"the grand-challenge layout reads {input_dir}/images/<slug>/; {input_dir} has no "
                              f"images/ folder")
    return layout, grand_challenge_cases(input_dir, output_dir, images, input_slugs, output_slug)


def check_outputs(cases: Sequence[Case], output_dir: Path, overwrite: bool) -> None:
    """No two cases may write one mask, and no mask may exist already unless ``overwrite``."""
    writer: Dict[Path, Case] = {}
    for case in cases:
        if case.output in writer:
            raise SubmissionError(f"{writer[case.output].files[0].name} and {case.files[0].name} would both be "
                                  f"written to {case.output.relative_to(output_dir)}; keep one of them")
        writer[case.output] = case
    existing = [str(c.output.relative_to(output_dir)) for c in cases if c.output.exists()]
    if existing and not overwrite:
        shown = ", ".join(existing[:10]) + (f" and {len(existing) - 10} more" if len(existing) > 10 else "")
        raise SubmissionError(f"{len(existing)} mask(s) already exist in {output_dir}: {shown}; pass --overwrite to "
                              f"replace them, or choose an empty output folder")


# ------------------------------------------------------------------------------------------- checks and prediction
def validate_case(images, case: Case, num_channels: int) -> None:
    """Read ``case`` fully and check it (module docstring, step 2); its pixels are released on return."""
    try:
        headers = [read_header(f) for f in case.files]
        for header in headers:
            images.check_header(header)
        for header in headers[1:]:
            difference = grid_difference(headers[0], header)
            if difference:
                raise SubmissionError(f"case {case.name!r}: {header.path.name} is not on the grid of "
                                      f"{headers[0].path.name} ({difference}); all channel files of a case must "
                                      f"share size, spacing, origin and direction: resample them onto one grid")
        for f in case.files:
            check_complete(f)
    except ImageCheckError as e:
        raise SubmissionError(str(e)) from e
    for header in headers:
        note = images.conversion_note(header)
        if note:
            print(f"note: {note}")
    try:
        data, _ = images.read(case.files)
    except Exception as e:  # the model's reader refuses a complete, well-formed file: name file and reader
        raise SubmissionError(f"case {case.name!r} ({', '.join(f.name for f in case.files)}): the model's image "
                              f"reader failed: {type(e).__name__}: {e}") from e
    if data.shape[0] != num_channels:
        raise SubmissionError(f"{case.files[0].name}: read {data.shape[0]} channel(s), the model expects "
                              f"{num_channels}")
    finite = np.isfinite(data).reshape(len(data), -1).all(axis=1)
    if not finite.all():
        channel = int(np.argmin(finite))
        owner = case.files[channel] if len(case.files) == len(data) else case.files[0]  # a file per channel, or one
        raise SubmissionError(f"{owner.name} holds NaN or infinite values; the model needs finite intensities: "
                              f"replace them (e.g. by the background value) in the exported image")


def write_atomically(images, seg: np.ndarray, properties: dict, target: Path) -> None:
    """Write under a hidden name next to ``target``, then rename: ``target`` is never a half-written file."""
    stem, extension = split_extension(target.name, (".nii.gz", target.suffix.lower()))
    partial = target.with_name(f".{stem}.partial-{os.getpid()}{extension}")
    try:
        images.write(seg, properties, partial)
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)


def predict_case(predictor, images, case: Case) -> None:
    """Read, predict and write one case; its image and mask are released on return."""
    data, properties = images.read(case.files)
    seg = predictor.predict_single_npy_array(data, properties, None, None, False)
    case.output.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(images, seg, properties, case.output)


def make_predictor(model_dir: Path, folds: Optional[Sequence], mirroring: bool, device: str, checkpoint: str):
    """nnU-Net's predictor for ``model_dir``: torch, or ONNX Runtime for a folder from ``sam_nnunet export-onnx``."""
    from sam_nnunet.onnx_export import METADATA_FILE

    if (model_dir / METADATA_FILE).is_file():
        if device == "cuda":
            raise SubmissionError("the model is an ONNX export, which runs on the CPU: use --device cpu or auto")
        from sam_nnunet.onnx_predictor import make_predictor as make_onnx_predictor

        return make_onnx_predictor(model_dir, folds, use_mirroring=mirroring, allow_tqdm=False), "cpu (ONNX Runtime)"
    from sam_nnunet import trainers_folder

    # nnU-Net looks the trainer class up by name; ours live in the installed trainers/ folder
    os.environ.setdefault("nnUNet_extTrainer", trainers_folder())
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cpu":
        torch.set_num_threads(max(1, os.cpu_count() or 1))
    predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=mirroring,
                                perform_everything_on_device=dev.type == "cuda", device=dev, allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(model_dir), use_folds=folds, checkpoint_name=checkpoint)
    return predictor, dev


def predict_folder(model: Path, input_dir: Path, output_dir: Path, folds: Optional[Sequence] = None,
                   mirroring: bool = True, device: str = "auto", checkpoint: str = "checkpoint_final.pth", *,
                   layout: str = "auto", input_slugs: Sequence[str] = (), output_slug: str = DEFAULT_OUTPUT_SLUG,
                   overwrite: bool = False) -> List[Path]:
    """Predict every case of ``input_dir`` into ``output_dir`` (module docstring); returns the masks written."""
    input_dir, output_dir = input_dir.resolve(), output_dir.resolve()
    if output_dir == input_dir or input_dir in output_dir.parents:
        raise SubmissionError(f"output folder {output_dir} must not be the input folder or inside it")
    model_dir = find_model_folder(model)
    images = model_images(model_dir)
    layout, cases = find_cases(layout, input_dir, output_dir, images, input_slugs, output_slug)
    check_outputs(cases, output_dir, overwrite)
    for case in cases:
        validate_case(images, case, len(images.channel_names))
    print(f"checked {len(cases)} case(s) in {input_dir} ({layout} layout): complete, finite, "
          f"{images.describe_case()}", flush=True)

    predictor, dev = make_predictor(model_dir, folds, mirroring, device, checkpoint)
    print(f"model {model_dir} (folds {list(folds) if folds else 'all found'}), device {dev}, "
          f"mirroring {'on' if mirroring else 'off'}", flush=True)
    for i, case in enumerate(cases, 1):
        start = time.time()
        predict_case(predictor, images, case)
        print(f"[{i}/{len(cases)}] {case.name} -> {case.output.relative_to(output_dir)} "
              f"({time.time() - start:.1f} s)", flush=True)
    return [case.output for case in cases]


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="sam_nnunet.submission", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=os.environ.get(MODEL_ENV), help=f"trained model folder (default ${MODEL_ENV})")
    p.add_argument("--input", default="/input")
    p.add_argument("--output", default="/output")
    p.add_argument("--layout", default="auto", choices=["auto", FLAT, GRAND_CHALLENGE],
                   help="auto: grand-challenge when INPUT/images/ exists, else flat")
    p.add_argument("--input-slug", dest="input_slugs", action="append", metavar="SLUG",
                   help=f"grand-challenge layout: the input folder INPUT/images/SLUG/, once per channel in channel "
                        f"order (default ${INPUT_SLUGS_ENV}, comma-separated, else the only folder there)")
    p.add_argument("--output-slug", default=os.environ.get(OUTPUT_SLUG_ENV) or DEFAULT_OUTPUT_SLUG,
                   help=f"grand-challenge layout: masks go to OUTPUT/images/SLUG/ (default ${OUTPUT_SLUG_ENV}, "
                        f"else {DEFAULT_OUTPUT_SLUG})")
    p.add_argument("--overwrite", action="store_true", help="replace masks that exist already")
    p.add_argument("--folds", nargs="+", default=None, help="folds to ensemble (default: all found)")
    p.add_argument("--no-mirroring", action="store_true", help="disable test-time mirroring (faster)")
    p.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    p.add_argument("--checkpoint", default="checkpoint_final.pth")
    args = p.parse_args(argv)
    if not args.model:
        print(f"error: give --model or set {MODEL_ENV}", file=sys.stderr)
        return 2
    input_slugs = args.input_slugs or [s.strip() for s in os.environ.get(INPUT_SLUGS_ENV, "").split(",") if s.strip()]
    folds = [f if f == "all" else int(f) for f in args.folds] if args.folds else None
    try:
        written = predict_folder(Path(args.model), Path(args.input), Path(args.output), folds,
                                 mirroring=not args.no_mirroring, device=args.device, checkpoint=args.checkpoint,
                                 layout=args.layout, input_slugs=input_slugs, output_slug=args.output_slug,
                                 overwrite=args.overwrite)
    except SubmissionError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"done: {len(written)} mask(s) in {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

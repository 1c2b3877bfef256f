"""``sam_nnunet predict -i INPUT -o OUTPUT -m MODEL`` and the Python API :func:`predict`: one command from images to
masks with a shared model.

INPUT (:func:`find_inputs`)
  * one image file: ``.nii.gz``, ``.nii``, ``.mha``, ``.nrrd`` (volume models), ``.png`` / ``.jpg`` (natural-image
    models such as Kvasir-SEG's);
  * a folder of such files with any names (a model with N > 1 channels takes nnU-Net's ``CASE_0000`` ...
    ``CASE_000{N-1}`` naming);
  * a DICOM series folder (one case per series in it), or a folder whose subfolders are series folders. Each series
    is read with SimpleITK's series reader (:mod:`sam_nnunet.sharing.dicom`).
MODEL
  a zip, an exported folder or a results folder (:func:`sam_nnunet.sharing.model.locate_model`): its winning
  configuration (one model or an ensemble) and its postprocessing run as ``nnUNetv2_predict`` +
  ``nnUNetv2_ensemble`` + ``nnUNetv2_apply_postprocessing`` would. ``nnUNet_extTrainer`` is set here.
OUTPUT
  * one mask per case, ``OUTPUT/<case><ext>`` with the input's geometry. ``<ext>`` is the input's extension (the
    dataset's file ending for DICOM); ``.png`` for natural-image models;
  * ``--output-type dicom_seg``: ``OUTPUT/<case>.dcm``, DICOM-SEG referencing the source series (DICOM inputs only);
  * ``--save-probabilities``: ``OUTPUT/<case>.npz`` with ``probabilities`` (classes x the image's array shape);
  * ``OUTPUT/predictions.json``: per case the input, mask, shape, spacing (mm, array order), seconds, and per class
    the voxel count and the volume in millilitres (voxel count x voxel volume; ``area_mm2`` for 2D images; counts
    only for natural images, which have no physical spacing).

Bad input is found before the first prediction, by the checks the challenge entrypoint runs (one code path:
:func:`sam_nnunet.submission.run.validate_case`): complete files, pixels that suit the model, finite values. Masks or
a predictions.json that exist already stop the run unless ``--overwrite``; a mask is written under a temporary name
and renamed into place.
"""
from __future__ import annotations

import functools
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np

from sam_nnunet.files import write_json
from sam_nnunet.submission.images import NaturalImages, SubmissionError, split_extension
from sam_nnunet.submission.layouts import Case, check_outputs, group_channels, input_files

NIFTI, DICOM_SEG = "nifti", "dicom_seg"
RECORD = "predictions.json"


@dataclass
class InputCase:
    """One prediction: its files in channel order (a DICOM series: its slices, read to ``files`` at check time)."""
    name: str
    files: Tuple[Path, ...]
    output: Path
    dicom: Tuple[Path, ...] = ()

    def as_case(self) -> Case:
        return Case(self.name, self.files, self.output)


def find_inputs(input_path: Path, output_dir: Path, images, dataset_ending: str,
                output_type: str = NIFTI) -> List[InputCase]:
    """The cases of ``input_path`` (module docstring) and the mask each writes."""
    if not input_path.exists():
        raise SubmissionError(f"input {input_path} does not exist")
    extensions = images.extensions
    if input_path.is_file():
        ext = split_extension(input_path.name, extensions)[1]
        if not ext:
            raise SubmissionError(f"input {input_path.name} is not one of {', '.join(extensions)} (give a DICOM series "
                                  f"as its folder)")
        if images.files_per_case != 1:
            raise SubmissionError(f"the model takes {images.describe_case()}: give a folder with files named "
                                  f"CASE_0000{ext} ... CASE_{images.files_per_case - 1:04d}{ext}")
        files = [input_path]
    elif any(split_extension(p.name, extensions)[1] for p in input_path.iterdir()):
        files = input_files(input_path, extensions)
    else:
        files = []
    if files:
        cases = [InputCase(name, tuple(group), output_dir / (name + images.mask_extension(
            split_extension(group[0].name, extensions)[1])))
                 for name, group in group_channels(files, images.files_per_case, extensions).items()]
    else:
        cases = _dicom_cases(input_path, output_dir, images, dataset_ending)
    if output_type == DICOM_SEG:
        if any(not c.dicom for c in cases):
            raise SubmissionError("--output-type dicom_seg references the source DICOM series: give DICOM series "
                                  "as input (NIfTI and other files get NIfTI masks)")
        for c in cases:
            c.output = c.output.with_name(c.name + ".dcm")
    return cases


def _dicom_cases(folder: Path, output_dir: Path, images, dataset_ending: str) -> List[InputCase]:
    from sam_nnunet.sharing.dicom import find_series

    if isinstance(images, NaturalImages) or images.files_per_case != 1:
        raise SubmissionError(f"{folder} holds no {', '.join(images.extensions)} files; DICOM series are read for "
                              f"one-channel volume models only, and the model takes {images.describe_case()}")
    found = [(folder, uid, files) for uid, files in find_series(folder)]
    if not found:  # a folder of series folders
        found = [(sub, uid, files) for sub in sorted(p for p in folder.iterdir() if p.is_dir())
                 for uid, files in find_series(sub)]
    if not found:
        raise SubmissionError(f"{folder} holds no {', '.join(images.extensions)} files and no DICOM series (nor do "
                              f"its subfolders)")
    per_folder = {}
    for where, _, _ in found:
        per_folder[where] = per_folder.get(where, 0) + 1
    cases = []
    for where, uid, files in found:
        name = where.name if per_folder[where] == 1 else f"{where.name}_{uid}"
        cases.append(InputCase(name, (), output_dir / (name + dataset_ending), dicom=tuple(files)))
    return cases


def _volume_ending(dataset_ending: str) -> str:
    return dataset_ending if dataset_ending in (".nii.gz", ".nii", ".mha", ".nrrd") else ".nii.gz"


def prepare_dicom(case: InputCase, scratch: Path, dataset_ending: str) -> None:
    """Read ``case``'s series and write it to ``scratch`` as the file the model reads (``case.files``)."""
    import SimpleITK as sitk

    from sam_nnunet.sharing.dicom import read_series

    try:
        image = read_series(case.dicom)
    except RuntimeError as e:
        raise SubmissionError(f"DICOM series {case.name} ({len(case.dicom)} files in {case.dicom[0].parent}) cannot "
                              f"be read: {str(e).strip().splitlines()[-1]}") from e
    target = scratch / f"{case.name}_0000{_volume_ending(dataset_ending)}"
    sitk.WriteImage(image, str(target))
    case.files = (target,)


def physical_spacing(images, properties: dict) -> Optional[Tuple[float, ...]]:
    """The mask's voxel spacing in mm in array order: 3 values for a volume, 2 for a 2D image; None for natural
    images (no physical spacing)."""
    if isinstance(images, NaturalImages):
        return None
    sitk_stuff = properties.get("sitk_stuff")
    spacing = tuple(reversed(sitk_stuff["spacing"])) if sitk_stuff else tuple(properties["spacing"])
    return tuple(float(s) for s in spacing)


def class_amounts(seg: np.ndarray, labels: dict, spacing: Optional[Sequence[float]]) -> dict:
    """Per class name: its label, voxel count and volume (ml, 3D) or area (mm², 2D) for ``spacing``."""
    out = {}
    squeezed = seg.reshape([s for s in seg.shape if s != 1] or [1])
    for value, name in sorted(labels.items()):
        if value == 0:
            continue
        count = int((squeezed == value).sum())
        entry = {"label": value, "voxels": count}
        if spacing is not None:
            if len(spacing) == 3:
                entry["volume_ml"] = count * float(np.prod(spacing)) / 1000.0
            else:
                entry["area_mm2"] = count * float(np.prod(spacing))
        out[name] = entry
    return out


def predict_cases(model, cases: List[InputCase], output_dir: Path, *, save_probabilities: bool = False,
                  overwrite: bool = False, progress: bool = True, record: bool = True) -> List[dict]:
    """Check every case, then predict and write them one at a time; returns the per-case records."""
    from sam_nnunet.submission.run import check_output_writable, validate_case, write_atomically

    images = model.images
    dataset_ending = model.dataset_json.get("file_ending", ".nii.gz")
    check_outputs([c.as_case() for c in cases], output_dir, overwrite)
    if record and (output_dir / RECORD).exists() and not overwrite:
        raise SubmissionError(f"{output_dir / RECORD} exists already; pass --overwrite to replace it and the masks, "
                              f"or choose an empty output folder")
    check_output_writable(output_dir)
    scratch = Path(tempfile.mkdtemp(prefix="sam_nnunet_predict_"))
    try:
        for case in cases:
            if case.dicom:
                prepare_dicom(case, scratch, dataset_ending)
            validate_case(images, case.as_case(), len(images.channel_names))
        output_dir.mkdir(parents=True, exist_ok=True)
        rows = []
        iterator = cases
        if progress:
            from tqdm import tqdm

            iterator = tqdm(cases, desc="predicting", unit="case")
        for case in iterator:
            start = time.time()
            data, properties = images.read(case.files)
            seg, probabilities = model.predict(data, properties, save_probabilities)
            if case.output.suffix == ".dcm":
                _write_dicom_seg(model, seg, properties, case)
            else:
                write_atomically(images, seg, properties, case.output)
            if probabilities is not None and save_probabilities:
                np.savez_compressed(case.output.with_name(case.name + ".npz"), probabilities=probabilities)
            spacing = physical_spacing(images, properties)
            rows.append({"case": case.name, "input": [str(f) for f in (case.dicom or case.files)],
                         "output": str(case.output), "shape": list(seg.shape),
                         "spacing_mm": spacing and list(spacing), "seconds": round(time.time() - start, 3),
                         "classes": class_amounts(seg, model.labels, spacing)})
        if record:
            write_json(output_dir / RECORD, {"model": str(model.files.given),
                                             "members": [str(m) for m in model.files.members], "folds": model.folds,
                                             "postprocessing": model.postprocessing_names, "cases": rows})
        return rows
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _write_dicom_seg(model, seg: np.ndarray, properties: dict, case: InputCase) -> None:
    import SimpleITK as sitk

    from sam_nnunet import __version__
    from sam_nnunet.files import publish
    from sam_nnunet.sharing.dicom import write_dicom_seg

    # the mask in the series' own array order: written as NIfTI by the model's writer, then read back as the series
    scratch_mask = case.files[0].with_name(f"{case.name}_mask.nii.gz")
    model.images.write(seg, properties, scratch_mask)
    mask = sitk.GetArrayFromImage(sitk.ReadImage(str(scratch_mask)))
    partial = case.output.with_name(f".{case.name}.partial-{os.getpid()}.dcm")
    try:
        write_dicom_seg(mask, case.dicom, {v: n for v, n in model.labels.items() if v != 0}, partial,
                        algorithm=model.files.members[0].name.split("__")[0], version=__version__)
        publish(partial, case.output)
    finally:
        partial.unlink(missing_ok=True)


# ------------------------------------------------------------------------------------------------------ the API
@functools.lru_cache(maxsize=4)
def _cached_model(model: str, folds: Optional[tuple], device: str, fast: bool, postprocess: bool):
    from sam_nnunet.sharing.model import load_model

    return load_model(model, folds=folds, device=device, fast=fast, postprocess=postprocess)


def predict(image, model, *, folds: Optional[Sequence] = None, device: str = "auto", fast: bool = False,
            postprocess: bool = True, as_array: bool = False):
    """The mask of ``image`` (a path, or a SimpleITK image) by ``model`` (a path as ``sam_nnunet predict -m`` takes,
    or a :class:`~sam_nnunet.sharing.model.Model` from :func:`sam_nnunet.load_model`).

    Returns a SimpleITK image with the input's geometry, or with ``as_array`` ``(array, {"spacing", "origin",
    "direction"})`` (SimpleITK's array order and geometry). The same code as the command writes the mask, so both give
    the same result; a model given by path is loaded once and reused by later calls with the same options."""
    import SimpleITK as sitk

    from sam_nnunet.sharing.model import Model

    if not isinstance(model, Model):
        model = _cached_model(str(Path(model).resolve()), tuple(folds) if folds else None, device, fast, postprocess)
    with tempfile.TemporaryDirectory(prefix="sam_nnunet_api_") as tmp:
        tmp = Path(tmp)
        if isinstance(image, sitk.Image):
            path = tmp / "input" / f"image{_volume_ending(model.dataset_json.get('file_ending', '.nii.gz'))}"
            path.parent.mkdir()
            sitk.WriteImage(image, str(path))
        else:
            path = Path(image)
        cases = find_inputs(path, tmp / "output", model.images, model.dataset_json.get("file_ending", ".nii.gz"))
        if len(cases) != 1:
            raise SubmissionError(f"{path} holds {len(cases)} cases; predict() takes one image (use predict_folder "
                                  f"or the command for folders)")
        predict_cases(model, cases, tmp / "output", progress=False, record=False)
        mask = sitk.ReadImage(str(cases[0].output))
    if as_array:
        return sitk.GetArrayFromImage(mask), {"spacing": mask.GetSpacing(), "origin": mask.GetOrigin(),
                                              "direction": mask.GetDirection()}
    return mask

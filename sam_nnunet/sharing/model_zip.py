"""A trained model as one zip, in the layout of nnU-Net's ``nnUNetv2_export_model_to_zip``, and its safe install.

``sam_nnunet export-model --zip model.zip -d 27 -c 2d -tr HSPSAMTrainer -p PLANS -f 0 1 2 3 4`` writes entries
relative to ``$nnUNet_results``, so that nnU-Net's own ``nnUNetv2_install_pretrained_model_from_zip`` (an
``extractall`` into ``$nnUNet_results``) installs it and the stock ``nnUNetv2_predict`` runs it::

    DatasetXXX_Name/TRAINER__PLANS__CONFIG/plans.json, dataset.json, dataset_fingerprint.json
    DatasetXXX_Name/TRAINER__PLANS__CONFIG/fold_X/checkpoint_final.pth          (weights only, see below)
    DatasetXXX_Name/TRAINER__PLANS__CONFIG/fold_X/validation/summary.json
    DatasetXXX_Name/TRAINER__PLANS__CONFIG/crossval_results_folds_0_1_2_3_4/summary.json, postprocessing.pkl/.json
    DatasetXXX_Name/TRAINER__PLANS__CONFIG/MODEL.md, model_card.json              (sam_nnunet.sharing.card)
    DatasetXXX_Name/inference_information.json, inference_instructions.txt

The files nnU-Net's exporter takes are taken when present (a model that was never cross-validated has no
``crossval_results_folds_*``; the card then says so). Two differences, both for a file that leaves the machine:

* each checkpoint is reduced to what prediction reads (:func:`sam_nnunet.export.model.slim_checkpoint`: no
  optimizer state, no ``init_args`` plans copy) and holds only tensors, strings and numbers;
* ``debug.json``, training logs and ``progress.png`` stay behind (host paths, hostnames), and the host's
  ``$nnUNet_results`` in ``inference_information.json`` / ``inference_instructions.txt`` becomes a relative
  path / ``$nnUNet_results``. Those two files go in only when the winning configuration they name is this model
  (an ensemble with other models needs those models too: export them with nnU-Net's exporter).

:func:`install_model_zip` installs a zip without trusting it (``sam_nnunet install-model``, and
``sam_nnunet predict -m model.zip``, which installs into a cache): entry names must stay inside one
``DatasetXXX_Name/`` folder (no absolute paths, ``..`` or links), every checkpoint must load with
:func:`sam_nnunet.sharing.trust.load_checkpoint` and every plans.json pass :func:`~sam_nnunet.sharing.trust.check_plans`
before anything is moved into place, and an installed model folder is never overwritten.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import stat
import zipfile
from pathlib import Path, PurePosixPath
from typing import List, Optional, Sequence, Union

import torch

from sam_nnunet.export.model import check_exportable, slim_checkpoint
from sam_nnunet.files import publish
from sam_nnunet.sharing.card import CARD_JSON, CARD_MD, card_markdown, crossval_folder, model_card
from sam_nnunet.sharing.trust import UntrustedModelError, check_plans, load_checkpoint

PathLike = Union[str, os.PathLike]
DATASET_FOLDER = re.compile(r"^Dataset\d{3}_[^/\\]+$")
MODEL_FILES = ("plans.json", "dataset.json", "dataset_fingerprint.json")
CROSSVAL_FILES = ("summary.json", "postprocessing.pkl", "postprocessing.json")
INFERENCE_FILES = ("inference_information.json", "inference_instructions.txt")
CACHE_ENV = "SAM_NNUNET_MODEL_CACHE"


def _selected_models(info: dict) -> List[str]:
    return [f"{m['trainer']}__{m['plans_identifier']}__{m['configuration']}"
            for m in info.get("best_model_or_ensemble", {}).get("selected_model_or_models", [])]


def _relative_to_results(value, results: str):
    """Host paths under ``results`` inside inference_information.json, made relative (recursively)."""
    if isinstance(value, dict):
        return {k: _relative_to_results(v, results) for k, v in value.items()}
    if isinstance(value, list):
        return [_relative_to_results(v, results) for v in value]
    if isinstance(value, str) and results and value.startswith(results.rstrip("/") + "/"):
        return value[len(results.rstrip("/")) + 1:]
    return value


def export_model_zip(model_dir: PathLike, out_zip: PathLike, folds: Sequence,
                     checkpoint_name: str = "checkpoint_final.pth") -> Path:
    """Write ``model_dir`` (``$nnUNet_results/DatasetXXX/TRAINER__PLANS__CONFIG``) with ``folds`` to ``out_zip``
    (module docstring). Refuses an existing ``out_zip`` and folds without ``checkpoint_name``."""
    folds = [str(f) for f in folds]
    src, out_zip = check_exportable(model_dir, folds, checkpoint_name), Path(out_zip)
    dataset_dir = src.parent
    if out_zip.exists():
        raise FileExistsError(f"{out_zip} already exists; not overwriting it. Choose another file name.")
    if out_zip.suffix.lower() != ".zip":
        raise ValueError(f"{out_zip}: the model file must end in .zip (nnU-Net's installer takes a zip)")
    out_zip.parent.mkdir(parents=True, exist_ok=True)
    prefix = PurePosixPath(dataset_dir.name, src.name)
    partial = out_zip.with_name(f".{out_zip.name}.partial-{os.getpid()}")
    try:
        with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as zf:
            for name in MODEL_FILES:
                if (src / name).is_file():
                    zf.write(src / name, str(prefix / name))
            for fold in folds:
                buffer = io.BytesIO()
                torch.save(slim_checkpoint(load_checkpoint(src / f"fold_{fold}" / checkpoint_name)), buffer)
                zf.writestr(str(prefix / f"fold_{fold}" / "checkpoint_final.pth"), buffer.getvalue())
                summary = src / f"fold_{fold}" / "validation" / "summary.json"
                if summary.is_file():
                    zf.write(summary, str(prefix / f"fold_{fold}" / "validation" / "summary.json"))
            crossval = crossval_folder(src)
            if crossval is not None:
                for name in CROSSVAL_FILES:
                    if (crossval / name).is_file():
                        zf.write(crossval / name, str(prefix / crossval.name / name))
            card = model_card(src, folds)
            zf.writestr(str(prefix / CARD_JSON), json.dumps(card, indent=2) + "\n")
            zf.writestr(str(prefix / CARD_MD), card_markdown(card))
            info_file = dataset_dir / INFERENCE_FILES[0]
            if info_file.is_file():
                info = json.loads(info_file.read_text())
                if _selected_models(info) == [src.name]:
                    results = str(dataset_dir.parent)
                    zf.writestr(str(PurePosixPath(dataset_dir.name, INFERENCE_FILES[0])),
                                json.dumps(_relative_to_results(info, results), indent=2) + "\n")
                    txt = dataset_dir / INFERENCE_FILES[1]
                    if txt.is_file():
                        zf.writestr(str(PurePosixPath(dataset_dir.name, INFERENCE_FILES[1])),
                                    txt.read_text().replace(results.rstrip("/") + "/", "$nnUNet_results/"))
                else:
                    print(f"note: {info_file} selects {_selected_models(info)}, not {src.name} alone: not exported")
        publish(partial, out_zip)
    finally:
        partial.unlink(missing_ok=True)
    return out_zip


# ------------------------------------------------------------------------------------------------ installing
def _checked_names(zf: zipfile.ZipFile, source: Path) -> List[str]:
    """The zip's file entries, each checked to stay inside one ``DatasetXXX_Name/`` folder."""
    names = []
    for info in zf.infolist():
        name = info.filename
        parts = PurePosixPath(name).parts
        if stat.S_ISLNK(info.external_attr >> 16):
            raise UntrustedModelError(f"{source}: entry {name!r} is a symbolic link; a model zip holds files only")
        if name.startswith(("/", "\\")) or "\\" in name or ".." in parts or (parts and ":" in parts[0]):
            raise UntrustedModelError(f"{source}: entry {name!r} would be written outside the install folder")
        if not parts or not DATASET_FOLDER.match(parts[0]) or len(parts) < 2:
            raise UntrustedModelError(f"{source}: entry {name!r} is not inside a DatasetXXX_Name/ folder, as "
                                      f"nnU-Net's model zips are (DatasetXXX_Name/TRAINER__PLANS__CONFIG/...)")
        if not info.is_dir():
            names.append(name)
    datasets = {PurePosixPath(n).parts[0] for n in names}
    if len(datasets) != 1:
        raise UntrustedModelError(f"{source}: expected the files of one dataset, found {sorted(datasets) or 'none'}")
    return names


def _vet(folder: Path) -> List[Path]:
    """Check every plans.json and checkpoint below ``folder``; returns the model folders (with plans.json)."""
    models = sorted(p.parent for p in folder.glob("*/*/plans.json"))
    if not models:
        raise UntrustedModelError("the zip holds no model folder (DatasetXXX_Name/TRAINER__PLANS__CONFIG/plans.json)")
    for model in models:
        check_plans(json.loads((model / "plans.json").read_text()), model / "plans.json")
        for checkpoint in model.glob("fold_*/*.pth"):
            load_checkpoint(checkpoint)
    return models


def install_model_zip(zip_path: PathLike, results: PathLike) -> List[Path]:
    """Install a model zip into ``results`` (a ``$nnUNet_results`` folder) without trusting it (module docstring).

    Returns the installed model folders. Dataset-level files (inference_information.json) that exist already are
    kept, with a note."""
    zip_path, results = Path(zip_path), Path(results)
    if not zipfile.is_zipfile(zip_path):
        raise ValueError(f"{zip_path} is not a zip file (expected a model zip from sam_nnunet export-model --zip or "
                         f"nnUNetv2_export_model_to_zip)")
    results.mkdir(parents=True, exist_ok=True)
    staging = results / f".install-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        with zipfile.ZipFile(zip_path) as zf:
            names = _checked_names(zf, zip_path)
            for name in names:
                target = staging / name
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(name) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst)
        models = _vet(staging)
        dataset = models[0].parent.name
        taken = [str(results / dataset / m.name) for m in models if (results / dataset / m.name).exists()]
        if taken:
            raise FileExistsError(f"{', '.join(taken)} already installed; not overwriting it. Remove it first, or "
                                  f"install into another nnUNet_results folder.")
        (results / dataset).mkdir(exist_ok=True)
        installed = []
        for item in sorted((staging / dataset).iterdir()):
            target = results / dataset / item.name
            if target.exists():
                print(f"note: kept the existing {target} (the zip's copy is not installed)")
                continue
            os.replace(item, target)
            if item in models:
                installed.append(target)
        return installed
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def cache_folder() -> Path:
    """Where ``sam_nnunet predict -m model.zip`` installs zips: ``$SAM_NNUNET_MODEL_CACHE``, else
    ``$XDG_CACHE_HOME/sam_nnunet/models`` (``~/.cache/sam_nnunet/models``)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "sam_nnunet" / "models"


def cached_install(zip_path: PathLike, cache: Optional[PathLike] = None) -> Path:
    """The results folder holding ``zip_path`` installed, under :func:`cache_folder` by the zip's SHA-256: installed
    on first use (:func:`install_model_zip`, into a fresh folder renamed into place), reused after."""
    digest = hashlib.sha256()
    with open(zip_path, "rb") as f:
        while chunk := f.read(16 << 20):
            digest.update(chunk)
    root = Path(cache or cache_folder())
    target = root / digest.hexdigest()[:16]
    if target.is_dir():
        return target
    partial = root / f".{target.name}.partial-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    try:
        install_model_zip(zip_path, partial)
        try:
            os.replace(partial, target)
        except OSError:  # another process installed it meanwhile
            if not target.is_dir():
                raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return target

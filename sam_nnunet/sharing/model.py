"""A shared model, ready to predict: where its folders are, its postprocessing, its ensemble, loaded once.

:func:`locate_model` takes what a user has and finds the model folder(s) to run and the postprocessing to apply:

* a ``.zip`` (``sam_nnunet export-model --zip``, ``nnUNetv2_export_model_to_zip``): installed once into a cache
  without trusting it (:func:`sam_nnunet.sharing.model_zip.cached_install`), then read as a results folder;
* a model folder ``TRAINER__PLANS__CONFIG`` (plans.json, dataset.json, fold_X/), e.g. in ``$nnUNet_results`` or
  written by ``sam_nnunet export-model`` / ``export-onnx``;
* a dataset folder ``DatasetXXX_Name``: when it holds ``inference_information.json``
  (``nnUNetv2_find_best_configuration``, ``sam_nnunet crossval``), the winning configuration, a single model or an
  ensemble of several; else its only model;
* a folder holding exactly one of these (a results folder, an export folder, grand-challenge's ``/opt/ml/model``
  holding one zip).

Postprocessing is nnU-Net's choice from cross-validation, read from ``postprocessing.json`` (the ensemble's in
``ensembles/<name>/``, else the model's ``crossval_results_folds_*``), never from ``postprocessing.pkl``, which is a
pickle. Its functions are looked up in :data:`POSTPROCESSING_FUNCTIONS` (nnU-Net's); any other name is refused.

:class:`Model` loads every member's folds once (:func:`sam_nnunet.sharing.trust.trusted_predictor`, or ONNX
Runtime for an ``export-onnx`` folder) and predicts an image array as nnU-Net does: one member through its
predictor (folds averaged, mirroring), several by averaging their class probabilities, as ``nnUNetv2_ensemble``
does with the members' ``.npz`` files; then the postprocessing.
"""
from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np

from sam_nnunet.sharing.card import crossval_folder

INFERENCE_INFORMATION = "inference_information.json"


def _postprocessing_functions() -> dict:
    from nnunetv2.postprocessing.remove_connected_components import \
        remove_all_but_largest_component_from_segmentation

    return {"remove_all_but_largest_component_from_segmentation": remove_all_but_largest_component_from_segmentation}


#: nnU-Net postprocessing functions a model's postprocessing.json may name (filled on first use)
POSTPROCESSING_FUNCTIONS: dict = {}


@dataclass(frozen=True)
class ModelFiles:
    """The model folder(s) to run, in order, and the postprocessing.json to apply (or None)."""
    members: Tuple[Path, ...]
    postprocessing: Optional[Path]
    given: Path

    def describe(self, folds: Optional[Sequence] = None) -> str:
        """The members (with their ``folds`` when given) and the postprocessing, for the log."""
        members = [m.name + (f" folds {f}" if folds else "") for m, f in zip(self.members, folds or self.members)]
        kind = f"ensemble of {len(self.members)}: " if len(self.members) > 1 else ""
        pp = (f"postprocessing {self.postprocessing.parent.name}/{self.postprocessing.name}" if self.postprocessing
              else "no postprocessing")
        return f"{kind}{'; '.join(members)}; {pp}"


def is_model_folder(path: Path) -> bool:
    return (path / "plans.json").is_file() and (path / "dataset.json").is_file()


def _tuples(value):
    """JSON lists back to the tuples (regions) nnU-Net's pickle held; a list of labels stays a list."""
    if isinstance(value, list):
        return [tuple(v) if isinstance(v, list) else v for v in value]
    return value


def read_postprocessing(path: Optional[Path]) -> List[Tuple[Callable, dict]]:
    """(function, kwargs) pairs from nnU-Net's ``postprocessing.json``; unknown function names are refused."""
    if path is None:
        return []
    if not POSTPROCESSING_FUNCTIONS:
        POSTPROCESSING_FUNCTIONS.update(_postprocessing_functions())
    pp = json.loads(path.read_text())
    names, kwargs = pp.get("postprocessing_fns", []), pp.get("postprocessing_kwargs", [])
    unknown = [n for n in names if n not in POSTPROCESSING_FUNCTIONS]
    if unknown or len(names) != len(kwargs):
        raise ValueError(f"{path}: postprocessing {unknown or names} is not nnU-Net's (known: "
                         f"{sorted(POSTPROCESSING_FUNCTIONS)}) or lacks its arguments")
    return [(POSTPROCESSING_FUNCTIONS[n], {k: _tuples(v) for k, v in kw.items()}) for n, kw in zip(names, kwargs)]


def _model_postprocessing(model_dir: Path) -> Optional[Path]:
    folder = crossval_folder(model_dir, holding="postprocessing.json")
    return folder / "postprocessing.json" if folder else None


def _dataset_model(dataset_dir: Path, given: Path) -> ModelFiles:
    """The winning configuration of ``dataset_dir`` (inference_information.json), else its only model folder."""
    info_file = dataset_dir / INFERENCE_INFORMATION
    if info_file.is_file():
        best = json.loads(info_file.read_text())["best_model_or_ensemble"]
        names = [f"{m['trainer']}__{m['plans_identifier']}__{m['configuration']}"
                 for m in best["selected_model_or_models"]]
        members = tuple(dataset_dir / n for n in names)
        missing = [str(m) for m in members if not is_model_folder(m)]
        if missing:
            raise FileNotFoundError(f"{info_file} selects {names}, but {missing} is not there: install every model "
                                    f"of the winning configuration, or give one model folder with -m")
        # its postprocessing_file is a path on the training machine: keep the part inside the dataset folder
        parts = Path(best["postprocessing_file"]).parts
        inside = parts[parts.index(dataset_dir.name) + 1:] if dataset_dir.name in parts else parts[-2:]
        pp = dataset_dir.joinpath(*inside).with_suffix(".json")
        if len(members) == 1 and not pp.is_file():
            pp = _model_postprocessing(members[0]) or pp
        return ModelFiles(members, pp if pp.is_file() else None, given)
    found = sorted(p for p in dataset_dir.iterdir() if is_model_folder(p))
    if len(found) != 1:
        raise ValueError(f"{dataset_dir} holds {len(found)} model folders {[p.name for p in found]} and no "
                         f"{INFERENCE_INFORMATION} saying which to use: give one model folder with -m")
    return ModelFiles((found[0],), _model_postprocessing(found[0]), given)


def locate_model(path: os.PathLike, cache: Optional[os.PathLike] = None) -> ModelFiles:
    """The model to run for ``path`` (module docstring)."""
    from sam_nnunet.sharing.model_zip import DATASET_FOLDER, cached_install

    given = path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"model {path} does not exist (expected a model .zip, a model folder "
                                f"TRAINER__PLANS__CONFIG, a DatasetXXX_Name folder or a folder holding one)")
    if path.is_file():
        if path.suffix.lower() != ".zip":
            raise ValueError(f"model {path} is a file but not a .zip (expected a model zip or a folder)")
        path = cached_install(path, cache)
    for _ in range(3):  # results folder -> dataset folder -> model folder
        if is_model_folder(path):
            return ModelFiles((path,), _model_postprocessing(path), given)
        if DATASET_FOLDER.match(path.name) or (path / INFERENCE_INFORMATION).is_file():
            return _dataset_model(path, given)
        inside = [p for p in path.iterdir() if not p.name.startswith(".")]
        zips = [p for p in inside if p.is_file() and p.suffix.lower() == ".zip"]
        folders = [p for p in inside if p.is_dir()]
        if len(zips) == 1 and not folders:
            path = cached_install(zips[0], cache)
        elif len(folders) == 1:
            path = folders[0]
        else:
            break
    raise ValueError(f"no model found in {given}: expected a model .zip, a model folder TRAINER__PLANS__CONFIG "
                     f"(plans.json, dataset.json, fold_X/), a DatasetXXX_Name folder, or a folder holding exactly one "
                     f"of these")


def select_device(device: str):
    """``auto`` -> cuda, else mps, else cpu; a device that is not available is an error naming what is."""
    import torch

    mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "mps" if mps else "cpu")
    available = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": mps}
    if not available.get(device, False):
        have = [d for d, ok in available.items() if ok]
        raise ValueError(f"device {device!r} is not available here (available: {', '.join(have)})")
    return torch.device(device)


class Model:
    """A located model with every member loaded (module docstring). ``fast``: no mirroring and one fold."""

    def __init__(self, files: ModelFiles, *, folds: Optional[Sequence] = None, device: str = "auto",
                 fast: bool = False, mirroring: bool = True, checkpoint: str = "checkpoint_final.pth",
                 postprocess: bool = True, threads: Optional[int] = None):
        import torch

        from sam_nnunet.cpus import usable_cpus
        from sam_nnunet.export.onnx_model import METADATA_FILE
        from sam_nnunet.sharing.trust import trusted_predictor
        from sam_nnunet.submission.images import model_images

        self.files = files
        self.mirroring = mirroring and not fast
        self.postprocessing = read_postprocessing(files.postprocessing) if postprocess else []
        self.postprocessing_names = [f"{function.__name__}({kwargs})" for function, kwargs in self.postprocessing]
        onnx = (files.members[0] / METADATA_FILE).is_file()
        self.device = torch.device("cpu") if onnx else select_device(device)
        if self.device.type == "cpu":
            torch.set_num_threads(threads or usable_cpus())
        self.predictors, self.folds = [], []
        for member in files.members:
            member_folds = self._folds(member, folds, fast, checkpoint, onnx)
            if onnx:
                from sam_nnunet.export.onnx_predictor import make_predictor

                predictor = make_predictor(member, member_folds, use_mirroring=self.mirroring, allow_tqdm=False)
            else:
                predictor = trusted_predictor(member, member_folds, checkpoint, device=self.device,
                                              use_mirroring=self.mirroring)
            self.predictors.append(predictor)
            self.folds.append(member_folds)
        self.images = model_images(files.members[0])
        self.label_manager = self.predictors[0].label_manager
        self.dataset_json = self.predictors[0].dataset_json
        self.backend = "ONNX Runtime" if onnx else str(self.device)

    @staticmethod
    def _folds(member: Path, folds: Optional[Sequence], fast: bool, weights_file: str, onnx: bool) -> List:
        if onnx:  # an ONNX export's metadata lists its folds
            from sam_nnunet.export.onnx_model import read_export

            available, weights_file = list(read_export(member)["folds"]), "model.onnx"
        else:
            available = sorted((p.parent.name[len("fold_"):] for p in member.glob(f"fold_*/{weights_file}")),
                               key=lambda f: (not f.isdigit(), int(f) if f.isdigit() else 0))
        if not available:
            raise FileNotFoundError(f"model {member} holds no fold_X/{weights_file}; expected the weights of at least "
                                    f"one fold")
        chosen = [str(f) for f in folds] if folds else available
        missing = [f for f in chosen if f not in available]
        if missing:
            raise FileNotFoundError(f"fold(s) {missing} of model {member} have no {weights_file}; the folds with one "
                                    f"are {available}")
        chosen = chosen[:1] if fast else chosen
        return [f if f == "all" else int(f) for f in chosen]

    def describe(self) -> str:
        return f"{self.files.describe(self.folds)}; device {self.backend}, mirroring {'on' if self.mirroring else 'off'}"

    @property
    def labels(self) -> dict:
        """label value -> class name (dataset.json)."""
        return {int(v): k for k, v in self.dataset_json["labels"].items() if isinstance(v, int)}

    def predict(self, data: np.ndarray, properties: dict, probabilities: bool = False):
        """``(segmentation, class probabilities or None)`` for an image as the model's reader returns it."""
        # nnU-Net's preprocessing adds entries to the properties it is given: each member gets its own copy
        if len(self.predictors) == 1 and not probabilities:
            seg = self.predictors[0].predict_single_npy_array(data, copy.deepcopy(properties), None, None, False)
            probs = None
        else:
            outputs = [p.predict_single_npy_array(data, copy.deepcopy(properties), None, None, True)
                       for p in self.predictors]
            probs = np.mean([o[1] for o in outputs], axis=0) if len(outputs) > 1 else outputs[0][1]
            seg = self.label_manager.convert_probabilities_to_segmentation(probs) if len(outputs) > 1 else outputs[0][0]
        for function, kwargs in self.postprocessing:
            seg = function(seg, **kwargs)
        return seg, probs


def load_model(model, **options) -> Model:
    """A :class:`Model` for ``model`` (a path :func:`locate_model` takes, or a Model, returned as is)."""
    if isinstance(model, Model):
        return model
    return Model(locate_model(model), **options)

"""A trained model packed for inference only: what ``nnUNetPredictor`` reads, and nothing else.

``sam_nnunet export-model -d 27 -c 2d -tr HSPSAMTrainer -p nnUNetPlans_SAMvitb -f 0 1 2 3 4 -o DIR`` writes
``DIR/DatasetXXX_Name/TRAINER__PLANS__CONFIG/`` with

* ``plans.json`` and ``dataset.json`` (they carry the network class and its arguments);
* ``fold_X/checkpoint_final.pth`` holding only ``network_weights``, ``trainer_name``,
  ``inference_allowed_mirroring_axes``, ``current_epoch`` and ``init_args`` reduced to
  ``configuration`` and ``fold``.

Why not ``nnUNetv2_export_model_to_zip`` as it is: it ships what training needs to resume (optimizer
state and grad scaler: about twice the weights again for a fully trained ViT), ``debug.json`` (host
paths, the machine's hostname and GPU), the training log and plots. A submission image needs none of
it, and host paths should not leave the machine. The list here is an allow-list, so whatever nnU-Net
adds to its checkpoints later stays out too. The slim checkpoint holds only tensors, strings and
numbers, so it also loads with ``torch.load(..., weights_only=True)``. Checkpoints are read weights-only too
(:func:`sam_nnunet.sharing.trust.load_checkpoint`). ``--zip`` writes one shareable file instead
(:mod:`sam_nnunet.sharing.model_zip`).

Nothing existing is overwritten: the destination model folder must not exist.
"""
from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Iterator, Optional, Sequence, Union

import torch

from sam_nnunet.modeling.common import bare_network
from sam_nnunet.sharing.trust import load_checkpoint

Fold = Union[int, str]
INFERENCE_KEYS = ("network_weights", "trainer_name", "inference_allowed_mirroring_axes", "current_epoch")


def slim_checkpoint(checkpoint: dict) -> dict:
    """The entries of an nnU-Net training checkpoint that prediction reads."""
    missing = [k for k in ("network_weights", "trainer_name", "init_args") if k not in checkpoint]
    if missing:
        raise ValueError(f"not an nnU-Net training checkpoint: it lacks {missing}")
    slim = {k: checkpoint[k] for k in INFERENCE_KEYS if k in checkpoint}
    slim["init_args"] = {k: checkpoint["init_args"][k] for k in ("configuration", "fold")
                         if k in checkpoint["init_args"]}
    if isinstance(slim.get("inference_allowed_mirroring_axes"), list):
        slim["inference_allowed_mirroring_axes"] = tuple(slim["inference_allowed_mirroring_axes"])
    return slim


def check_exportable(model_folder: Union[str, os.PathLike], folds: Sequence[Fold], checkpoint_name: str) -> Path:
    """Refuse a folder without plans.json / dataset.json, no folds, and folds without ``checkpoint_name``
    (unfinished); returns the folder as a Path."""
    src = Path(model_folder)
    for name in ("plans.json", "dataset.json"):
        if not (src / name).is_file():
            raise FileNotFoundError(f"{src} is not a trained nnU-Net model folder: {name} is missing")
    if not list(folds):
        raise ValueError("give at least one fold to export")
    absent = [str(src / f"fold_{f}" / checkpoint_name) for f in folds
              if not (src / f"fold_{f}" / checkpoint_name).is_file()]
    if absent:
        raise FileNotFoundError(f"missing {absent}: these folds have not finished training. Finish them "
                                f"(nnUNetv2_train ... --c) or export other folds.")
    return src


@contextlib.contextmanager
def staged_model_folder(model_folder: Union[str, os.PathLike], out_root: Union[str, os.PathLike], folds: Sequence[Fold],
                        checkpoint_name: str = "checkpoint_final.pth") -> Iterator[Path]:
    """Checks and staging shared by the exports of a trained model folder (``.../DatasetXXX/TRAINER__PLANS__CONFIG``).

    Refuses a folder without plans.json / dataset.json, folds without ``checkpoint_name`` (unfinished) and an
    existing destination ``out_root/DatasetXXX/TRAINER__PLANS__CONFIG``. Yields a temporary folder next to
    the destination holding plans.json and dataset.json; the caller adds the folds. On success the folder
    is renamed to the destination, on any error removed.
    """
    src = check_exportable(model_folder, folds, checkpoint_name)
    dest = Path(out_root) / src.parent.name / src.name
    if dest.exists():
        raise FileExistsError(f"{dest} already exists; not overwriting it. Choose an empty output folder.")
    tmp = dest.with_name(f".{dest.name}.partial-{os.getpid()}")  # per process: two exports never share it
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        for name in ("plans.json", "dataset.json"):
            shutil.copyfile(src / name, tmp / name)
        yield tmp
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def export_model(model_folder: Union[str, os.PathLike], out_root: Union[str, os.PathLike], folds: Sequence[Fold],
                 checkpoint_name: str = "checkpoint_final.pth") -> Path:
    """Copy ``model_folder`` (``.../DatasetXXX/TRAINER__PLANS__CONFIG``) for inference into ``out_root``.

    Returns the new model folder ``out_root/DatasetXXX/TRAINER__PLANS__CONFIG``.
    """
    folds = list(folds)
    with staged_model_folder(model_folder, out_root, folds, checkpoint_name) as tmp:
        for fold in folds:
            checkpoint = load_checkpoint(Path(model_folder) / f"fold_{fold}" / checkpoint_name)
            (tmp / f"fold_{fold}").mkdir()
            torch.save(slim_checkpoint(checkpoint), tmp / f"fold_{fold}" / "checkpoint_final.pth")
    return Path(out_root) / Path(model_folder).parent.name / Path(model_folder).name


def model_folder(dataset: str, configuration: str, trainer: str, plans: str, results: Optional[str] = None) -> Path:
    """``$nnUNet_results/DatasetXXX/TRAINER__PLANS__CONFIG``, named as for ``nnUNetv2_predict``; must exist."""
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    root = results or os.environ.get("nnUNet_results")
    if not root:
        raise ValueError("nnUNet_results is not set: export it as for nnUNetv2_predict")
    model = Path(root) / maybe_convert_to_dataset_name(dataset) / f"{trainer}__{plans}__{configuration}"
    if not model.is_dir():
        raise FileNotFoundError(f"no trained model at {model} (check -d, -c, -tr, -p)")
    return model


def export_from_results(dataset: str, configuration: str, trainer: str, plans: str, folds: Sequence[Fold],
                        out_root: Union[str, os.PathLike], checkpoint_name: str = "checkpoint_final.pth",
                        results: Optional[str] = None) -> Path:
    """:func:`export_model` for a model in ``$nnUNet_results``, named as for ``nnUNetv2_predict``."""
    return export_model(model_folder(dataset, configuration, trainer, plans, results), out_root, folds,
                        checkpoint_name)


def save_fold(trainer, checkpoint_name: str = "checkpoint_final.pth") -> Path:
    """A fold as ``nnUNetv2_train`` leaves it, from an initialised nnU-Net ``trainer`` (any trainer class): the model
    folder's ``plans.json`` and ``dataset.json`` and the trainer's weights as ``fold_X/<checkpoint_name>``, with the
    mirroring axes inference may use. For models made without training (tests, timing); returns the model folder."""
    from batchgenerators.utilities.file_and_folder_operations import save_json

    trainer.configure_rotation_dummyDA_mirroring_and_inital_patch_size()  # sets inference_allowed_mirroring_axes
    os.makedirs(trainer.output_folder, exist_ok=True)
    save_json(trainer.plans_manager.plans, os.path.join(trainer.output_folder_base, "plans.json"), sort_keys=False)
    save_json(trainer.dataset_json, os.path.join(trainer.output_folder_base, "dataset.json"), sort_keys=False)
    trainer.save_checkpoint(os.path.join(trainer.output_folder, checkpoint_name))
    return Path(trainer.output_folder_base)


def load_fold_network(model_folder: Union[str, os.PathLike], fold: Fold, checkpoint_name: str = "checkpoint_final.pth"):
    """The network of one trained fold, built and loaded as ``nnUNetv2_predict`` does (deep supervision off,
    eval mode, CPU). Returns ``(network, predictor)``; the predictor carries plans, dataset.json, trainer
    name and mirroring axes. A fold without ``checkpoint_name`` is refused: it has not finished training."""
    from sam_nnunet.sharing.trust import trusted_predictor

    source = Path(model_folder) / f"fold_{fold}" / checkpoint_name
    if not source.is_file():
        raise FileNotFoundError(f"no {checkpoint_name} in {source.parent}: the fold has not finished training "
                                f"(nnUNetv2_train ... --c) or the checkpoint has another name")
    predictor = trusted_predictor(model_folder, (fold,), checkpoint_name)
    network = bare_network(predictor.network)  # nnUNet_compile=true wraps it
    network.load_state_dict(predictor.list_of_parameters[0])
    return network.eval(), predictor

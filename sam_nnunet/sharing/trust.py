"""Loading a model someone else trained without running their code.

A model folder or zip from elsewhere holds three kinds of thing that nnU-Net turns into code:

* ``fold_X/checkpoint_*.pth``: a pickle. nnU-Net's predictor loads it with ``torch.load(weights_only=False)``,
  which calls whatever the pickle names (``os.system`` included). :func:`load_checkpoint` loads it with
  ``weights_only=True`` and an allow-list (:data:`ALLOWED_GLOBALS`) of the types nnU-Net checkpoints hold besides
  torch's own (tensors, ``OrderedDict``, ``torch.device``): numpy scalars and arrays, which nnU-Net versions
  keep in the training log. A file that names anything else is refused by name (:class:`UntrustedModelError`),
  and nothing from it runs.
* ``plans.json``: nnU-Net imports the network class it names (``pydoc.locate``) and calls it with the plans'
  arguments, some of them class names too (``_kw_requires_import``). :func:`check_plans` accepts classes of
  :data:`NETWORK_MODULES` only.
* ``postprocessing.pkl``: a pickle of function references. It is never loaded here; the same choice is read
  from ``postprocessing.json`` (:mod:`sam_nnunet.sharing.model`).

The trainer class (``trainer_name`` in a checkpoint) and the image reader (plans' ``image_reader_writer``) are
looked up by name among installed classes only, as nnU-Net does, so they run installed code, not the model's.

:func:`trusted_predictor` builds nnU-Net's ``nnUNetPredictor`` from a model folder this way: what
``initialize_from_trained_model_folder`` does, with :func:`load_checkpoint` instead of its unsafe load.
"""
from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path
from typing import List, Optional, Sequence, Union

import numpy as np
import torch

#: module prefixes a plans.json may name for its network and the classes in its arguments
NETWORK_MODULES = ("dynamic_network_architectures.", "sam_nnunet.", "torch.nn.")


def _numpy_globals() -> list:
    core = getattr(np, "_core", None) or np.core  # numpy 2 renamed numpy.core
    dtypes = [type(np.dtype(t)) for t in (np.float16, np.float32, np.float64, np.int8, np.int16, np.int32, np.int64,
                                          np.uint8, np.uint16, np.uint32, np.uint64, np.bool_)]
    return [core.multiarray.scalar, core.multiarray._reconstruct, np.ndarray, np.dtype] + dtypes


#: what an nnU-Net checkpoint may hold besides what ``weights_only=True`` allows by itself
ALLOWED_GLOBALS = _numpy_globals()


class UntrustedModelError(ValueError):
    """A model file that would run code when loaded, or names a class outside the allowed packages."""


def _global_name(obj) -> str:
    return f"{obj.__module__}.{obj.__qualname__}"


def _allowing():
    """:data:`ALLOWED_GLOBALS` allowed for one load (torch >= 2.5), or from now on (torch 2.4); older torch has no
    allow-list, so its weights-only load refuses numpy objects too."""
    serialization = torch.serialization
    if hasattr(serialization, "safe_globals"):
        return serialization.safe_globals(ALLOWED_GLOBALS)
    if hasattr(serialization, "add_safe_globals"):
        serialization.add_safe_globals(ALLOWED_GLOBALS)
    return contextlib.nullcontext()


def _unsafe_globals(path: Path) -> List[str]:
    """The globals ``path``'s pickle names that a weights-only load refuses, read without running any of them."""
    allowed = {_global_name(g) for g in ALLOWED_GLOBALS}
    try:
        if hasattr(torch.serialization, "get_unsafe_globals_in_checkpoint"):  # torch >= 2.5
            names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        else:
            from sam_nnunet.modeling.weights.checkpoint_files import peek_checkpoint

            peeked = peek_checkpoint(path)
            names = [n for n in (peeked[1] if peeked else []) if not n.startswith(("torch.", "collections."))]
    except Exception:  # not a torch zip file at all
        return []
    return [n for n in names if n not in allowed]


def load_checkpoint(path: Union[str, os.PathLike], map_location="cpu") -> dict:
    """``torch.load(path, weights_only=True)`` with :data:`ALLOWED_GLOBALS`; a file naming anything else is refused
    with :class:`UntrustedModelError` naming it (the file's code is not run)."""
    path = Path(path)
    try:
        with _allowing():
            return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:
        unsafe = _unsafe_globals(path)
        if unsafe:
            raise UntrustedModelError(
                f"{path} was not loaded: it names {', '.join(unsafe)}, which nnU-Net checkpoints do not hold (tensors, "
                f"dicts, lists, numbers, strings, torch.device, numpy scalars and arrays). Loading it would run that "
                f"code. If you made this file yourself, re-export it with sam_nnunet export-model; otherwise ask its "
                f"author for a model exported that way.") from None
        raise UntrustedModelError(f"{path} is not a readable PyTorch checkpoint ({type(error).__name__}: "
                                  f"{str(error).strip().splitlines()[0] if str(error).strip() else ''})") from error


def _outside(name: str) -> bool:
    return not any(name.startswith(prefix) for prefix in NETWORK_MODULES)


def check_plans(plans: dict, source: Union[str, os.PathLike] = "plans.json") -> None:
    """Refuse plans whose configurations name a network class, or a class among its arguments, outside
    :data:`NETWORK_MODULES` (nnU-Net would import and call it)."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    manager = PlansManager(plans)
    for configuration in plans.get("configurations", {}):
        arch = manager.get_configuration(configuration).configuration.get("architecture", {})
        kwargs = arch.get("arch_kwargs", {})
        named = [arch.get("network_class_name")] + [kwargs.get(k) for k in arch.get("_kw_requires_import", ())]
        bad = [str(n) for n in named if n is not None and _outside(str(n))]
        if bad:
            raise UntrustedModelError(
                f"{source}: configuration {configuration!r} names {bad}; a model's plans may name classes of "
                f"{', '.join(p.rstrip('.') for p in NETWORK_MODULES)} only (nnU-Net imports and calls them)")


def trusted_predictor(model_dir: Union[str, os.PathLike], folds: Optional[Sequence] = None,
                      checkpoint_name: str = "checkpoint_final.pth", *, device: Union[str, torch.device] = "cpu",
                      use_mirroring: bool = True, tile_step_size: float = 0.5, allow_tqdm: bool = False):
    """nnU-Net's ``nnUNetPredictor`` for ``model_dir`` (``TRAINER__PLANS__CONFIG``), initialised as
    ``initialize_from_trained_model_folder`` does but with checkpoints and plans vetted (module docstring).
    ``folds``: None for every fold with ``checkpoint_name``."""
    import inspect

    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from sam_nnunet import trainers_folder

    model_dir, device = Path(model_dir), torch.device(device)
    os.environ.setdefault("nnUNet_extTrainer", trainers_folder())  # our trainers are found by name
    if folds is None:
        folds = sorted((p.parent.name[len("fold_"):] for p in model_dir.glob(f"fold_*/{checkpoint_name}")),
                       key=lambda f: (not f.isdigit(), int(f) if f.isdigit() else 0))
    folds = [f if str(f) == "all" else int(f) for f in folds]
    if not folds:
        raise FileNotFoundError(f"{model_dir} holds no fold_X/{checkpoint_name}")
    plans = load_json(str(model_dir / "plans.json"))
    check_plans(plans, model_dir / "plans.json")
    dataset_json = load_json(str(model_dir / "dataset.json"))
    plans_manager = PlansManager(plans)
    checkpoints = [load_checkpoint(model_dir / f"fold_{f}" / checkpoint_name) for f in folds]
    first = checkpoints[0]
    configuration_manager = plans_manager.get_configuration(first["init_args"]["configuration"])
    with contextlib.redirect_stdout(io.StringIO()):  # nnU-Net narrates its search; a miss is reported below
        trainer_class = recursive_find_trainer_class_by_name(first["trainer_name"])
    if trainer_class is None:
        raise ValueError(f"{model_dir}: trainer {first['trainer_name']!r} is not installed here (nnU-Net's trainers "
                         f"and sam_nnunet's are; install the package that defines it)")
    arguments = (plans_manager, configuration_manager,
                 determine_num_input_channels(plans_manager, configuration_manager, dataset_json),
                 plans_manager.get_label_manager(dataset_json).num_segmentation_heads)
    if "plans_manager" not in inspect.signature(trainer_class.build_network_architecture).parameters:
        raise ValueError(f"trainer {first['trainer_name']} uses nnU-Net's old build_network_architecture signature; "
                         f"nnunetv2 >= 2.6 trainers only")
    network = trainer_class.build_network_architecture(*arguments, enable_deep_supervision=False)
    parameters: List[dict] = [c["network_weights"] for c in checkpoints]
    network.load_state_dict(parameters[0])
    with contextlib.redirect_stdout(io.StringIO()):  # its notes on CPU devices
        predictor = nnUNetPredictor(tile_step_size=tile_step_size, use_gaussian=True, use_mirroring=use_mirroring,
                                    perform_everything_on_device=device.type == "cuda", device=device,
                                    allow_tqdm=allow_tqdm)
    predictor.manual_initialization(network, plans_manager, configuration_manager, parameters, dataset_json,
                                    first["trainer_name"], first.get("inference_allowed_mirroring_axes"))
    return predictor

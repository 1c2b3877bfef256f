"""SAM plans: derive a plans file for SAM networks from nnU-Net's own plans of a dataset.

nnU-Net plans its patch and batch sizes for a U-Net. A SAM encoder wants patches that are multiples
of its 16-pixel patch size and a batch size that fits a ViT. A preset (JSON in the project's
``plans/``) gives, per configuration, ``batch_size``, ``patch_size``, a ``"sam_nnunet"`` block of
network arguments (e.g. the encoder) and optionally a ``"training"`` block of settings per trainer
(``{"HSPSAMTrainer": {"learning_rate": 1e-3}}``: applies to that trainer and its variants; see
``SAMTrainerBase``), written to the configuration's ``sam_nnunet_training``. The derived plans keep nnU-Net's data identifier, so they use
the preprocessed data that ``nnUNetv2_plan_and_preprocess`` already wrote. This edits plans instead
of subclassing a planner because nnU-Net only finds planners inside its own package.

The same plans also serve ``nnUNetTrainer`` (the benchmark's side-by-side rows), so when a preset
changes the patch size, the plain U-Net's topology in ``architecture`` is derived again for the new
patch with nnU-Net's own rule (``get_pool_and_conv_props``: pool until an edge would drop below 4),
as nnU-Net's planner would have: nnU-Net's 8-stage 2D U-Net for Kvasir's 640 x 640 patch would pool a
128 x 128 patch down to 1 x 1 and fail. SAM trainers replace ``architecture`` with their own network.
"""
from __future__ import annotations

import copy
import json
import math
import os
from pathlib import Path
from typing import List, Optional

#: a configuration's training settings per trainer, from a preset's ``"training"`` block (read by ``SAMTrainerBase``)
TRAINING_KEY = "sam_nnunet_training"

#: the preset ``sam_nnunet plans`` uses by default: the one measured best on 2 CPU cores at 60 minutes
CPU_PRESET = "cpu_p8"


def presets_dir() -> Path:
    """The installed ``plans/`` folder of the project (package ``sam_nnunet.plans_presets``)."""
    from sam_nnunet import plans_presets

    return Path(list(plans_presets.__path__)[0])


def available_presets() -> List[str]:
    return sorted(p.stem for p in presets_dir().glob("*.json"))


def load_preset(name_or_path: str) -> dict:
    path = Path(name_or_path)
    if not path.is_file():
        path = presets_dir() / f"{name_or_path}.json"
    if not path.is_file():
        raise FileNotFoundError(f"plans preset {name_or_path!r} not found; presets: {available_presets()} "
                                f"(or give a path to a JSON file)")
    return json.loads(path.read_text())


def round_patch(patch: List[int], multiple: int = 16) -> List[int]:
    """Round the in-plane (last two) axes down to a multiple (at least one multiple)."""
    out = list(patch)
    for i in (-2, -1):
        out[i] = max(multiple, out[i] // multiple * multiple)
    return out


def derive_sam_plans(nnunet_plans: dict, preset: dict) -> dict:
    """nnU-Net plans + preset -> SAM plans (a new dict; the input is not modified)."""
    plans = copy.deepcopy(nnunet_plans)
    plans["plans_name"] = preset["plans_name"]
    for name, settings in preset["configurations"].items():
        if name not in plans["configurations"]:
            continue
        conf = plans["configurations"][name]
        patch = settings.get("patch_size", conf["patch_size"])
        if len(patch) != len(conf["patch_size"]):
            raise ValueError(f"preset patch_size {patch} for {name} has {len(patch)} axes; nnU-Net's has "
                             f"{len(conf['patch_size'])}")
        conf["patch_size"] = round_patch(patch)
        _fit_unet_to_patch(conf)
        conf["batch_size"] = int(settings.get("batch_size", conf["batch_size"]))
        conf["sam_nnunet"] = dict(settings.get("sam_nnunet", {}))
        if "training" in settings:
            conf[TRAINING_KEY] = copy.deepcopy(settings["training"])
    return plans


def _fit_unet_to_patch(conf: dict) -> None:
    """Re-derive a PlainConvUNet/ResidualEncoderUNet topology in ``conf["architecture"]`` for ``conf["patch_size"]``."""
    from nnunetv2.experiment_planning.experiment_planners.network_topology import get_pool_and_conv_props

    kwargs = conf.get("architecture", {}).get("arch_kwargs", {})
    if not {"n_stages", "strides", "kernel_sizes", "features_per_stage"} <= set(kwargs):
        return
    _, strides, kernels, _, _ = get_pool_and_conv_props(conf["spacing"], conf["patch_size"], 4, 999999)
    # the patch must stay divisible by the total stride (SAM patches are multiples of 16, not of 2^n)
    while len(strides) > 1 and any(p % math.prod(s[i] for s in strides) for i, p in enumerate(conf["patch_size"])):
        strides, kernels = strides[:-1], kernels[:-1]
    n, old = len(strides), kwargs["n_stages"]
    features = list(kwargs["features_per_stage"])
    features += [features[-1]] * max(0, n - len(features))
    kwargs.update(n_stages=n, strides=[list(s) for s in strides], kernel_sizes=[list(k) for k in kernels],
                  features_per_stage=features[:n])
    for key, length in (("n_conv_per_stage", n), ("n_blocks_per_stage", n), ("n_conv_per_stage_decoder", n - 1)):
        if key in kwargs:
            values = list(kwargs[key])
            kwargs[key] = (values + [values[-1]] * length)[:length]
    if n != old:
        conf["architecture"]["arch_kwargs"] = kwargs


def write_sam_plans(dataset: str, preset: str, source_plans: str = "nnUNetPlans",
                    preprocessed_root: Optional[str] = None) -> Path:
    root = Path(preprocessed_root or os.environ.get("nnUNet_preprocessed", ""))
    if not str(root) or not root.is_dir():
        raise FileNotFoundError("nnUNet_preprocessed is not set or does not exist")
    folder = _dataset_folder(root, dataset)
    src = folder / f"{source_plans}.json"
    if not src.is_file():
        raise FileNotFoundError(f"{src} not found: run nnUNetv2_plan_and_preprocess for this dataset first")
    plans = derive_sam_plans(json.loads(src.read_text()), load_preset(preset))
    out = folder / f"{plans['plans_name']}.json"
    if out.exists() and json.loads(out.read_text()) != plans:
        raise FileExistsError(f"{out} exists with different content; not overwriting it (remove it first)")
    out.write_text(json.dumps(plans, indent=4))
    return out


def _dataset_folder(root: Path, dataset: str) -> Path:
    if dataset.isdigit():
        matches = sorted(root.glob(f"Dataset{int(dataset):03d}_*"))
        if len(matches) != 1:
            raise FileNotFoundError(f"expected one Dataset{int(dataset):03d}_* folder in {root}, found {matches}")
        return matches[0]
    return root / dataset

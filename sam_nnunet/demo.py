"""``sam_nnunet demo``: the whole pipeline on the shipped ACDC data, on CPU, with the real commands.

Convert (``sam_nnunet convert-acdc``), plan and preprocess (``nnUNetv2_plan_and_preprocess``), SAM plans
(``sam_nnunet plans --preset``), train (``nnUNetv2_train``), predict the held-out patients (``nnUNetv2_predict``),
score them (``nnUNetv2_evaluate_simple``) and export the model to share (``sam_nnunet export-model --zip``, to
``OUT/model.zip``), each printed before it runs, in a new ``--out`` folder.
"""
from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional

from sam_nnunet import nnunet_env
from sam_nnunet.plans import CPU_PRESET, load_preset

TRAINERS = ["HSPSAMTrainer", "SelfPromptSAMTrainer", "PGSAMTrainer", "ESPMedSAMTrainer"]


def _run(cmd: List[str], env: Dict[str, str]) -> None:
    print("\n$ " + " ".join(shlex.quote(c) for c in cmd), flush=True)
    subprocess.run(cmd, env=env, check=True)


def cmd_demo(args: argparse.Namespace) -> int:
    """Convert -> plan/preprocess -> SAM plans -> train -> predict -> Dice, on CPU, with the real CLIs."""
    out = Path(args.out).resolve()
    if out.exists() and any(out.iterdir()):
        print(f"{out} is not empty; choose a new --out folder (the demo never overwrites results).", file=sys.stderr)
        return 2
    env = dict(os.environ, **nnunet_env(out), nnUNet_n_proc_DA=str(args.processes),
               nnUNet_def_n_proc=str(args.processes), nnUNet_compile="false",
               SAM_NNUNET_ITERATIONS_PER_EPOCH=str(args.iterations), SAM_NNUNET_SEED=str(args.seed),
               SAM_NNUNET_VAL_ITERATIONS_PER_EPOCH=str(max(1, args.iterations // 5)))
    d = str(args.dataset_id)
    raw = out / "nnUNet_raw" / f"Dataset{args.dataset_id:03d}_ACDC"
    preset = load_preset(args.preset)  # a missing preset fails here, before any work
    plans_name = preset["plans_name"]
    method = args.trainer or _preset_trainer(preset) or "HSPSAMTrainer"
    _check_preset_fits(preset, args.preset, method)
    trainer = f"{method}_{args.epochs}epochs" if args.epochs != 1 else f"{method}_1epoch"
    _run([sys.executable, "-m", "sam_nnunet.cli", "convert-acdc", "-i", args.input, "-d", d,
          "--patients", str(args.patients), "--holdout", str(args.holdout)], env)
    _run(["nnUNetv2_plan_and_preprocess", "-d", d, "-c", "2d", "-np", str(args.processes),
          "--verify_dataset_integrity"], env)
    _run([sys.executable, "-m", "sam_nnunet.cli", "plans", "-d", d, "--preset", args.preset], env)
    _run(["nnUNetv2_train", d, "2d", "0", "-tr", trainer, "-p", plans_name, "-device", "cpu"], env)
    pred = out / "predictions"
    _run(["nnUNetv2_predict", "-i", str(raw / "imagesTs"), "-o", str(pred), "-d", d, "-c", "2d", "-tr", trainer,
          "-p", plans_name, "-f", "0", "-device", "cpu", "-npp", "1", "-nps", "1"], env)
    _run(["nnUNetv2_evaluate_simple", str(raw / "labelsTs"), str(pred), "-l", "1", "2", "3"], env)
    import json

    summary = json.loads((pred / "summary.json").read_text())
    names = {"1": "RV", "2": "MLV", "3": "LVC"}
    per_class = ", ".join(f"{names[k]} {v['Dice']:.3f}" for k, v in summary["mean"].items())
    print(f"\nHeld-out Dice ({len(summary['metric_per_case'])} volumes): {per_class}; "
          f"mean {summary['foreground_mean']['Dice']:.3f}")
    _run([sys.executable, "-m", "sam_nnunet.cli", "export-model", "-d", d, "-c", "2d", "-tr", trainer, "-p",
          plans_name, "-f", "0", "--zip", str(out / "model.zip")], env)
    example = sorted((raw / "imagesTs").glob("*.nii.gz"))[0]
    print(f"\nPredict any image with the shared model: sam_nnunet predict -i {example} -o {out / 'one'} "
          f"-m {out / 'model.zip'}")
    return 0


def _preset_trainer(preset: dict) -> Optional[str]:
    """The one trainer a preset's training blocks name (a prior preset's, e.g. cpu_medsam: ESPMedSAMTrainer), or None."""
    named = {t for settings in preset["configurations"].values() for t in settings.get("training", {})}
    return named.pop() if len(named) == 1 else None


def _check_preset_fits(preset: dict, name: str, trainer: str) -> None:
    """Before any work: every network argument the preset sets is one the trainer's network takes, and a pretrained
    file the preset names is named for this trainer (else it would train without it)."""
    import importlib
    import inspect

    cls = getattr(importlib.import_module(f"sam_nnunet.trainers.{trainer}"), trainer)
    accepted = set(inspect.signature(cls._network_cls().__init__).parameters)
    for configuration, settings in preset["configurations"].items():
        named = sorted(settings.get("training", {}))
        made_for = f"; it is made for {', '.join(named)} (--trainer)" if named else ""
        unknown = sorted(set(settings.get("sam_nnunet", {})) - accepted)
        if unknown:
            raise ValueError(f"preset {name!r} ({configuration}) sets {unknown}, which {trainer}'s network does not "
                             f"take" + made_for)
        priors = {t: s["checkpoint"] for t, s in settings.get("training", {}).items() if "checkpoint" in s}
        if priors and trainer not in priors:
            raise ValueError(f"preset {name!r} ({configuration}) starts {', '.join(sorted(priors))} from "
                             f"{sorted(set(priors.values()))}; {trainer} would train without it" + made_for)


def register(sub) -> None:
    dm = sub.add_parser("demo", help="end-to-end HSP-SAM on the shipped ACDC data, on CPU")
    dm.add_argument("-i", "--input", default="../shared/data/ACDC")
    dm.add_argument("--out", required=True, help="new folder for all nnU-Net data and results")
    dm.add_argument("-d", "--dataset-id", type=int, default=27)
    dm.add_argument("--patients", type=int, default=20)
    dm.add_argument("--holdout", type=int, default=4)
    dm.add_argument("--trainer", choices=TRAINERS,
                    help="the method (default: the trainer a prior preset is made for, e.g. ESPMedSAMTrainer for "
                         "cpu_medsam; else HSPSAMTrainer)")
    dm.add_argument("--epochs", type=int, default=20, choices=[1, 5, 10, 20, 50, 100, 250])
    dm.add_argument("--iterations", type=int, default=50, help="training iterations per epoch")
    dm.add_argument("--processes", type=int, default=2)
    dm.add_argument("--seed", type=int, default=0)
    dm.add_argument("--preset", default=CPU_PRESET, help=f"SAM plans preset in plans/ or a JSON path (default "
                    f"{CPU_PRESET}, the one measured best at 60 minutes; cpu_tiny is the fastest)")
    dm.set_defaults(func=cmd_demo)

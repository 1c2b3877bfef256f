"""``sam_nnunet`` command line: environment, dataset conversion, SAM plans, the CPU demo, cross-validation,
evaluation reports, inference-only model export, encoder export, ONNX export and ONNX Runtime prediction."""
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


def cmd_env(args: argparse.Namespace) -> int:
    """Print the exports nnU-Net needs to find the trainers (and, with --root, its data folders)."""
    print("\n".join(f"export {var}={shlex.quote(value)}" for var, value in nnunet_env(args.root).items()))
    return 0


def cmd_weights(args: argparse.Namespace) -> int:
    """List the named pretrained files this install can use (offline), each verified by size and SHA-256."""
    import json

    from sam_nnunet.modeling.pretrained_files import describe_all

    rows = describe_all()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for row in rows:
        print(f"{row['name']}: {row['file']}, {row['bytes']:,} bytes, SHA-256 {row['sha256']}")
        print(f"  licence:  {row['licence']}")
        print(f"  source:   {row['source']}")
        print(f"  contents: {row['description']}")
        for trainer, parts in row["initialises"].items():
            print(f"  {trainer}: {parts}")
        print(f"  path:     {row['path'] or '-'}")
        print(f"  status:   {row['status']}")
        print(f"  use:      SAM_NNUNET_CHECKPOINT={row['name']} (install: {row['install']})")
    return 0


def cmd_convert_acdc(args: argparse.Namespace) -> int:
    from sam_nnunet.datasets.acdc import convert_acdc

    convert_acdc(args.input, args.dataset_id, max_patients=args.patients, holdout=args.holdout)
    return 0


def cmd_plans(args: argparse.Namespace) -> int:
    from sam_nnunet.plans import write_sam_plans

    out = write_sam_plans(args.dataset, args.preset, args.source_plans)
    print(f"wrote {out}  (use: nnUNetv2_train ... -p {out.stem})")
    return 0


def cmd_export_model(args: argparse.Namespace) -> int:
    from sam_nnunet.export import export_from_results

    folds = [f if f == "all" else int(f) for f in args.folds]
    out = export_from_results(args.dataset, args.configuration, args.trainer, args.plans, folds, args.out,
                              args.checkpoint)
    print(f"exported folds {args.folds} for inference: {out}")
    return 0


def cmd_export_encoder(args: argparse.Namespace) -> int:
    from sam_nnunet.export_encoder import export_encoder_from_results

    fold = args.fold if args.fold == "all" else int(args.fold)
    out = export_encoder_from_results(args.dataset, args.configuration, args.trainer, args.plans, fold, args.out,
                                      args.checkpoint)
    print(f"wrote the image encoder of fold {args.fold} in SAM's checkpoint layout: {out}\n"
          f"use it as pretrained weights: SAM_NNUNET_CHECKPOINT={out} nnUNetv2_train ...")
    return 0


def cmd_export_onnx(args: argparse.Namespace) -> int:
    from sam_nnunet.onnx_export import export_onnx_from_results

    folds = [f if f == "all" else int(f) for f in args.folds]
    out = export_onnx_from_results(args.dataset, args.configuration, args.trainer, args.plans, folds, args.out,
                                   args.checkpoint)
    print(f"exported folds {args.folds} to ONNX: {out}\npredict with: sam_nnunet predict-onnx -i IN -o OUT -m {out}")
    return 0


def cmd_predict_onnx(args: argparse.Namespace) -> int:
    from sam_nnunet.onnx_predictor import predict_onnx

    predict_onnx(args.i, args.o, args.m, args.f, tile_step_size=args.step_size, use_mirroring=not args.disable_tta,
                 save_probabilities=args.save_probabilities, overwrite=not args.continue_prediction, npp=args.npp,
                 nps=args.nps, threads=args.threads, verbose=args.verbose, allow_tqdm=not args.disable_progress_bar)
    return 0


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


def trained_model_args(p: argparse.ArgumentParser) -> None:
    """-d -c -tr -p: a trained model in $nnUNet_results, named as for nnUNetv2_predict."""
    p.add_argument("-d", "--dataset", required=True, help="dataset id or DatasetXXX_Name")
    p.add_argument("-c", "--configuration", required=True)
    p.add_argument("-tr", "--trainer", required=True)
    p.add_argument("-p", "--plans", default="nnUNetPlans")


def folds_out_args(p: argparse.ArgumentParser) -> None:
    """-f -o --checkpoint of the commands that export a model folder."""
    p.add_argument("-f", "--folds", nargs="+", default=["0", "1", "2", "3", "4"])
    p.add_argument("-o", "--out", required=True, help="output folder (the model folder inside must not exist)")
    p.add_argument("--checkpoint", default="checkpoint_final.pth", help="checkpoint to export from each fold")


def register_distill(sub) -> None:
    """``sam_nnunet distill`` (the module itself, which imports torch, loads when the command runs)."""
    d = sub.add_parser("distill", help="MMDKD: distil ESP-MedSAM's TinyViT student (+ modality bags) from a teacher",
                       description="Eq. 1 of ESP-MedSAM: the student's image embedding (without bags, and with the "
                                   "bags of each dataset's modality) regressed onto the teacher's, on the preprocessed "
                                   "2d data in $nnUNet_preprocessed. Writes a checkpoint for ESPMedSAMTrainer "
                                   "(SAM_NNUNET_CHECKPOINT); resumes from OUT.partial.")
    d.add_argument("-d", "--datasets", nargs="+", required=True, help="dataset ids or names (preprocessed 2d data)")
    d.add_argument("-c", "--configuration", default="2d")
    d.add_argument("-p", "--plans", default="nnUNetPlans", help="plans of the data (patch size, data folder)")
    d.add_argument("-o", "--out", required=True, help="student checkpoint to write (.pth; must not exist)")
    d.add_argument("--teacher-model", help="trained teacher model folder (…/ESPMedSAMTeacherTrainer__PLANS__2d)")
    d.add_argument("-f", "--teacher-fold", default="0", help="fold of --teacher-model")
    d.add_argument("--teacher-checkpoint", help="or: a SAM/MedSAM checkpoint (universal term only: it has no bags)")
    d.add_argument("--student", default="tiny_vit_5m", help="TinyViT size (registry.LIGHT_ENCODERS)")
    d.add_argument("--init", help="start the student from this file (e.g. MobileSAM's mobile_sam.pt)")
    d.add_argument("--steps", type=int, default=2000)
    d.add_argument("--batch-size", type=int, default=8)
    d.add_argument("--lr", type=float, default=1e-3)
    d.add_argument("--fold", type=int, default=0, help="use the training cases of this fold of splits_final.json")
    d.add_argument("--save-every", type=int, default=100, help="steps between resume points")
    d.add_argument("--device", default="cpu")
    d.add_argument("--seed", type=int, default=0)
    d.set_defaults(func=cmd_distill)


def cmd_distill(args: argparse.Namespace) -> int:
    from sam_nnunet.distill import distill

    distill(datasets=args.datasets, out=args.out, configuration=args.configuration, plans=args.plans,
            teacher_model=args.teacher_model, teacher_fold=args.teacher_fold,
            teacher_checkpoint=args.teacher_checkpoint, student=args.student, init=args.init, steps=args.steps,
            batch_size=args.batch_size, lr=args.lr, fold=args.fold, save_every=args.save_every, device=args.device,
            seed=args.seed)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sam_nnunet", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    e = sub.add_parser("env", help="print the exports nnU-Net needs (eval \"$(sam_nnunet env)\")")
    e.add_argument("--root", help="also export nnUNet_raw/_preprocessed/_results under this folder")
    e.set_defaults(func=cmd_env)

    w = sub.add_parser("weights", help="list the pretrained files this install can use offline (name, SHA-256, "
                                       "licence, what they initialise); SAM_NNUNET_CHECKPOINT takes the name")
    w.add_argument("--json", action="store_true", help="print the list as JSON")
    w.set_defaults(func=cmd_weights)

    a = sub.add_parser("convert-acdc", help="ACDC (official layout) -> nnU-Net raw dataset + patient splits")
    a.add_argument("-i", "--input", required=True, help="ACDC folder holding training/ (and testing/)")
    a.add_argument("-d", "--dataset-id", type=int, default=27)
    a.add_argument("--patients", type=int, default=None, help="use only the first N patients")
    a.add_argument("--holdout", type=int, default=0, help="last N patients -> imagesTs/labelsTs")
    a.set_defaults(func=cmd_convert_acdc)

    pl = sub.add_parser("plans", help="derive SAM plans from nnU-Net's plans (same preprocessed data)")
    pl.add_argument("-d", "--dataset", required=True, help="dataset id or DatasetXXX_Name")
    pl.add_argument("--preset", default=CPU_PRESET, help=f"preset name in plans/ or a JSON path (default {CPU_PRESET})")
    pl.add_argument("--source-plans", default="nnUNetPlans")
    pl.set_defaults(func=cmd_plans)

    dm = sub.add_parser("demo", help="end-to-end HSP-SAM on the shipped ACDC data, on CPU")
    dm.add_argument("-i", "--input", default="../shared/data/ACDC")
    dm.add_argument("--out", required=True, help="new folder for all nnU-Net data and results")
    dm.add_argument("-d", "--dataset-id", type=int, default=27)
    dm.add_argument("--patients", type=int, default=20)
    dm.add_argument("--holdout", type=int, default=4)
    dm.add_argument("--trainer", choices=["HSPSAMTrainer", "SelfPromptSAMTrainer", "PGSAMTrainer", "ESPMedSAMTrainer"],
                    help="the method (default: the trainer a prior preset is made for, e.g. ESPMedSAMTrainer for "
                         "cpu_medsam; else HSPSAMTrainer)")
    dm.add_argument("--epochs", type=int, default=20, choices=[1, 5, 10, 20, 50, 100, 250])
    dm.add_argument("--iterations", type=int, default=50, help="training iterations per epoch")
    dm.add_argument("--processes", type=int, default=2)
    dm.add_argument("--seed", type=int, default=0)
    dm.add_argument("--preset", default=CPU_PRESET, help=f"SAM plans preset in plans/ or a JSON path (default "
                    f"{CPU_PRESET}, the one measured best at 60 minutes; cpu_tiny is the fastest)")
    dm.set_defaults(func=cmd_demo)

    ex = sub.add_parser("export-model", help="copy a trained model for inference only (weights, plans, dataset.json)",
                        description="Writes OUT/DatasetXXX/TRAINER__PLANS__CONFIG with plans.json, dataset.json and "
                                    "fold_X/checkpoint_final.pth reduced to what nnUNetv2_predict reads (no optimizer "
                                    "state, logs or debug.json). Reads $nnUNet_results.")
    trained_model_args(ex)
    folds_out_args(ex)
    ex.set_defaults(func=cmd_export_model)

    ee = sub.add_parser("export-encoder", help="write a trained fold's image encoder as a SAM checkpoint",
                        description="Writes the fold's ViT and neck (LoRA merged) under official SAM checkpoint keys, "
                                    "loadable by every trainer through SAM_NNUNET_CHECKPOINT. Reads $nnUNet_results.")
    trained_model_args(ee)
    ee.add_argument("-f", "--fold", default="0")
    ee.add_argument("-o", "--out", required=True, help="output .pth file (must not exist)")
    ee.add_argument("--checkpoint", default="checkpoint_final.pth", help="checkpoint of the fold to read")
    ee.set_defaults(func=cmd_export_encoder)

    eo = sub.add_parser("export-onnx", help="write trained folds as ONNX models (for sam_nnunet predict-onnx)",
                        description="Writes OUT/DatasetXXX/TRAINER__PLANS__CONFIG with plans.json, dataset.json, "
                                    "onnx_export.json and fold_X/model.onnx (patch-sized input, dynamic batch), each "
                                    "checked against torch with ONNX Runtime. Reads $nnUNet_results.")
    trained_model_args(eo)
    folds_out_args(eo)
    eo.set_defaults(func=cmd_export_onnx)

    po = sub.add_parser("predict-onnx", help="nnUNetv2_predict with ONNX Runtime (a folder from export-onnx)",
                        description="nnU-Net's preprocessing, sliding window (Gaussian, mirroring, fold ensemble) and "
                                    "export with ONNX Runtime running the network. Options as nnUNetv2_predict.")
    po.add_argument("-i", required=True, help="input folder (files named CASE_XXXX.ext, as for nnUNetv2_predict)")
    po.add_argument("-o", required=True, help="output folder")
    po.add_argument("-m", required=True, help="exported model folder: EXPORT/DatasetXXX/TRAINER__PLANS__CONFIG")
    po.add_argument("-f", nargs="+", default=None, help="folds to ensemble (default: every exported fold)")
    po.add_argument("-step_size", type=float, default=0.5)
    po.add_argument("--disable_tta", action="store_true", help="no mirroring")
    po.add_argument("--save_probabilities", action="store_true")
    po.add_argument("--continue_prediction", action="store_true", help="keep existing outputs, predict the rest")
    po.add_argument("-npp", type=int, default=3, help="preprocessing processes (0 with -nps 0: sequential)")
    po.add_argument("-nps", type=int, default=3, help="segmentation export processes")
    po.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads (default: its own)")
    po.add_argument("--verbose", action="store_true")
    po.add_argument("--disable_progress_bar", action="store_true")
    po.set_defaults(func=cmd_predict_onnx)

    from sam_nnunet.datasets.commands import register as register_converters
    from sam_nnunet.evaluation.commands import register as register_evaluation

    register_converters(sub)
    register_evaluation(sub)
    register_distill(sub)
    return p


def main(argv: List[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (FileNotFoundError, FileExistsError, ValueError, ImportError) as e:  # OnnxExportError is a ValueError
        print(f"sam_nnunet {args.command}: error: {e}", file=sys.stderr)
        return 2
    except subprocess.CalledProcessError as e:
        print(f"sam_nnunet {args.command}: step failed (exit {e.returncode}): {' '.join(e.cmd)}", file=sys.stderr)
        return e.returncode or 1


if __name__ == "__main__":
    sys.exit(main())

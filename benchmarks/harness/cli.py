"""``python benchmarks/benchmark.py`` / ``python -m benchmarks.harness``: the options, and the run."""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
from pathlib import Path

import benchmarks.harness as harness
from benchmarks.harness.data import prepare
from benchmarks.harness.machine import machine
from benchmarks.harness.report import markdown, plot
from benchmarks.harness.rows import measure_or_reuse
from benchmarks.harness.specs import ACCURACY, DATASETS, PLANS, PRETRAINED, REPO, TRAINERS


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=harness.__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--dataset", choices=sorted(DATASETS), default="acdc")
    p.add_argument("--acdc", default=str(REPO.parent / "shared" / "data" / "ACDC"))
    p.add_argument("--kvasir", default=str(REPO.parent / "shared" / "data" / "Kvasir-SEG"))
    p.add_argument("--cases", type=int, default=None, help="kvasir: convert only the first N images")
    p.add_argument("--checkpoint", help="SAM-layout checkpoint for trainers named NAME+pretrained "
                                        "(e.g. from sam_nnunet export-encoder)")
    p.add_argument("--nnunet-raw")
    p.add_argument("--nnunet-preprocessed")
    p.add_argument("--trainers", nargs="+", default=None,
                   help=f"NAME[@PLANS][:CONFIG][{PRETRAINED}]; PLANS default {PLANS}, CONFIG default 2d, e.g. "
                        f"nnUNetTrainer@nnUNetPlans, SelfPromptSAMTrainer:3d_fullres (default: {' '.join(TRAINERS)}; "
                        f"--accuracy: {' '.join(ACCURACY['trainers'])})")
    p.add_argument("--patients", type=int, default=None, help="acdc: convert the first N patients (default 30)")
    p.add_argument("--budget", "--budget-min", dest="budget_min", type=float, default=None,
                   help="training wall-clock budget per trainer, minutes (default 5; --accuracy: 60)")
    p.add_argument("--accuracy", action="store_true",
                   help=f"Dice at a realistic budget: {ACCURACY['budget_min']} min per trainer, all "
                        f"{ACCURACY['patients']} shipped ACDC patients, every validation volume of fold 0, and "
                        f"nnU-Net on its default plans and on the SAM preset's plans next to the SAM trainers")
    p.add_argument("--train-patients", type=int, default=None,
                   help="acdc, low-data mode: train on the first N patients of fold 0's training set (both frames); "
                        "validation stays fold 0's")
    p.add_argument("--train-source", choices=sorted(DATASETS["universal"]["sources"]), default=None,
                   help="universal: train and validate on this source's cases of fold 0 only (the per-dataset model "
                        "on the same data, against the universal model's Dice on that source)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--iterations-per-epoch", type=int, default=50)
    p.add_argument("--val-cases", type=int, default=None, help="validate on the first N volumes of fold 0; 0: all "
                                                                   "(default 8; --accuracy: 0)")
    p.add_argument("--processes", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--quick", action="store_true", help="a few steps and seconds of training (for tests)")
    args = p.parse_args(argv)
    defaults = ACCURACY if args.accuracy else {"budget_min": 5.0, "patients": 30, "val_cases": 8, "trainers": TRAINERS}
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if any(t.endswith(PRETRAINED) for t in args.trainers) and not args.checkpoint:
        p.error(f"trainers named NAME{PRETRAINED} need --checkpoint")
    if os.environ.get("SAM_NNUNET_CHECKPOINT"):
        p.error("SAM_NNUNET_CHECKPOINT is set; it would override the checkpoint of every row. Unset it: rows named "
                f"NAME{PRETRAINED} take --checkpoint, and a plans preset names its own (e.g. cpu_hsp_medsam)")
    if args.train_source and args.dataset != "universal":
        p.error("--train-source is for --dataset universal")
    if args.quick:
        args.steps, args.warmup, args.budget_min, args.val_cases, args.iterations_per_epoch = 3, 1, 0.1, 1, 5
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    paths = prepare(args)
    rows = [measure_or_reuse(name, args, paths, out) for name in args.trainers]
    import torch

    meta = {"date": datetime.date.today().isoformat(), "seed": args.seed, "device": args.device,
            "budget_min": args.budget_min, "steps": args.steps, "warmup": args.warmup,
            "machine": machine(args.device), "torch": torch.__version__, "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]),
            "dataset": DATASETS[args.dataset]["name"], "split": DATASETS[args.dataset]["split"],
            "labels": DATASETS[args.dataset]["labels"], "checkpoint": args.checkpoint,
            "train_patients": args.train_patients, "train_source": args.train_source}
    (out / "results.json").write_text(json.dumps({"meta": meta, "trainers": rows}, indent=2))
    (out / "results.md").write_text(markdown(rows, meta) + "\n")
    plot(rows, out / "results.png", meta["labels"])
    print(markdown(rows, meta))
    return 0

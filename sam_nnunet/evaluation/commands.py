"""The ``crossval`` and ``report`` subcommands of ``sam_nnunet``.

``register(subparsers)`` adds them to the ``sam_nnunet`` parser (``sam_nnunet/cli.py``), which handles errors:
user errors exit 2 with the reason, a failed nnU-Net step exits with its code.
"""
from __future__ import annotations

import argparse
from pathlib import Path


def cmd_crossval(args: argparse.Namespace) -> int:
    from sam_nnunet.evaluation.crossval import run_crossval

    run_crossval(args.dataset, args.configuration, args.trainer, args.plans, folds=args.folds, device=args.device,
                 npz=args.npz, num_processes=args.np)
    return 0


def _default_name(folder: str) -> str:
    """The trainer of an nnU-Net model folder on the path (``TRAINER__PLANS__CONFIG``), else the folder's name."""
    path = Path(folder).resolve()
    for part in (path, *path.parents):
        if part.name.count("__") == 2:
            return part.name.split("__")[0]
    return path.name


def cmd_report(args: argparse.Namespace) -> int:
    from sam_nnunet.evaluation.metrics import MonaiUnavailableError
    from sam_nnunet.evaluation.report import write_report

    folders = [args.pred] + ([args.pred2] if args.pred2 else [])
    names = args.names or [_default_name(f) for f in folders]
    if not args.names and len(set(names)) < len(names):
        names = ["A", "B"]
    if len(names) != len(folders) or len(set(names)) != len(names):
        raise ValueError(f"--names needs one distinct name per prediction folder ({len(folders)}), got {names}")
    try:
        write_report(args.gt, dict(zip(names, folders)), args.out, labels=args.labels, label_names=args.label_names,
                     missing=args.missing, hd95=args.hd95, num_processes=args.np, overwrite=args.overwrite)
    except MonaiUnavailableError as e:  # an install to fix, not a crash: the CLI's user-error path (exit 2)
        raise ValueError(str(e)) from e
    return 0


def register(subparsers) -> None:
    """Add ``crossval`` and ``report`` to ``subparsers`` (from ``ArgumentParser.add_subparsers``)."""
    cv = subparsers.add_parser(
        "crossval", help="5-fold nnUNetv2_train (skips finished folds, resumes started ones with --c), "
                         "then nnUNetv2_find_best_configuration",
        description="Runs nnUNetv2_train DATASET CONFIG FOLD -tr TRAINER -p PLANS --npz for each fold that is not "
                    "finished (--c for started ones), then nnUNetv2_find_best_configuration once all five folds "
                    "are finished. Needs nnUNet_preprocessed and nnUNet_results; sets nnUNet_extTrainer if missing.")
    cv.add_argument("-d", "--dataset", required=True, help="dataset id (27) or name (Dataset027_ACDC)")
    cv.add_argument("-c", "--configuration", required=True, help="nnU-Net configuration, e.g. 2d")
    cv.add_argument("-tr", "--trainer", required=True, help="trainer class, e.g. HSPSAMTrainer")
    cv.add_argument("-p", "--plans", required=True, help="plans identifier, e.g. nnUNetPlans_SAMvitb")
    cv.add_argument("--folds", type=int, nargs="+", default=[0, 1, 2, 3, 4], choices=range(5), metavar="FOLD",
                    help="folds to run now (default: 0 1 2 3 4)")
    cv.add_argument("-device", "--device", default=None, help="nnUNetv2_train -device: cuda, cpu or mps")
    cv.add_argument("--npz", action=argparse.BooleanOptionalAction, default=True,
                    help="save the validation softmax (needed to ensemble with other models; default: on)")
    cv.add_argument("-np", type=int, default=None,
                    help="nnU-Net worker processes for validation export/evaluation and find_best_configuration "
                         "(sets nnUNet_def_n_proc; nnU-Net's default is 8)")
    cv.set_defaults(func=cmd_crossval)

    rp = subparsers.add_parser(
        "report", help="per-case/per-class Dice and HD95 (mm): CSV, Markdown and plots, optionally two methods",
        description="Evaluates every prediction in --pred (and --pred2) against the same-named file in --gt. "
                    "For nnU-Net cross-validation: --gt $nnUNet_preprocessed/DatasetXXX/gt_segmentations --pred "
                    "$nnUNet_results/DatasetXXX/TRAINER__PLANS__CONFIG/crossval_results_folds_0_1_2_3_4 "
                    "(or .../fold_N/validation).")
    rp.add_argument("--gt", required=True, help="folder of reference segmentations")
    rp.add_argument("--pred", required=True, help="folder of predicted segmentations (same file names)")
    rp.add_argument("--pred2", default=None, help="a second prediction folder to compare with")
    rp.add_argument("--names", nargs="+", default=None, metavar="NAME",
                    help="method names for --pred (and --pred2), e.g. HSPSAMTrainer nnUNetTrainer")
    rp.add_argument("-o", "--out", required=True, help="output folder for the CSV, Markdown and PNG files")
    rp.add_argument("--labels", type=int, nargs="+", default=None,
                    help="labels to evaluate (default: the foreground labels/regions of the dataset.json next to --gt)")
    rp.add_argument("--label-names", nargs="+", default=None, help="a name per label, e.g. RV MYO LV")
    missing = rp.add_mutually_exclusive_group()
    missing.add_argument("--missing", choices=("skip", "error", "zero"), default="skip",  # report.MISSING_MODES
                         help="what a reference without a prediction means: skip = not evaluated, the means cover "
                              "the predicted cases only (default; a single fold predicts only its validation "
                              "cases); error = stop and name them; zero = score it as an empty prediction (Dice 0 "
                              "where the reference has the class). The count is in summary.md either way")
    missing.add_argument("--require-all", dest="missing", action="store_const", const="error",
                         help="short for --missing error")
    rp.add_argument("--no-hd95", dest="hd95", action="store_false",
                    help="Dice only: no HD95, no MONAI needed (no boxplot_hd95.png or comparison.png)")
    rp.add_argument("-np", type=int, default=1, help="processes for evaluating cases (default 1)")
    rp.add_argument("--overwrite", action="store_true",
                    help="replace a report already in -o (its files are removed first); without it, refused")
    rp.set_defaults(func=cmd_report)


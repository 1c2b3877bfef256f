"""``sam_nnunet predict`` and ``install-model``: a shared model used in one command; ``register(subparsers)`` adds
them. :mod:`sam_nnunet.sharing.predict` is the manual of ``predict``."""
from __future__ import annotations

import argparse
from pathlib import Path

#: --output-type values (sam_nnunet.sharing.predict.NIFTI, DICOM_SEG; not imported here: --help stays quick)
OUTPUT_TYPES = ("nifti", "dicom_seg")


def cmd_predict(args: argparse.Namespace) -> int:
    from sam_nnunet.sharing.model import load_model
    from sam_nnunet.sharing.predict import RECORD, find_inputs, predict_cases
    from sam_nnunet.submission.images import SubmissionError

    folds = [f if f == "all" else int(f) for f in args.folds] if args.folds else None
    try:
        model = load_model(args.m, folds=folds, device=args.device, fast=args.fast, checkpoint=args.checkpoint,
                           postprocess=not args.no_postprocessing)
        print(f"model: {model.describe()}", flush=True)
        output_dir = Path(args.o).resolve()
        input_path = Path(args.i).resolve()
        if output_dir == input_path or (input_path.is_dir() and input_path in output_dir.parents):
            raise SubmissionError(f"output folder {output_dir} must not be the input folder or inside it")
        cases = find_inputs(input_path, output_dir, model.images, model.dataset_json.get("file_ending", ".nii.gz"),
                            args.output_type)
        rows = predict_cases(model, cases, output_dir, save_probabilities=args.save_probabilities,
                             overwrite=args.overwrite, progress=not args.disable_progress_bar)
    except SubmissionError as e:
        raise ValueError(str(e)) from None
    for row in rows:
        amounts = ", ".join(f"{name} {c.get('volume_ml', c.get('area_mm2', c['voxels'])):.1f}"
                            + (" ml" if "volume_ml" in c else " mm²" if "area_mm2" in c else " px")
                            for name, c in row["classes"].items())
        print(f"{row['case']} -> {Path(row['output']).name} ({row['seconds']:.1f} s): {amounts}")
    print(f"wrote {len(rows)} mask(s) and {RECORD} to {output_dir}")
    return 0


def cmd_install_model(args: argparse.Namespace) -> int:
    import os

    from sam_nnunet.sharing.model_zip import install_model_zip

    results = args.results or os.environ.get("nnUNet_results")
    if not results:
        raise ValueError("nnUNet_results is not set: export it, or give --results")
    for folder in install_model_zip(args.zip, results):
        print(f"installed {folder}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("predict", help="predict images with a shared model (zip, exported folder or results folder)",
                       description="Predicts an image file, a folder of images (any names) or DICOM series with a "
                                   "model zip, exported folder or results folder, running its postprocessing and "
                                   "ensemble, and writes the masks and predictions.json (per case: shape, spacing, "
                                   "seconds, class volumes in ml). Manual: sam_nnunet.sharing.predict.")
    p.add_argument("-i", required=True, help="an image file, a folder of images (any names), or a DICOM series folder")
    p.add_argument("-o", required=True, help="output folder (masks, predictions.json)")
    p.add_argument("-m", required=True, help="model: a .zip, a model folder TRAINER__PLANS__CONFIG, a DatasetXXX "
                                             "folder or a results/export folder holding one")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    p.add_argument("--fast", action="store_true", help="no mirroring and one fold")
    p.add_argument("--folds", nargs="+", default=None, help="folds to ensemble (default: every fold of the model)")
    p.add_argument("--save-probabilities", action="store_true", help="also write CASE.npz with the class "
                                                                     "probabilities")
    p.add_argument("--output-type", default=OUTPUT_TYPES[0], choices=OUTPUT_TYPES,
                   help="nifti: masks in the input's format; dicom_seg: DICOM-SEG for DICOM series inputs")
    p.add_argument("--no-postprocessing", action="store_true", help="skip the model's postprocessing")
    p.add_argument("--checkpoint", default="checkpoint_final.pth")
    p.add_argument("--overwrite", action="store_true", help="replace masks and predictions.json that exist")
    p.add_argument("--disable-progress-bar", action="store_true")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("install-model", help="install a model zip into $nnUNet_results, checking it first",
                       description="nnUNetv2_install_pretrained_model_from_zip without trusting the zip: entries must "
                                   "stay in one DatasetXXX_Name/ folder, checkpoints load weights-only, plans name "
                                   "known network classes, and installed models are never overwritten.")
    p.add_argument("zip", help="model zip (sam_nnunet export-model --zip, nnUNetv2_export_model_to_zip)")
    p.add_argument("--results", default=None, help="results folder (default $nnUNet_results)")
    p.set_defaults(func=cmd_install_model)

"""``sam_nnunet export-model``, ``export-encoder``, ``export-onnx`` and ``predict-onnx``; ``register(subparsers)``
adds them. Each reads a trained model from $nnUNet_results by nnUNetv2_predict's names (``-d -c -tr -p``)."""
from __future__ import annotations

import argparse


def _export_folds(export, args: argparse.Namespace):
    """``export(dataset, configuration, trainer, plans, folds, out, checkpoint)`` for the command's -f folds."""
    folds = [f if f == "all" else int(f) for f in args.folds]
    return export(args.dataset, args.configuration, args.trainer, args.plans, folds, args.out, args.checkpoint)


def cmd_export_model(args: argparse.Namespace) -> int:
    from sam_nnunet.export.model import export_from_results, model_folder

    if args.zip:
        from sam_nnunet.sharing.model_zip import export_model_zip

        folds = [f if f == "all" else int(f) for f in args.folds]
        source = model_folder(args.dataset, args.configuration, args.trainer, args.plans)
        out = export_model_zip(source, args.zip, folds, args.checkpoint)
        print(f"wrote {out} (folds {args.folds}, model card MODEL.md inside)\n"
              f"predict: sam_nnunet predict -i IMAGE -o OUT -m {out}\n"
              f"install for nnUNetv2_predict: nnUNetv2_install_pretrained_model_from_zip {out}")
        return 0
    print(f"exported folds {args.folds} for inference: {_export_folds(export_from_results, args)}")
    return 0


def cmd_export_encoder(args: argparse.Namespace) -> int:
    from sam_nnunet.export.encoder import export_encoder_from_results

    fold = args.fold if args.fold == "all" else int(args.fold)
    out = export_encoder_from_results(args.dataset, args.configuration, args.trainer, args.plans, fold, args.out,
                                      args.checkpoint)
    print(f"wrote the image encoder of fold {args.fold} in SAM's checkpoint layout: {out}\n"
          f"use it as pretrained weights: SAM_NNUNET_CHECKPOINT={out} nnUNetv2_train ...")
    return 0


def cmd_export_onnx(args: argparse.Namespace) -> int:
    from sam_nnunet.export.onnx_model import export_onnx_from_results

    out = _export_folds(export_onnx_from_results, args)
    print(f"exported folds {args.folds} to ONNX: {out}\npredict with: sam_nnunet predict-onnx -i IN -o OUT -m {out}")
    return 0


def cmd_predict_onnx(args: argparse.Namespace) -> int:
    from sam_nnunet.export.onnx_predictor import predict_onnx

    predict_onnx(args.i, args.o, args.m, args.f, tile_step_size=args.step_size, use_mirroring=not args.disable_tta,
                 save_probabilities=args.save_probabilities, overwrite=not args.continue_prediction, npp=args.npp,
                 nps=args.nps, threads=args.threads, verbose=args.verbose, allow_tqdm=not args.disable_progress_bar)
    return 0


def trained_model_args(p: argparse.ArgumentParser) -> None:
    """-d -c -tr -p: a trained model in $nnUNet_results, named as for nnUNetv2_predict."""
    p.add_argument("-d", "--dataset", required=True, help="dataset id or DatasetXXX_Name")
    p.add_argument("-c", "--configuration", required=True)
    p.add_argument("-tr", "--trainer", required=True)
    p.add_argument("-p", "--plans", default="nnUNetPlans")


def folds_out_args(p: argparse.ArgumentParser, zip_file: bool = False) -> None:
    """-f -o --checkpoint of the commands that export a model folder (and --zip, instead of -o, for export-model)."""
    p.add_argument("-f", "--folds", nargs="+", default=["0", "1", "2", "3", "4"])
    out = p.add_mutually_exclusive_group(required=True) if zip_file else p
    out.add_argument("-o", "--out", required=not zip_file,
                     help="output folder (the model folder inside must not exist)")
    if zip_file:
        out.add_argument("--zip", help="write one model zip instead (nnU-Net's zip layout with the model card; "
                                       "sam_nnunet predict -m and nnUNetv2_install_pretrained_model_from_zip take it)")
    p.add_argument("--checkpoint", default="checkpoint_final.pth", help="checkpoint to export from each fold")


def register(sub) -> None:
    ex = sub.add_parser("export-model", help="copy a trained model for inference only, as a folder or a shareable zip",
                        description="Writes OUT/DatasetXXX/TRAINER__PLANS__CONFIG with plans.json, dataset.json and "
                                    "fold_X/checkpoint_final.pth reduced to what nnUNetv2_predict reads (no optimizer "
                                    "state, logs or debug.json); with --zip FILE, one zip in nnU-Net's model-zip layout "
                                    "that also holds the fingerprint, validation and cross-validation summaries, "
                                    "postprocessing, inference information and a model card. Reads $nnUNet_results.")
    trained_model_args(ex)
    folds_out_args(ex, zip_file=True)
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

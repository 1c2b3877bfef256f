"""``sam_nnunet convert-*`` subcommands for the dataset converters; ``register(subparsers)`` adds them.

``convert-acdc`` keeps nnU-Net's id 27 (Dataset027_ACDC). The other default dataset ids sit in the 300s, clear of
the ids nnU-Net's own conversion scripts use (MSD 1-10, 27 ACDC, 112-121 ToothFairy2/road segmentation, 218-227
AMOS/KiTS/..., 996-999 integration tests):

    convert-synapse  301  Dataset301_Synapse8
    convert-amos     302 / 303 / 304  Dataset30x_AMOS22_CT / _MRI / _CTMRI (by --modality)
    convert-kvasir   311  Dataset311_KvasirSEG
    convert-cvc      312  Dataset312_CVCClinicDB
    convert-isic     317 / 318  Dataset317_ISIC2017 / Dataset318_ISIC2018 (by year)

Each command writes to $nnUNet_raw (ISIC's official split also to $nnUNet_preprocessed) and prints the
created dataset folder.
"""
from __future__ import annotations

import argparse
import importlib
from typing import Callable


def _common(parser: argparse.ArgumentParser, input_help: str, default_id: int | None, id_help: str = "") -> None:
    parser.add_argument("-i", "--input", required=True, help=input_help)
    parser.add_argument("-d", "--dataset-id", type=int, default=default_id,
                        help=id_help or f"nnU-Net dataset id (default {default_id})")
    parser.add_argument("--cases", type=int, default=None, metavar="N",
                        help="use only the first N cases of each official subset (quick runs)")


def _handler(converter: str, *options: str) -> Callable[[argparse.Namespace], int]:
    """A subcommand that calls ``sam_nnunet.datasets.<converter>`` (imported when run) with the common
    arguments plus ``options`` (argument names passed on as keywords) and prints the dataset folder."""
    def run(args: argparse.Namespace) -> int:
        module, function = converter.rsplit(".", 1)
        convert = getattr(importlib.import_module(f"sam_nnunet.datasets.{module}"), function)
        print(convert(args.input, args.dataset_id, max_cases=args.cases, **{o: getattr(args, o) for o in options}))
        return 0
    return run


def cmd_convert_acdc(args: argparse.Namespace) -> int:
    from sam_nnunet.datasets.acdc import convert_acdc

    convert_acdc(args.input, args.dataset_id, max_patients=args.patients, holdout=args.holdout)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add convert-acdc, convert-synapse, convert-amos, convert-kvasir, convert-cvc, convert-isic, merge-universal and
    modality-channel to ``subparsers``."""
    a = subparsers.add_parser("convert-acdc", help="ACDC (official layout) -> nnU-Net raw dataset + patient splits")
    a.add_argument("-i", "--input", required=True, help="ACDC folder holding training/ (and testing/)")
    a.add_argument("-d", "--dataset-id", type=int, default=27)
    a.add_argument("--patients", type=int, default=None, help="use only the first N patients")
    a.add_argument("--holdout", type=int, default=0, help="last N patients -> imagesTs/labelsTs")
    a.set_defaults(func=cmd_convert_acdc)

    p = subparsers.add_parser("convert-synapse", help="Synapse/BTCV -> 8-organ nnU-Net dataset, TransUNet split")
    _common(p, "folder holding RawData/Training/img and RawData/Training/label", 301)
    p.set_defaults(func=_handler("synapse.convert_synapse"))

    p = subparsers.add_parser("convert-amos", help="AMOS22 -> nnU-Net dataset (CT, MRI or both)")
    _common(p, "the amos22 folder holding dataset.json, imagesTr/, labelsTr/, imagesVa/, labelsVa/, imagesTs/", None,
            "nnU-Net dataset id (default 302 CT, 303 MRI, 304 both)")
    p.add_argument("--modality", choices=["CT", "MRI", "both"], default="CT",
                   help="case ids < 500 are CT, the others MRI (default CT)")
    p.set_defaults(func=_handler("amos.convert_amos", "modality"))

    p = subparsers.add_parser("convert-kvasir", help="Kvasir-SEG -> nnU-Net 2D RGB dataset (5 folds)")
    _common(p, "Kvasir-SEG folder holding images/ and masks/", 311)
    p.set_defaults(func=_handler("kvasir.convert_kvasir"))

    p = subparsers.add_parser("convert-cvc", help="CVC-ClinicDB -> nnU-Net 2D RGB dataset (5 folds)")
    _common(p, "CVC-ClinicDB folder holding Original/ and 'Ground Truth/' (.tif or .png)", 312)
    p.set_defaults(func=_handler("cvc.convert_cvc"))

    p = subparsers.add_parser("convert-isic", help="ISIC 2017/2018 lesions -> nnU-Net 2D RGB dataset, official split")
    _common(p, "folder holding the ISIC challenge folders (e.g. ISIC2018_Task1-2_Training_Input/)", None,
            "nnU-Net dataset id (default 317 for 2017, 318 for 2018)")
    p.add_argument("--year", type=int, choices=[2017, 2018], default=None,
                   help="challenge year (default: read from the folder names)")
    p.set_defaults(func=_handler("isic.convert_isic", "year"))

    u = subparsers.add_parser("merge-universal", help="several converted datasets -> one 2D dataset for ESP-MedSAM's "
                                                      "universal path (a modality channel per case)")
    u.add_argument("-d", "--datasets", nargs="+", required=True, help="converted datasets (ids or names in nnUNet_raw)")
    u.add_argument("-o", "--dataset-id", type=int, required=True, help="id of the merged dataset")
    u.add_argument("--name", default="Universal", help="name of the merged dataset (default Universal)")
    u.add_argument("--cases", type=int, default=None, metavar="N", help="use only the first N cases of each source")
    u.set_defaults(func=cmd_merge_universal)

    m = subparsers.add_parser("modality-channel", help="write the modality channel (<case>_0003.nii.gz) of images "
                                                       "to predict with a universal ESP-MedSAM model")
    m.add_argument("-i", "--input", required=True, help="folder of <case>_0000.nii.gz ... images")
    m.add_argument("-d", "--dataset", required=True, help="the universal dataset the model was trained on")
    m.add_argument("-m", "--modality", required=True, help="the images' modality (one the model was trained on)")
    m.set_defaults(func=cmd_modality_channel)


def cmd_merge_universal(args: argparse.Namespace) -> int:
    from sam_nnunet.datasets.universal import merge_universal

    merge_universal(args.datasets, args.dataset_id, name=args.name, max_cases=args.cases)
    return 0


def cmd_modality_channel(args: argparse.Namespace) -> int:
    from sam_nnunet.datasets.universal import write_modality_channel

    written = write_modality_channel(args.input, args.dataset, args.modality)
    print(f"{len(written)} modality channels written ({args.modality}) in {args.input}")
    return 0

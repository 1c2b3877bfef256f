"""``sam_nnunet distill``: ESP-MedSAM's MMDKD student distillation; ``register(subparsers)`` adds it (the module
that distils, which imports torch, loads when the command runs)."""
from __future__ import annotations

import argparse


def register(sub) -> None:
    d = sub.add_parser("distill", help="MMDKD: distil ESP-MedSAM's TinyViT student, then its modality bags",
                       description="Eq. 1 of ESP-MedSAM, decoupled: first the student's TinyViT and neck are "
                                   "regressed onto frozen SAM's image embedding (--steps), then, with them frozen, "
                                   "the bags of each dataset's modality onto the teacher fold's embedding with its "
                                   "bags (--modality-steps); on the preprocessed 2d data in $nnUNet_preprocessed. "
                                   "Writes a checkpoint for ESPMedSAMTrainer (SAM_NNUNET_CHECKPOINT); resumes from "
                                   "OUT.partial.")
    d.add_argument("-d", "--datasets", nargs="+", required=True, help="dataset ids or names (preprocessed 2d data)")
    d.add_argument("-c", "--configuration", default="2d")
    d.add_argument("-p", "--plans", default="nnUNetPlans", help="plans of the data (patch size, data folder)")
    d.add_argument("-o", "--out", required=True, help="student checkpoint to write (.pth; must not exist)")
    d.add_argument("--teacher-checkpoint", help="frozen SAM / MedSAM checkpoint: the first term's teacher (required "
                                                "when the teacher fold was trained from one: that file)")
    d.add_argument("--teacher-model", help="trained teacher fold with bags: the second term's teacher "
                                           "(…/ESPMedSAMTeacherTrainer__PLANS__2d)")
    d.add_argument("-f", "--teacher-fold", default="0", help="fold of --teacher-model")
    d.add_argument("--student", default="tiny_vit_5m", help="TinyViT size (registry.LIGHT_ENCODERS)")
    d.add_argument("--init", help="start the student from this file (e.g. MobileSAM's mobile_sam.pt)")
    d.add_argument("--steps", type=int, default=2000, help="stage 1: steps of the first term (TinyViT + neck); 0 "
                                                             "with --init of a SAM-distilled student")
    d.add_argument("--modality-steps", type=int, default=None,
                   help="stage 2: steps of the second term (bags only); default: --steps when a teacher has bags")
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
            modality_steps=args.modality_steps, batch_size=args.batch_size, lr=args.lr, fold=args.fold,
            save_every=args.save_every, device=args.device, seed=args.seed)
    return 0

"""``sam_nnunet env``, ``weights`` and ``plans``: what a run needs before training; ``register(subparsers)`` adds
them."""
from __future__ import annotations

import argparse
import shlex

from sam_nnunet import nnunet_env
from sam_nnunet.plans import CPU_PRESET


def cmd_env(args: argparse.Namespace) -> int:
    """Print the exports nnU-Net needs to find the trainers (and, with --root, its data folders)."""
    print("\n".join(f"export {var}={shlex.quote(value)}" for var, value in nnunet_env(args.root).items()))
    return 0


def cmd_weights(args: argparse.Namespace) -> int:
    """List the named pretrained files this install can use (offline), each verified by size and SHA-256."""
    import json

    from sam_nnunet.modeling.weights.pretrained_files import describe_all

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


def cmd_plans(args: argparse.Namespace) -> int:
    from sam_nnunet.plans import write_sam_plans

    out = write_sam_plans(args.dataset, args.preset, args.source_plans)
    print(f"wrote {out}  (use: nnUNetv2_train ... -p {out.stem})")
    return 0


def register(sub) -> None:
    e = sub.add_parser("env", help="print the exports nnU-Net needs (eval \"$(sam_nnunet env)\")")
    e.add_argument("--root", help="also export nnUNet_raw/_preprocessed/_results under this folder")
    e.set_defaults(func=cmd_env)

    w = sub.add_parser("weights", help="list the pretrained files this install can use offline (name, SHA-256, "
                                       "licence, what they initialise); SAM_NNUNET_CHECKPOINT takes the name")
    w.add_argument("--json", action="store_true", help="print the list as JSON")
    w.set_defaults(func=cmd_weights)

    pl = sub.add_parser("plans", help="derive SAM plans from nnU-Net's plans (same preprocessed data)")
    pl.add_argument("-d", "--dataset", required=True, help="dataset id or DatasetXXX_Name")
    pl.add_argument("--preset", default=CPU_PRESET, help=f"preset name in plans/ or a JSON path (default {CPU_PRESET})")
    pl.add_argument("--source-plans", default="nnUNetPlans")
    pl.set_defaults(func=cmd_plans)

"""``sam_nnunet`` command line: one ``register(subparsers)`` per group of commands, each beside what it runs.

=====================================  ==================================================================
module                                 commands
=====================================  ==================================================================
:mod:`sam_nnunet.setup_commands`       env, weights, plans
:mod:`sam_nnunet.datasets.commands`    convert-acdc, convert-synapse, convert-amos, convert-kvasir, ...
:mod:`sam_nnunet.demo`                 demo
:mod:`sam_nnunet.export.commands`      export-model, export-encoder, export-onnx, predict-onnx
:mod:`sam_nnunet.sharing.commands`     predict, install-model
:mod:`sam_nnunet.evaluation.commands`  crossval, report
:mod:`sam_nnunet.training.commands`    distill
=====================================  ==================================================================

A command's module imports what it runs (torch, nnU-Net) when the command runs, so ``sam_nnunet --help`` is quick.
"""
from __future__ import annotations

import subprocess
import sys
from typing import List

from sam_nnunet import demo, setup_commands
from sam_nnunet.datasets import commands as dataset_commands
from sam_nnunet.evaluation import commands as evaluation_commands
from sam_nnunet.export import commands as export_commands
from sam_nnunet.sharing import commands as sharing_commands
from sam_nnunet.training import commands as training_commands

DESCRIPTION = ("SAM networks as nnU-Net trainers: environment, pretrained weights, SAM plans, dataset conversion, the "
               "CPU demo, model/encoder/ONNX export, prediction with a shared model, ONNX Runtime prediction, "
               "cross-validation, reports, distillation")
REGISTER = (setup_commands.register, dataset_commands.register, demo.register, export_commands.register,
            sharing_commands.register, evaluation_commands.register, training_commands.register)


def build_parser():
    import argparse

    p = argparse.ArgumentParser(prog="sam_nnunet", description=DESCRIPTION)
    sub = p.add_subparsers(dest="command", required=True)
    for register in REGISTER:
        register(sub)
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

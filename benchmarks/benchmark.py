"""SAM trainers against nnUNetTrainer, side by side, in one process, on the same data and split.

The harness is the package :mod:`benchmarks.harness` (its docstring is the manual; ``--help`` lists the options);
this script runs it from anywhere:

    python benchmarks/benchmark.py --out runs/bench              # default: 5 min budget per trainer
    python benchmarks/benchmark.py --out runs/acc60 --accuracy   # Dice at 60 min per trainer (all 80 ACDC patients)
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root, where the package lies

from benchmarks.harness.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())

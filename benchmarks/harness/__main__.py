"""``python -m benchmarks.harness`` (from the repository root): the harness, as benchmarks/benchmark.py."""
import sys

from benchmarks.harness.cli import main

sys.exit(main())

"""docs/reliability.md's counts are the suite's: tests/reliability_counts.py, from the markers, says the same."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_counts_in_the_docs_come_from_the_suites_markers():
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "reliability_counts.py")], capture_output=True,
                          text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    counted = proc.stdout.strip().splitlines()[-1]
    assert counted.startswith("Faults survived: ") and "Bad inputs refused with a named reason: " in counted
    docs = (ROOT / "docs" / "reliability.md").read_text()
    assert counted in " ".join(docs.split()), f"docs/reliability.md should say: {counted}"

"""The counts of docs/reliability.md, from the suite itself: every test marked ``fault(group, cases=N)`` or
``bad_input(group, cases=N)`` (pytest.ini) adds N cases to its group, per collected item (each parametrization).

    python tests/reliability_counts.py          # prints the "Counts" paragraph of docs/reliability.md

Nothing runs: the suite is only collected. ``tests/test_reliability_docs.py`` checks that the docs say the same.
"""
from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path
from typing import Dict, Tuple

ROOT = Path(__file__).resolve().parents[1]
KINDS = {"fault": "Faults survived", "bad_input": "Bad inputs refused with a named reason"}


class _Collector:
    def __init__(self) -> None:
        self.counts: Dict[str, Counter] = {kind: Counter() for kind in KINDS}

    def pytest_collection_modifyitems(self, items) -> None:
        for item in items:
            for kind in KINDS:
                for marker in item.iter_markers(kind):
                    self.counts[kind][marker.args[0]] += marker.kwargs.get("cases", 1)


def count() -> Dict[str, Counter]:
    """Per kind, the cases per group, from collecting the whole suite."""
    import pytest

    collector = _Collector()
    code = pytest.main(["--collect-only", "-q", "-p", "no:cacheprovider", str(ROOT / "tests")], plugins=[collector])
    if code != 0:
        raise SystemExit(f"collecting the suite failed (pytest exit code {code})")
    return collector.counts


def paragraph(counts: Dict[str, Counter]) -> str:
    """The docs' sentence: per kind the total and the groups, largest first."""
    parts = []
    for kind, title in KINDS.items():
        groups = counts[kind]
        listed = ", ".join(f"{group} {n}" for group, n in sorted(groups.items(), key=lambda g: (-g[1], g[0])))
        parts.append(f"{title}: {sum(groups.values())} cases ({listed}).")
    return " ".join(parts)


def main() -> Tuple[int, str]:
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):  # pytest's collection listing
        counts = count()
    text = paragraph(counts)
    print(text)
    return 0, text


if __name__ == "__main__":
    sys.exit(main()[0])

"""How many CPU threads this process may use: the smallest of what the scheduler, the container and the user allow.

``os.cpu_count()`` counts the host's cores. In a container (grand-challenge, Kubernetes, ``docker run --cpus``) or
under ``taskset`` the process may use far fewer; a torch thread pool sized to the host then oversubscribes the CPUs
it has and runs slower than one sized to them. :func:`usable_cpus` takes the minimum of

* the CPUs in the process's affinity mask (``os.sched_getaffinity``; ``taskset``, ``docker --cpuset-cpus``);
* the cgroup CPU quota, rounded up: ``cpu.max`` (cgroup v2, ``"QUOTA PERIOD"`` or ``"max PERIOD"``) or
  ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` (v1) (``docker --cpus``, Kubernetes CPU limits);
* ``OMP_NUM_THREADS`` when set (the user's choice, as torch honours it).
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Optional

CGROUP = Path("/sys/fs/cgroup")


def cgroup_cpu_limit(root: Path = CGROUP) -> Optional[float]:
    """The cgroup's CPU quota in CPUs (v2 ``cpu.max``, else v1 CFS quota/period), or None when unlimited/unknown."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return quota / period if quota > 0 and period > 0 else None
    except (OSError, ValueError):
        return None


def usable_cpus(root: Path = CGROUP, environ=os.environ) -> int:
    """The number of threads to use (module docstring); at least 1."""
    limits = [len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)]
    quota = cgroup_cpu_limit(root)
    if quota:
        limits.append(math.ceil(quota))
    try:
        if int(environ.get("OMP_NUM_THREADS", "0")) > 0:
            limits.append(int(environ["OMP_NUM_THREADS"]))
    except ValueError:
        pass
    return max(1, min(limits))

"""The thread count follows what the process may use: affinity, the cgroup's CPU quota, OMP_NUM_THREADS."""
import os

from sam_nnunet.cpus import cgroup_cpu_limit, usable_cpus


def cgroup(tmp_path, v2=None, v1=None):
    tmp_path.mkdir(parents=True, exist_ok=True)
    if v2 is not None:
        (tmp_path / "cpu.max").write_text(v2 + "\n")
    if v1 is not None:
        (tmp_path / "cpu").mkdir()
        (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text(f"{v1[0]}\n")
        (tmp_path / "cpu" / "cpu.cfs_period_us").write_text(f"{v1[1]}\n")
    return tmp_path


def test_the_cgroup_quota_limits_the_threads(tmp_path, monkeypatch):
    affinity = len(os.sched_getaffinity(0))
    assert cgroup_cpu_limit(cgroup(tmp_path / "a", v2="150000 100000")) == 1.5
    assert usable_cpus(tmp_path / "a", environ={}) == min(2, affinity)  # 1.5 CPUs: 2 threads
    assert cgroup_cpu_limit(cgroup(tmp_path / "b", v2="max 100000")) is None
    assert usable_cpus(tmp_path / "b", environ={}) == affinity
    assert cgroup_cpu_limit(cgroup(tmp_path / "c", v1=(50000, 100000))) == 0.5
    assert usable_cpus(tmp_path / "c", environ={}) == 1
    assert cgroup_cpu_limit(cgroup(tmp_path / "d", v1=(-1, 100000))) is None
    assert cgroup_cpu_limit(tmp_path / "missing") is None


def test_affinity_and_omp_num_threads_limit_the_threads(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5, 6, 7})
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    root = cgroup(tmp_path, v2="max 100000")
    assert usable_cpus(root, environ={}) == 8  # the affinity mask, not the host's 64 cores
    assert usable_cpus(root, environ={"OMP_NUM_THREADS": "3"}) == 3
    assert usable_cpus(cgroup(tmp_path / "q", v2="400000 100000"), environ={"OMP_NUM_THREADS": "6"}) == 4

"""The machine a row ran on: its name, a speed probe, and the process's peak memory."""
from __future__ import annotations

import os
import platform
import statistics
import time


def peak_rss_reset() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def peak_rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM"):
                return int(line.split()[1]) / 1024
    return float("nan")


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_probe_s(samples: int = 5, repeats: int = 3) -> float:
    """Seconds for a fixed CPU workload, recorded with every row: ``repeats`` forward and backward passes of one
    32-channel 3 x 3 convolution over a batch of 8 patches of 128 x 128 (float32), the median of ``samples``.

    Rows measured in different sessions run on machines that report the same name ("2 CPU cores (AMD EPYC)") but
    were seen to differ in speed: the same 15-minute HSP-SAM screen (``try_p8_lr1e3``) made 4,259 steps and
    predicted a volume in 3.54 s on 2026-11-30, and 3,223 steps and 5.94 s on 2026-12-03. Steps in a budget, and
    so Dice per CPU-hour, compare only between rows of similar probe times; the probe says which rows those are."""
    import torch

    conv = torch.nn.Conv2d(32, 32, 3, padding=1)
    x = torch.randn(8, 32, 128, 128, requires_grad=True)
    times = []
    for _ in range(samples + 1):  # the first sample warms up (allocation, oneDNN's kernel choice) and is dropped
        start = time.perf_counter()
        for _ in range(repeats):
            conv(x).square().mean().backward()
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def machine(device: str) -> str:
    import torch

    return (f"{os.cpu_count()} CPU cores ({cpu_name()})"
            + (f", {torch.cuda.get_device_name()}" if device == "cuda" else ""))

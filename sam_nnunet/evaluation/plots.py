"""Figures of the evaluation report: per-class box plots and a two-method comparison bar chart.

Drawn with matplotlib's object API (``Figure`` + ``savefig``) rather than ``pyplot``, so nothing depends on a
display or on the global backend. Only finite values are drawn (the empty-class rules of
:mod:`sam_nnunet.evaluation.metrics` make some values NaN or inf); the report's tables say how many were left out.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np

COLORS = ("#4c72b0", "#dd8452")


def _figure(width: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, 4), layout="constrained")


def box_plot(rows: Sequence[dict], class_names: Sequence[str], methods: Sequence[str], metric: str, ylabel: str,
             path: Path) -> None:
    """One box per class and method of ``metric`` (a per-case row key, e.g. ``dice`` or ``hd95_mm``)."""
    fig = _figure(1.6 + 1.2 * len(class_names) * len(methods))
    ax = fig.add_subplot()
    width = 0.8 / len(methods)
    for m, method in enumerate(methods):
        data, positions = [], []
        for c, name in enumerate(class_names):
            values = [r[metric] for r in rows if r["method"] == method and r["class"] == name]
            values = [v for v in values if math.isfinite(v)]
            if values:
                data.append(values)
                positions.append(c + (m - (len(methods) - 1) / 2) * width)
        if data:
            ax.boxplot(data, positions=positions, widths=width * 0.9, patch_artist=True,
                       boxprops=dict(facecolor=COLORS[m % len(COLORS)], alpha=0.6), medianprops=dict(color="black"))
        ax.plot([], [], "s", color=COLORS[m % len(COLORS)], alpha=0.6, label=method)
    ax.set_xticks(range(len(class_names)), class_names)
    ax.set_xlim(-0.6, len(class_names) - 0.4)
    ax.set_ylabel(ylabel)
    ax.set_title(f"{ylabel} per class (finite values)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    fig.savefig(path, dpi=100)


def comparison_bars(summary: Sequence[dict], class_names: Sequence[str], methods: Sequence[str], path: Path) -> None:
    """Mean Dice and mean HD95 per class (and over all classes), the methods' bars side by side, ± 1 std."""
    groups = list(class_names) + ["all classes"]
    fig = _figure(2.5 + 1.4 * len(groups))
    width = 0.8 / len(methods)
    x = np.arange(len(groups))
    for i, (key, ylabel) in enumerate((("dice", "Dice"), ("hd95", "HD95 (mm)"))):
        ax = fig.add_subplot(1, 2, i + 1)
        for m, method in enumerate(methods):
            rows = {s["class"]: s for s in summary if s["method"] == method}
            means = [rows[g][f"{key}_mean"] for g in groups]
            stds = [rows[g][f"{key}_std"] for g in groups]
            ax.bar(x + (m - (len(methods) - 1) / 2) * width, np.nan_to_num(means), width * 0.95,
                   yerr=np.nan_to_num(stds), capsize=3, color=COLORS[m % len(COLORS)], label=method)
        ax.set_xticks(x, groups, rotation=20)
        ax.set_ylabel(ylabel)
        ax.set_title(f"mean {ylabel} ± std")
        ax.grid(axis="y", alpha=0.3)
        if key == "dice":
            ax.set_ylim(0, 1.05)
        ax.legend(loc="best", fontsize="small")
    fig.savefig(path, dpi=100)

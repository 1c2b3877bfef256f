"""The table (``results.md``) and the plot (``results.png``) of a run's rows, with ratios against the first."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List

from benchmarks.harness.specs import PLANS


METRICS = [("step_s_median", "train step (s)"), ("infer_s_per_volume", "inference (s/volume)"),
           ("train_peak_rss_mb", "train peak RSS (MB)"), ("infer_peak_rss_mb", "inference peak RSS (MB)"),
           ("params_total", "parameters"), ("params_trainable", "trainable parameters"),
           ("gflops_per_patch", "GFLOPs per patch")]


def markdown(rows: List[dict], meta: dict) -> str:
    base, labels = rows[0], meta["labels"]
    plans = dict.fromkeys((r.get("plans", PLANS) + ("" if r.get("configuration", "2d") == "2d" else f" {r['configuration']}"),
                           tuple(r["patch_size"]), r["batch_size"]) for r in rows)
    plans_text = "; ".join(f"plans {p} (patch {list(patch)}, batch {batch})" for p, patch, batch in plans)
    dates = sorted({r.get("date", meta["date"]) for r in rows})
    machines = sorted({r.get("machine", meta["machine"]) for r in rows})
    lines = [f"Machine: {' / '.join(machines)}; device {meta['device']}; {' to '.join(dict.fromkeys([dates[0], dates[-1]]))}; "
             f"seed {meta['seed']}; "
             f"budget {meta['budget_min']} min per trainer; {plans_text}; {meta['dataset']}, {meta['split']}: "
             f"{len(base['val_cases'])} validation volumes"
             + (f"; low-data mode: {meta['train_patients']} training patients" if meta.get("train_patients") else "")
             + ".", "",
             "| trainer | " + " | ".join(label for _, label in METRICS) + " | steps in budget | "
             + " | ".join(f"Dice {labels[k]}" for k in labels) + " | mean Dice | "
             + " | ".join(f"HD95 {labels[k]}" for k in labels) + " |",
             "|---" * (len(METRICS) + 3 + 2 * len(labels)) + "|"]
    for r in rows:
        cells = []
        for key, _ in METRICS:
            v = r[key]
            txt = f"{v:,}" if isinstance(v, int) else f"{v:,.0f}" if v >= 100 else f"{v:.3g}"
            if r is not base and base[key]:
                txt += f" ({v / base[key]:.2f}x)"
            cells.append(txt)
        dice = [r["dice"].get(k, float("nan")) for k in labels]
        hd95 = [r.get("hd95", {}).get(k, float("nan")) for k in labels]
        scored = [r["dice"][k] for k in labels if k in r["dice"]]  # a per-source row scores its source's labels
        lines.append(f"| {r['trainer']} | " + " | ".join(cells) + f" | {r['budget_steps']} | "
                     + " | ".join(f"{d:.3f}" for d in dice) + f" | {sum(scored) / len(scored):.3f} | "
                     + " | ".join(f"{h:.1f}" for h in hd95) + " |")
    lines.append("")
    lines.append(f"Ratios in parentheses are against {base['trainer']}. HD95 in the images' spacing units (mm; "
                 f"pixels for Kvasir-SEG), mean over cases where both masks have the class. Peak RSS is the whole process's "
                 f"(data-augmentation workers excluded). A Dice comparison needs a budget of 60 minutes or more "
                 f"per trainer on 2 CPU cores; shorter budgets compare noise.")
    return "\n".join(lines)


def plot(rows: List[dict], path: Path, labels: Dict[str, str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    base = rows[0]
    fig, (a1, a2, a3) = plt.subplots(1, 3, figsize=(18, 4))
    width = 0.8 / max(1, len(rows) - 1)
    x = np.arange(len(METRICS))
    for i, r in enumerate(rows[1:]):
        a1.bar(x + i * width, [r[k] / base[k] for k, _ in METRICS], width, label=r["trainer"])
    a1.axhline(1, color="k", lw=0.8)
    a1.set_xticks(x + width * (len(rows) - 2) / 2, [label for _, label in METRICS], rotation=30, ha="right")
    a1.set_yscale("log")
    a1.set_ylabel(f"ratio to {base['trainer']}")
    a1.legend()
    width = 0.8 / len(rows)
    x = np.arange(len(labels))
    for i, r in enumerate(rows):
        a2.bar(x + i * width, [r["dice"].get(k, 0) for k in labels], width, label=r["trainer"])
    a2.set_xticks(x + width * (len(rows) - 1) / 2, list(labels.values()))
    a2.set_ylabel("validation Dice")
    a2.set_ylim(0, 1)
    a2.legend()
    for r in rows:
        if r.get("curve"):
            t, loss = zip(*r["curve"])
            a3.plot(np.array(t) / 60, loss, label=r["trainer"])
    a3.set_xlabel("training time (min)")
    a3.set_ylabel("training loss (epoch mean)")
    a3.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)

"""SAM trainers against nnUNetTrainer, side by side, in one process, on the same data and split.

    python benchmarks/benchmark.py --out runs/bench              # default: 5 min budget per trainer, ~20 min on 2 CPU cores
    python benchmarks/benchmark.py --out runs/bench_quick --quick # seconds of training, for the test

For every trainer (default ``nnUNetTrainer``, ``HSPSAMTrainer`` and ``SelfPromptSAMTrainer``), built by nnU-Net's own
``get_trainer_from_args`` on the same plans (``nnUNetPlans_SAMcpu``: 2d, patch 128 x 128, batch 8)
and fold 0 of the same patient-grouped split, it measures, one trainer after the other so the
machine's noise hits all alike:

* training step time: median and interquartile range of ``train_step`` (forward, loss, backward,
  optimiser step; data loading excluded) over ``--steps`` steps after ``--warmup``;
* sliding-window inference time per volume through ``nnUNetPredictor`` (nnU-Net's defaults: step
  0.5, Gaussian weighting, mirroring);
* peak memory: peak RSS of the process during training and during inference (``VmHWM``, reset
  before each phase); ``torch.cuda.max_memory_allocated`` on GPU;
* parameters, total and trainable;
* validation Dice per class on fold 0 after training for the same wall-clock budget
  (``--budget-min``), with nnU-Net's poly learning-rate schedule stretched to fit that budget.

Writes ``results.json`` (raw numbers, the seed, the split, the machine), ``results.md`` (table with
ratios against nnUNetTrainer) and ``results.png`` (ratio bars; Dice per class) into ``--out``. The
dataset (shipped ACDC, ``--patients`` patients) is converted and preprocessed there first, unless
``--nnunet-raw/--nnunet-preprocessed`` point at a prepared one.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List

REPO = Path(__file__).resolve().parents[1]
PLANS = "nnUNetPlans_SAMcpu"
DATASET = "Dataset027_ACDC"


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


def prepare(args) -> Dict[str, Path]:
    out = Path(args.out).resolve()
    raw = Path(args.nnunet_raw).resolve() if args.nnunet_raw else out / "nnUNet_raw"
    pre = Path(args.nnunet_preprocessed).resolve() if args.nnunet_preprocessed else out / "nnUNet_preprocessed"
    results = out / f"nnUNet_results_{datetime.datetime.now():%Y%m%d_%H%M%S}"
    from sam_nnunet import trainers_folder

    os.environ.update(nnUNet_raw=str(raw), nnUNet_preprocessed=str(pre), nnUNet_results=str(results),
                      nnUNet_extTrainer=trainers_folder(), nnUNet_compile="false",
                      nnUNet_n_proc_DA=str(args.processes), SAM_NNUNET_SEED=str(args.seed))
    if not (pre / DATASET / f"{PLANS}.json").is_file():
        from sam_nnunet.datasets.acdc import convert_acdc
        from sam_nnunet.plans import write_sam_plans

        if not (raw / DATASET).is_dir():
            convert_acdc(args.acdc, 27, max_patients=args.patients)
        subprocess.run(["nnUNetv2_plan_and_preprocess", "-d", "27", "-c", "2d", "-np", str(args.processes)],
                       check=True, stdout=subprocess.DEVNULL)
        write_sam_plans("27", "cpu_tiny")
    return {"raw": raw, "preprocessed": pre, "results": results}


def benchmark_trainer(name: str, args, paths) -> dict:
    import numpy as np
    import torch
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.run.run_training import get_trainer_from_args

    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    device = torch.device(args.device)
    trainer = get_trainer_from_args("27", "2d", 0, name, PLANS, device=device)
    trainer.num_iterations_per_epoch = args.iterations_per_epoch
    trainer.on_train_start()  # initialises network, optimiser, loss and data loaders
    net = trainer.network
    row = {"trainer": name, "network": type(net).__name__,
           "params_total": sum(p.numel() for p in net.parameters()),
           "params_trainable": sum(p.numel() for p in net.parameters() if p.requires_grad),
           "batch_size": trainer.batch_size, "patch_size": list(trainer.configuration_manager.patch_size)}
    print(f"[{name}] {row['network']}: {row['params_total']:,} parameters", flush=True)

    # -- training step time and peak memory
    peak_rss_reset()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    trainer.on_train_epoch_start()
    times: List[float] = []
    for i in range(args.warmup + args.steps):
        batch = next(trainer.dataloader_train)
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        trainer.train_step(batch)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= args.warmup:
            times.append(time.perf_counter() - start)
    q = statistics.quantiles(times, n=4) if len(times) >= 2 else [times[0]] * 3
    row.update(step_s_median=statistics.median(times), step_s_q1=q[0], step_s_q3=q[2],
               train_peak_rss_mb=peak_rss_mb())
    if device.type == "cuda":
        row["train_peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2 ** 20
    print(f"[{name}] train step {row['step_s_median']:.3f} s (median of {len(times)})", flush=True)

    # -- equal wall-clock budget, poly schedule stretched over the budget
    budget = args.budget_min * 60
    epoch_s = row["step_s_median"] * args.iterations_per_epoch
    trainer.num_epochs = max(1, int(budget / max(epoch_s, 1e-6)))
    # the scheduler was built in on_train_start for the trainer's own epochs (1000): stretch it to the budget's
    trainer.lr_scheduler.max_steps = trainer.num_epochs
    trainer.current_epoch = 0
    steps_done, start = 0, time.perf_counter()
    while time.perf_counter() - start < budget:
        trainer.on_train_epoch_start()
        for _ in range(args.iterations_per_epoch):
            trainer.train_step(next(trainer.dataloader_train))
            steps_done += 1
            if time.perf_counter() - start >= budget:
                break
        trainer.current_epoch = min(trainer.current_epoch + 1, trainer.num_epochs - 1)
    row.update(budget_s=budget, budget_steps=steps_done)
    print(f"[{name}] {steps_done} training steps in the {args.budget_min} min budget", flush=True)

    # -- sliding-window inference per volume + validation Dice (fold 0)
    trainer.set_deep_supervision_enabled(False)
    net.eval()
    predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=True,
                                perform_everything_on_device=device.type == "cuda", device=device, verbose=False,
                                allow_tqdm=False)
    predictor.manual_initialization(net, trainer.plans_manager, trainer.configuration_manager, [net.state_dict()],
                                    trainer.dataset_json, name, trainer.inference_allowed_mirroring_axes)
    val_cases = trainer.do_split()[1][: args.val_cases]
    io = SimpleITKIO()
    pred_dir = paths["results"] / f"val_{name}"
    pred_dir.mkdir(parents=True, exist_ok=True)
    peak_rss_reset()
    infer_times = []
    for case in val_cases:
        data, props = io.read_images([str(paths["raw"] / DATASET / "imagesTr" / f"{case}_0000.nii.gz")])
        start = time.perf_counter()
        seg = predictor.predict_single_npy_array(data, props, None, None, False)
        infer_times.append(time.perf_counter() - start)
        io.write_seg(seg, str(pred_dir / f"{case}.nii.gz"), props)
    row.update(infer_s_per_volume=statistics.median(infer_times), infer_peak_rss_mb=peak_rss_mb(),
               val_cases=list(val_cases))
    row["dice"] = dice_per_class(paths["raw"] / DATASET / "labelsTr", pred_dir, val_cases)
    print(f"[{name}] inference {row['infer_s_per_volume']:.2f} s/volume; Dice {row['dice']}", flush=True)
    trainer.on_train_end()
    return row


def dice_per_class(ref_dir: Path, pred_dir: Path, cases) -> Dict[str, float]:
    """Mean Dice per class with nnU-Net's evaluation (compute_metrics on each case)."""
    from nnunetv2.evaluation.evaluate_predictions import compute_metrics
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    per_class: Dict[str, List[float]] = {}
    for case in cases:
        m = compute_metrics(str(ref_dir / f"{case}.nii.gz"), str(pred_dir / f"{case}.nii.gz"), SimpleITKIO(),
                            [1, 2, 3])
        for label, metrics in m["metrics"].items():
            per_class.setdefault(str(label), []).append(metrics["Dice"])
    import numpy as np

    return {k: float(np.nanmean(v)) for k, v in per_class.items()}


LABELS = {"1": "RV", "2": "MLV", "3": "LVC"}
METRICS = [("step_s_median", "train step (s)"), ("infer_s_per_volume", "inference (s/volume)"),
           ("train_peak_rss_mb", "train peak RSS (MB)"), ("infer_peak_rss_mb", "inference peak RSS (MB)"),
           ("params_total", "parameters"), ("params_trainable", "trainable parameters")]


def markdown(rows: List[dict], meta: dict) -> str:
    base = rows[0]
    lines = [f"Machine: {meta['machine']}; device {meta['device']}; {meta['date']}; seed {meta['seed']}; "
             f"budget {meta['budget_min']} min per trainer; plans {PLANS} (patch {base['patch_size']}, "
             f"batch {base['batch_size']}); fold 0 of the patient-grouped split, {len(base['val_cases'])} "
             f"validation volumes.", "",
             "| trainer | " + " | ".join(label for _, label in METRICS) + " | steps in budget | "
             + " | ".join(f"Dice {LABELS[k]}" for k in LABELS) + " | mean Dice |",
             "|---" * (len(METRICS) + 3 + len(LABELS)) + "|"]
    for r in rows:
        cells = []
        for key, _ in METRICS:
            v = r[key]
            txt = f"{v:,}" if isinstance(v, int) else f"{v:,.0f}" if v >= 100 else f"{v:.3g}"
            if r is not base and base[key]:
                txt += f" ({v / base[key]:.2f}x)"
            cells.append(txt)
        dice = [r["dice"].get(k, float("nan")) for k in LABELS]
        lines.append(f"| {r['trainer']} | " + " | ".join(cells) + f" | {r['budget_steps']} | "
                     + " | ".join(f"{d:.3f}" for d in dice) + f" | {sum(dice) / len(dice):.3f} |")
    lines.append("")
    lines.append(f"Ratios in parentheses are against {base['trainer']}. Peak RSS is the whole process's "
                 f"(data-augmentation workers excluded). A Dice comparison needs a budget of 60 minutes or more "
                 f"per trainer on 2 CPU cores; shorter budgets compare noise.")
    return "\n".join(lines)


def plot(rows: List[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    base = rows[0]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4))
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
    x = np.arange(len(LABELS))
    for i, r in enumerate(rows):
        a2.bar(x + i * width, [r["dice"].get(k, 0) for k in LABELS], width, label=r["trainer"])
    a2.set_xticks(x + width * (len(rows) - 1) / 2, list(LABELS.values()))
    a2.set_ylabel("validation Dice")
    a2.set_ylim(0, 1)
    a2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--acdc", default=str(REPO.parent / "shared" / "data" / "ACDC"))
    p.add_argument("--nnunet-raw")
    p.add_argument("--nnunet-preprocessed")
    p.add_argument("--trainers", nargs="+", default=["nnUNetTrainer", "HSPSAMTrainer", "SelfPromptSAMTrainer"])
    p.add_argument("--patients", type=int, default=30)
    p.add_argument("--budget-min", type=float, default=5.0, help="training wall-clock budget per trainer")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--iterations-per-epoch", type=int, default=50)
    p.add_argument("--val-cases", type=int, default=8)
    p.add_argument("--processes", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--quick", action="store_true", help="a few steps and seconds of training (for tests)")
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.warmup, args.budget_min, args.val_cases, args.iterations_per_epoch = 3, 1, 0.1, 1, 5
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    paths = prepare(args)
    rows = [benchmark_trainer(name, args, paths) for name in args.trainers]
    import torch

    meta = {"date": datetime.date.today().isoformat(), "seed": args.seed, "device": args.device,
            "budget_min": args.budget_min, "steps": args.steps, "warmup": args.warmup,
            "machine": f"{os.cpu_count()} CPU cores ({cpu_name()})"
                       + (f", {torch.cuda.get_device_name()}" if args.device == "cuda" else ""),
            "torch": torch.__version__, "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]),
            "split": "fold 0 of splits_final.json (patient-grouped, sam_nnunet convert-acdc)"}
    (out / "results.json").write_text(json.dumps({"meta": meta, "trainers": rows}, indent=2))
    (out / "results.md").write_text(markdown(rows, meta) + "\n")
    plot(rows, out / "results.png")
    print(markdown(rows, meta))
    return 0


if __name__ == "__main__":
    sys.exit(main())

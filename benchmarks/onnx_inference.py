"""torch against ONNX Runtime for nnU-Net's CPU prediction, side by side, on the same volumes.

    python benchmarks/onnx_inference.py --results R --raw RAW --preprocessed PRE --out runs/onnx \
        --models nnUNetTrainer:nnUNetPlans:2d HSPSAMTrainer:nnUNetPlans_SAMcpu:2d SelfPromptSAMTrainer:nnUNetPlans_SAMcpu:2d

For every model (``TRAINER:PLANS:CONFIG`` of dataset ``--dataset`` in ``--results``), one after the other:

1. ``sam_nnunet export-onnx`` of fold 0;
2. ``nnUNetv2_predict -device cpu`` and ``sam_nnunet predict-onnx`` on the same ``--cases`` volumes (the
   validation cases of fold 0, never trained on), both sequential (``-npp 0 -nps 0``: one process, so its
   peak RSS is the run's), both with nnU-Net's defaults (step 0.5, Gaussian, mirroring), both on all cores;
3. wall time per volume (the whole command: start-up, preprocessing, sliding window, export; divided by the
   number of volumes), peak RSS, and Dice per class of the ONNX Runtime masks against torch's and of both
   against the ground truth.

``--init-missing``: a model without a trained fold 0 gets one saved straight after the trainer's
``initialize()`` (untrained weights: the compute, and so the timing, is that of a trained fold; its masks
mean nothing, the torch/ONNX agreement still does). Writes ``results.json`` and ``results.md`` to ``--out``.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))


def run_measured(cmd: List[str], env: Dict[str, str], log: Path) -> dict:
    """Run ``cmd``; wall seconds and its peak RSS (MiB, from wait4: this child only)."""
    start = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed; see {log}")
    return {"wall_s": wall, "peak_rss_mib": usage.ru_maxrss / 1024}


def init_fold(dataset: str, trainer: str, plans: str, configuration: str) -> None:
    """Fold 0 saved right after initialize(): untrained, for timing (see the module docstring)."""
    import torch
    from nnunetv2.run.run_training import get_trainer_from_args

    from sam_nnunet.export.model import save_fold

    t = get_trainer_from_args(dataset, configuration, 0, trainer, plans, device=torch.device("cpu"))
    t.initialize()
    t.current_epoch = -1  # nnU-Net stores current_epoch + 1: this fold reads as trained for 0 epochs
    save_fold(t)


def trained_epochs(checkpoint: Path) -> int:
    """Epochs a fold was trained for (0: saved by --init-missing straight after initialize())."""
    import torch

    return int(torch.load(checkpoint, map_location="cpu", weights_only=False).get("current_epoch", 0))


def dice_per_class(a: np.ndarray, b: np.ndarray, labels) -> Dict[str, float]:
    out = {}
    for label in labels:
        x, y = a == int(label), b == int(label)
        out[label] = 1.0 if x.sum() + y.sum() == 0 else float(2 * (x & y).sum() / (x.sum() + y.sum()))
    return out


def mean_per_class(dices: List[Dict[str, float]], labels) -> Dict[str, float]:
    return {k: float(np.mean([d[k] for d in dices])) for k in labels}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", required=True, help="nnUNet_results holding the models")
    p.add_argument("--raw", required=True, help="nnUNet_raw (imagesTr/labelsTr of the dataset)")
    p.add_argument("--preprocessed", required=True, help="nnUNet_preprocessed (splits_final.json)")
    p.add_argument("--dataset", default="Dataset027_ACDC")
    p.add_argument("--models", nargs="+", default=["nnUNetTrainer:nnUNetPlans:2d", "HSPSAMTrainer:nnUNetPlans_SAMcpu:2d",
                                                   "SelfPromptSAMTrainer:nnUNetPlans_SAMcpu:2d"])
    p.add_argument("--cases", type=int, default=6, help="validation volumes of fold 0 to predict")
    p.add_argument("--init-missing", action="store_true", help="untrained fold 0 for models without one")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)

    from sam_nnunet import nnunet_env

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    own = dict(nnunet_env(nnUNet_raw=args.raw, nnUNet_preprocessed=args.preprocessed, nnUNet_results=args.results),
               nnUNet_compile="false")
    os.environ.update(own)
    env = dict(os.environ)
    raw = Path(args.raw) / args.dataset
    dataset_json = json.loads((raw / "dataset.json").read_text())
    ending = dataset_json["file_ending"]
    labels = [str(v) for k, v in dataset_json["labels"].items() if k != "background"]
    splits = json.loads((Path(args.preprocessed) / args.dataset / "splits_final.json").read_text())
    cases = sorted(splits[0]["val"])[: args.cases]
    inputs = out / "input"
    if not inputs.exists():
        inputs.mkdir()
        for case in cases:
            for f in raw.glob(f"imagesTr/{case}_*{ending}"):
                shutil.copy(f, inputs / f.name)

    import SimpleITK as sitk

    threads = str(os.cpu_count())
    rows = []
    for spec in args.models:
        trainer, plans, configuration = spec.split(":")
        folder = Path(args.results) / args.dataset / f"{trainer}__{plans}__{configuration}"
        checkpoint = folder / "fold_0" / "checkpoint_final.pth"
        if not checkpoint.is_file():
            if not args.init_missing:
                raise SystemExit(f"{folder} has no fold_0/checkpoint_final.pth (train it, or pass --init-missing)")
            init_fold(args.dataset, trainer, plans, configuration)
        trained = trained_epochs(checkpoint) > 0
        onnx_model = out / "onnx" / args.dataset / folder.name
        if not onnx_model.exists():
            subprocess.run(["sam_nnunet", "export-onnx", "-d", args.dataset, "-c", configuration, "-tr", trainer, "-p",
                            plans, "-f", "0", "-o", str(out / "onnx")], env=env, check=True)
        preds = {b: out / "pred" / folder.name / b for b in ("torch", "onnxruntime")}
        for d in preds.values():
            shutil.rmtree(d, ignore_errors=True)
        common = ["-i", str(inputs), "-f", "0", "-npp", "0", "-nps", "0", "--disable_progress_bar"]
        print(f"{spec}: predicting {len(cases)} volumes with torch, then ONNX Runtime ...", flush=True)
        t = run_measured(["nnUNetv2_predict", *common, "-o", str(preds["torch"]), "-d", args.dataset, "-c", configuration,
                          "-tr", trainer, "-p", plans, "-device", "cpu"], env, out / f"{folder.name}.torch.log")
        o = run_measured(["sam_nnunet", "predict-onnx", *common, "-o", str(preds["onnxruntime"]), "-m", str(onnx_model),
                          "--threads", threads], env, out / f"{folder.name}.onnx.log")
        agree, gt_t, gt_o = [], [], []
        for case in cases:
            a, b = (sitk.GetArrayFromImage(sitk.ReadImage(str(preds[k] / f"{case}{ending}"))) for k in preds)
            gt = sitk.GetArrayFromImage(sitk.ReadImage(str(raw / "labelsTr" / f"{case}{ending}")))
            agree.append(dice_per_class(a, b, labels)), gt_t.append(dice_per_class(gt, a, labels))
            gt_o.append(dice_per_class(gt, b, labels))
        onnx_bytes = (onnx_model / "fold_0" / "model.onnx").stat().st_size
        rows.append({"model": spec, "trained": trained, "volumes": len(cases),
                     "torch": dict(t, s_per_volume=t["wall_s"] / len(cases)),
                     "onnxruntime": dict(o, s_per_volume=o["wall_s"] / len(cases)),
                     "speedup": t["wall_s"] / o["wall_s"], "onnx_mib": onnx_bytes / 2 ** 20,
                     "dice_onnx_vs_torch": mean_per_class(agree, labels), "dice_gt_torch": mean_per_class(gt_t, labels),
                     "dice_gt_onnx": mean_per_class(gt_o, labels)})
        print(json.dumps(rows[-1], indent=1), flush=True)

    import onnxruntime
    import torch

    from benchmark import cpu_name

    meta = {"date": datetime.date.today().isoformat(), "machine": f"{os.cpu_count()} CPU cores ({cpu_name()})",
            "torch": torch.__version__, "onnxruntime": onnxruntime.__version__, "cases": cases,
            "command": " ".join(["benchmarks/onnx_inference.py", *(argv if argv is not None else sys.argv[1:])])}
    (out / "results.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    lines = [f"{meta['date']}, {meta['machine']}, torch {meta['torch']}, ONNX Runtime {meta['onnxruntime']}; "
             f"{len(cases)} volumes, sequential, mirroring on", "",
             "| model | s/volume torch | s/volume ORT | speed-up | peak RSS torch (MiB) | peak RSS ORT (MiB) | "
             "Dice ORT vs torch (per class) | Dice vs GT torch / ORT (mean) |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        gt = (f"{np.mean(list(r['dice_gt_torch'].values())):.3f} / {np.mean(list(r['dice_gt_onnx'].values())):.3f}"
              if r["trained"] else "untrained fold")
        lines.append(f"| {r['model']} | {r['torch']['s_per_volume']:.2f} | {r['onnxruntime']['s_per_volume']:.2f} | "
                     f"{r['speedup']:.2f}x | {r['torch']['peak_rss_mib']:.0f} | {r['onnxruntime']['peak_rss_mib']:.0f} | "
                     f"{', '.join(f'{v:.4f}' for v in r['dice_onnx_vs_torch'].values())} | {gt} |")
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())

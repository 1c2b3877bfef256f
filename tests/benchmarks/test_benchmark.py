"""The benchmark harness in --quick mode: report structure and finite, positive numbers (not speeds)."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "benchmark.py"


def test_quick_benchmark_writes_json_markdown_and_plot(acdc_preprocessed, tmp_path):
    out = tmp_path / "bench"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAM_NNUNET_")}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--out", str(out), "--quick",
                           "--nnunet-raw", str(acdc_preprocessed["nnUNet_raw"]),
                           "--nnunet-preprocessed", str(acdc_preprocessed["nnUNet_preprocessed"]),
                           "--processes", "1"], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((out / "results.json").read_text())
    rows = result["trainers"]
    assert [r["trainer"] for r in rows] == ["nnUNetTrainer", "HSPSAMTrainer", "SelfPromptSAMTrainer"]
    assert result["meta"]["seed"] == 0 and "fold 0" in result["meta"]["split"]
    for r in rows:
        for key in ("step_s_median", "step_s_q1", "step_s_q3", "infer_s_per_volume", "train_peak_rss_mb",
                    "infer_peak_rss_mb", "params_total", "params_trainable", "budget_steps"):
            assert math.isfinite(r[key]) and r[key] > 0, (r["trainer"], key, r[key])
        assert r["step_s_q1"] <= r["step_s_median"] <= r["step_s_q3"]
        assert r["params_trainable"] <= r["params_total"]
        assert set(r["dice"]) == {"1", "2", "3"} and all(0 <= d <= 1 for d in r["dice"].values())
        assert r["patch_size"] == [128, 128] and r["batch_size"] == 8  # same patch and batch for all
    assert rows[0]["val_cases"] == rows[1]["val_cases"] == rows[2]["val_cases"]  # same validation cases
    table = (out / "results.md").read_text()
    assert "| HSPSAMTrainer |" in table and "| SelfPromptSAMTrainer |" in table and "x)" in table  # ratio against nnUNetTrainer
    png = (out / "results.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_network_speed_reports_finite_positive_times_for_2d_and_3d():
    script = SCRIPT.parent / "network_speed.py"
    for args in (["--network", "SelfPromptSAM", "--patch", "2", "32", "32", "--batch", "1"],
                 ["--network", "HSPSAM", "--patch", "32", "32", "--batch", "2"]):
        proc = subprocess.run([sys.executable, str(script), *args, "--steps", "1", "--warmup", "0"],
                              capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr[-2000:]
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        assert r["network"] == args[1] and r["patch"] == [int(a) for a in args[3:-2]]
        for key in ("train_step_s", "infer_tile_s", "params", "train_step_gflop", "infer_tile_gflop",
                    "train_tflops", "infer_tflops"):
            assert math.isfinite(r[key]) and r[key] > 0, (args, key, r[key])
        # a training step (forward + backward at batch B) costs more than one batch-1 forward
        assert r["train_step_gflop"] > r["infer_tile_gflop"]


def test_conv_ab_reports_both_backends_for_2d_and_3d():
    proc = subprocess.run([sys.executable, str(SCRIPT.parent / "conv_ab.py"), "--patch", "32", "32", "--patch", "2", "32", "32",
                           "--rounds", "1", "--calls", "1"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [json.loads(line) for line in proc.stdout.strip().splitlines()]
    measured = [r for r in rows if "what" in r]
    assert [(r["patch"], r["what"]) for r in measured] == [
        ([32, 32], "inference tile, batch 1"), ([2, 32, 32], "inference tile, batch 1"),
        ([2, 32, 32], "training step, batch 1")]
    for r in measured:
        assert all(math.isfinite(r[k]) and r[k] > 0 for k in ("torch", "onednn", "onednn_over_torch")), r

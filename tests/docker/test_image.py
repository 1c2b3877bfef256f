"""The challenge image built for real (docker/build.sh with buildah) and run as grand-challenge.org runs an
algorithm: ``/input/images/<slug>/<uuid>.mha`` read-only, ``/output`` writable, no network, the image's own
user (uid 1000) and entrypoint.

Needs buildah, debootstrap, unshare and root (the base image is built locally, see base_image.py). Where they
are missing the test is skipped with the reason, unless ``SAM_NNUNET_REQUIRE_IMAGE_TEST=1`` (CI sets it, and
installs them), where that is a failure. Run alone with ``python -m pytest -m image tests``.
"""
import json
import os
import subprocess
import uuid
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from base_image import ensure_base_image, missing_tools, run, torch_requirements

pytestmark = pytest.mark.image
DOCKER = Path(__file__).resolve().parents[2] / "docker"
CASE = "2f8e0c1a-5b9d-4c3e-8a71-0d6f4e2b9c10"


@pytest.fixture(scope="module")
def engine():
    missing = missing_tools()
    if missing:
        reason = f"cannot build the image here, missing: {missing}"
        if os.environ.get("SAM_NNUNET_REQUIRE_IMAGE_TEST") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    return ensure_base_image()


def image_config(tag: str) -> dict:
    return json.loads(run(["buildah", "inspect", "--type", "image", tag]))["OCIv1"]["config"]


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_image_predicts_a_grand_challenge_folder_offline_as_non_root(engine, trained_model, acdc_preprocessed,
                                                                     tmp_path, backend):
    """backend onnx: the folds exported to ONNX, predicted with ONNX Runtime inside the image."""
    _, env = trained_model
    tag = f"localhost/sam-nnunet-test:{uuid.uuid4().hex[:8]}"
    build = subprocess.run(["bash", str(DOCKER / "build.sh"), "-d", "27", "-c", "2d", "-tr", "HSPSAMTrainer_1epoch",
                            "-p", "nnUNetPlans_SAMcpu", "-f", "0", "-t", tag, "--engine", "buildah", "--base", engine,
                            "--input-slugs", "cine-mri", "--output-slug", "cardiac-segmentation", "--backend", backend],
                           env=env, capture_output=True, text=True)
    assert build.returncode == 0, build.stdout[-4000:] + build.stderr[-4000:]
    container = None
    try:
        config = image_config(tag)
        assert config["User"] == "1000:1000"
        assert config["Entrypoint"] == ["python", "-m", "sam_nnunet.submission"]
        assert "SAM_NNUNET_OUTPUT_SLUG=cardiac-segmentation" in config["Env"]

        image = sorted((acdc_preprocessed["nnUNet_raw"] / "Dataset027_ACDC" / "imagesTs").glob("*.nii.gz"))[0]
        inp, out = tmp_path / "input", tmp_path / "output"
        (inp / "images" / "cine-mri").mkdir(parents=True)
        (inp / "images" / "patient-info").mkdir()  # another interface of the job: the baked-in slug picks ours
        sitk.WriteImage(sitk.ReadImage(str(image)), str(inp / "images" / "cine-mri" / f"{CASE}.mha"))
        out.mkdir(mode=0o777)
        out.chmod(0o777)
        for p in [tmp_path, *inp.rglob("*")]:
            p.chmod(p.stat().st_mode | 0o555 if p.is_dir() else p.stat().st_mode | 0o444)
        before = (inp / "images" / "cine-mri" / f"{CASE}.mha").read_bytes()

        container = run(["buildah", "from", tag])
        in_container = ["unshare", "--net", "buildah", "run", "--isolation", "chroot", "-v", f"{inp}:/input:ro",
                        "-v", f"{out}:/output", container, "--"]
        probe = run(in_container + ["python", "-c", "import os, importlib.util as u, torch; print(os.getuid()); "
                                                    "print(torch.__version__); print(u.find_spec('monai') is None); "
                                                    "print(u.find_spec('onnxruntime') is not None)"])
        uid, torch_version, no_monai, has_ort = probe.splitlines()[-4:]
        assert uid == "1000" and no_monai == "True"  # the image's user; MONAI (report only) is not installed
        assert has_ort == str(backend == "onnx")  # ONNX Runtime only where it is used
        assert f"torch=={torch_version.split('+')[0]}" in torch_requirements()  # the base image's torch was kept
        offline = subprocess.run(in_container + ["python", "-c", "import socket; socket.create_connection(("
                                                 "'1.1.1.1', 443), timeout=5)"], capture_output=True, text=True)
        assert offline.returncode != 0 and "unreachable" in offline.stderr.lower()

        proc = subprocess.run(in_container + config["Entrypoint"] + config["Cmd"], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        assert "(grand-challenge layout)" in proc.stdout
        assert ("ONNX Runtime" in proc.stdout) == (backend == "onnx")
        mask = out / "images" / "cardiac-segmentation" / f"{CASE}.mha"
        assert sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()) == [str(mask.relative_to(out))]
        seg, img = sitk.ReadImage(str(mask)), sitk.ReadImage(str(inp / "images" / "cine-mri" / f"{CASE}.mha"))
        assert seg.GetSize() == img.GetSize()
        np.testing.assert_allclose(seg.GetSpacing(), img.GetSpacing(), atol=1e-5)
        np.testing.assert_allclose(seg.GetOrigin(), img.GetOrigin(), atol=1e-4)
        assert set(np.unique(sitk.GetArrayFromImage(seg)).tolist()) <= {0, 1, 2, 3}
        assert (inp / "images" / "cine-mri" / f"{CASE}.mha").read_bytes() == before

        again = subprocess.run(in_container + config["Entrypoint"] + config["Cmd"], capture_output=True, text=True)
        assert again.returncode == 2 and "already exist" in again.stderr  # a rerun keeps the finished mask
    finally:
        if container:
            subprocess.run(["buildah", "rm", container], capture_output=True)
        subprocess.run(["buildah", "rmi", tag], capture_output=True)

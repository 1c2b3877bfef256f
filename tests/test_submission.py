"""The challenge entrypoint (the script the Docker image runs), on a tiny model trained on real ACDC crops."""
import hashlib
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import SimpleITK as sitk


def run_entrypoint(*args, env=None):
    return subprocess.run([sys.executable, "-m", "sam_nnunet.submission", *args], capture_output=True, text=True,
                          env=env)


def checksums(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.fixture
def inputs(acdc_preprocessed, tmp_path):
    """The held-out ACDC crops as .nii.gz, .nii and .mha files."""
    src = sorted((acdc_preprocessed["nnUNet_raw"] / "Dataset027_ACDC" / "imagesTs").glob("*.nii.gz"))
    folder = tmp_path / "input"
    folder.mkdir()
    img0 = sitk.ReadImage(str(src[0]))
    sitk.WriteImage(img0, str(folder / "caseA.nii.gz"))
    sitk.WriteImage(img0, str(folder / "caseB.nii"))
    sitk.WriteImage(sitk.ReadImage(str(src[1])), str(folder / "caseC.mha"))
    return folder


@pytest.fixture
def exported_model(trained_model, tmp_path):
    """The trained model packed by nnUNetv2_export_model_to_zip and unpacked, as a user would ship it."""
    model_dir, env = trained_model
    zip_file = tmp_path / "model.zip"
    proc = subprocess.run(["nnUNetv2_export_model_to_zip", "-d", "27", "-o", str(zip_file), "-c", "2d",
                           "-tr", "HSPSAMTrainer_1epoch", "-p", "nnUNetPlans_SAMcpu", "-f", "0"],
                          env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    root = tmp_path / "model"
    zipfile.ZipFile(zip_file).extractall(root)
    return root


def test_predicts_nifti_and_mha_with_input_geometry(exported_model, inputs, tmp_path):
    before = checksums(inputs)
    out = tmp_path / "output"
    env = {k: v for k, v in os.environ.items() if k != "nnUNet_extTrainer"}  # the entrypoint finds our trainers
    proc = run_entrypoint("--model", str(exported_model), "--input", str(inputs), "--output", str(out),
                          "--folds", "0", "--device", "cpu", "--no-mirroring", env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "[3/3]" in proc.stdout
    assert sorted(p.name for p in out.iterdir()) == ["caseA.nii.gz", "caseB.nii", "caseC.mha"]
    for name in ("caseA.nii.gz", "caseB.nii", "caseC.mha"):
        img, seg = sitk.ReadImage(str(inputs / name)), sitk.ReadImage(str(out / name))
        assert seg.GetSize() == img.GetSize()
        np.testing.assert_allclose(seg.GetSpacing(), img.GetSpacing(), atol=1e-5)
        np.testing.assert_allclose(seg.GetOrigin(), img.GetOrigin(), atol=1e-4)
        np.testing.assert_allclose(seg.GetDirection(), img.GetDirection(), atol=1e-5)
        assert set(np.unique(sitk.GetArrayFromImage(seg)).tolist()) <= {0, 1, 2, 3}
    assert checksums(inputs) == before


def test_empty_input_folder(exported_model, tmp_path):
    (tmp_path / "in").mkdir()
    proc = run_entrypoint("--model", str(exported_model), "--input", str(tmp_path / "in"),
                          "--output", str(tmp_path / "out"), "--device", "cpu")
    assert proc.returncode == 2 and "holds no .nii.gz, .nii, .mha files" in proc.stderr


def test_unreadable_file_stops_before_writing_anything(exported_model, inputs, tmp_path):
    (inputs / "broken.nii.gz").write_bytes(b"\x1f\x8b not really")
    before = checksums(inputs)
    proc = run_entrypoint("--model", str(exported_model), "--input", str(inputs), "--output", str(tmp_path / "out"),
                          "--device", "cpu")
    assert proc.returncode == 2 and "cannot read broken.nii.gz" in proc.stderr
    assert not (tmp_path / "out").exists() and checksums(inputs) == before


def test_wrong_channel_count(exported_model, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    two_channels = sitk.Compose(sitk.Image(32, 32, 3, sitk.sitkFloat32), sitk.Image(32, 32, 3, sitk.sitkFloat32))
    sitk.WriteImage(two_channels, str(folder / "rgbish.mha"))
    proc = run_entrypoint("--model", str(exported_model), "--input", str(folder), "--output", str(tmp_path / "out"),
                          "--device", "cpu")
    assert proc.returncode == 2 and "2 component(s); the model expects 1 channel(s)" in proc.stderr


def test_output_inside_input_is_refused(exported_model, inputs):
    before = checksums(inputs)
    proc = run_entrypoint("--model", str(exported_model), "--input", str(inputs), "--output", str(inputs / "masks"),
                          "--device", "cpu")
    assert proc.returncode == 2 and "must not be the input folder or inside it" in proc.stderr
    assert checksums(inputs) == before

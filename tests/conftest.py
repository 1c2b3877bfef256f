"""Shared fixtures: small crops of the shipped ACDC data, written in the official ACDC layout."""
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
ACDC = Path(os.environ.get("SAM_NNUNET_ACDC", SHARED / "ACDC"))


def acdc_patients(n: int):
    if not (ACDC / "training").is_dir():
        pytest.fail(f"the shipped ACDC data is missing at {ACDC} (set SAM_NNUNET_ACDC to its folder)")
    return sorted(p for p in (ACDC / "training").iterdir() if p.is_dir())[:n]


def crop_acdc(dest: Path, n_patients: int, size: int = 96, slices: int = 3) -> Path:
    """Copy ``n_patients`` real ACDC patients to ``dest/training`` cropped around the heart.

    The crop window is centred on the labelled structures of the first frame and kept for both frames;
    ``nibabel``'s slicer updates the affine so the crops keep correct world geometry.
    """
    (dest / "testing").mkdir(parents=True, exist_ok=True)
    for patient in acdc_patients(n_patients):
        out = dest / "training" / patient.name
        out.mkdir(parents=True)
        frames = sorted(f for f in patient.glob(f"{patient.name}_frame??.nii.gz"))
        gt0 = np.asarray(nib.load(str(frames[0]).replace(".nii.gz", "_gt.nii.gz")).dataobj)
        cx, cy, cz = (int(v) for v in np.argwhere(gt0 > 0).mean(0).round())
        sx = slice(max(cx - size // 2, 0), max(cx - size // 2, 0) + size)
        sy = slice(max(cy - size // 2, 0), max(cy - size // 2, 0) + size)
        sz = slice(max(cz - slices // 2, 0), max(cz - slices // 2, 0) + slices)
        for f in frames:
            for src in (f, Path(str(f).replace(".nii.gz", "_gt.nii.gz"))):
                img = nib.load(str(src))
                nib.save(img.slicer[sx, sy, sz], str(out / src.name))
    return dest


@pytest.fixture(scope="session")
def acdc_crop(tmp_path_factory) -> Path:
    """Six real ACDC patients (12 volumes), 96 x 96 x 3 crops, official layout."""
    return crop_acdc(tmp_path_factory.mktemp("acdc_src") / "ACDC", 6)


@pytest.fixture
def nnunet_env(tmp_path, monkeypatch):
    """nnU-Net folders under tmp_path, exported for in-process code and subprocesses."""
    from sam_nnunet import trainers_folder

    env = {"nnUNet_raw": tmp_path / "raw", "nnUNet_preprocessed": tmp_path / "preprocessed",
           "nnUNet_results": tmp_path / "results"}
    for k, v in env.items():
        v.mkdir()
        monkeypatch.setenv(k, str(v))
    monkeypatch.setenv("nnUNet_extTrainer", trainers_folder())
    monkeypatch.setenv("nnUNet_n_proc_DA", "1")
    monkeypatch.setenv("nnUNet_compile", "false")
    return env

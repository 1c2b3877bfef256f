"""The committed golden model (HSP-SAM, 20 epochs on 18 shipped ACDC patients) and volumes it never saw."""
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from tests.golden.golden import ACDC, MODEL_FOLDER, held_out_cases

CASE = "patient023_frame01"


@pytest.fixture(scope="session")
def held_out_volume() -> Path:
    """A full shipped ACDC volume the golden model was not trained on (9 x 256 x 216 voxels)."""
    return held_out_cases(ACDC)[CASE]


def heart_crop(volume: Path, size: int = 96) -> sitk.Image:
    """``volume`` cropped in-plane to ``size`` x ``size`` around its labelled heart (all slices); SimpleITK's slicing
    keeps the crop's world geometry."""
    image = sitk.ReadImage(str(volume))
    gt = sitk.GetArrayFromImage(sitk.ReadImage(str(volume).replace(".nii.gz", "_gt.nii.gz")))
    _, cy, cx = (int(v) for v in np.argwhere(gt > 0).mean(0).round())
    x0 = min(max(cx - size // 2, 0), image.GetSize()[0] - size)
    y0 = min(max(cy - size // 2, 0), image.GetSize()[1] - size)
    return image[x0:x0 + size, y0:y0 + size, :]


@pytest.fixture(scope="session")
def crop_file(held_out_volume, tmp_path_factory) -> Path:
    """The held-out volume's heart crop as NIfTI (real pixels and geometry)."""
    path = tmp_path_factory.mktemp("crop") / f"{CASE}.nii.gz"
    sitk.WriteImage(heart_crop(held_out_volume), str(path))
    return path


@pytest.fixture
def model_copy(tmp_path) -> Path:
    """A copy of the golden model folder in a results layout (``results/Dataset027_ACDC/TRAINER__PLANS__CONFIG``)."""
    target = tmp_path / "results" / MODEL_FOLDER.parent.name / MODEL_FOLDER.name
    shutil.copytree(MODEL_FOLDER, target)
    return target

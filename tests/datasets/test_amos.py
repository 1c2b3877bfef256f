import json

import nibabel as nib
import numpy as np
import pytest

from sam_nnunet.datasets.amos import convert_amos
from sam_nnunet.datasets.common import DatasetLayoutError

OFFICIAL_NAMES = ["background", "spleen", "right kidney", "left kidney", "gall bladder", "esophagus", "liver",
                  "stomach", "arota", "postcava", "pancreas", "right adrenal gland", "left adrenal gland", "duodenum",
                  "bladder", "prostate/uterus"]


def names(folder):
    return sorted(p.name for p in folder.iterdir())


def test_ct_training_and_validation_go_to_imagesTr(amos, nnunet_env):
    out = convert_amos(amos, verbose=False)
    assert out == nnunet_env["nnUNet_raw"] / "Dataset302_AMOS22_CT"
    assert names(out / "imagesTr") == ["amos_0001_0000.nii.gz", "amos_0008_0000.nii.gz"]  # Tr + Va, CT only
    assert names(out / "labelsTr") == ["amos_0001.nii.gz", "amos_0008.nii.gz"]
    assert names(out / "imagesTs") == ["amos_0002_0000.nii.gz"] and not (out / "labelsTs").exists()
    ds = json.loads((out / "dataset.json").read_text())
    # label names come verbatim from the release's dataset.json (typos included), values unchanged
    assert ds["labels"] == {name: i for i, name in enumerate(OFFICIAL_NAMES)}
    assert ds["numTraining"] == 2 and ds["channel_names"] == {"0": "CT"} and ds["licence"] == "CC-BY-SA 4.0"
    # images and labels are copied unchanged, so values and geometry are the release's
    for src, dst in ((amos / "labelsVa/amos_0008.nii.gz", out / "labelsTr/amos_0008.nii.gz"),
                     (amos / "imagesTr/amos_0001.nii.gz", out / "imagesTr/amos_0001_0000.nii.gz")):
        assert dst.read_bytes() == src.read_bytes()
    assert sorted(np.unique(nib.load(str(out / "labelsTr/amos_0008.nii.gz")).dataobj)) == list(range(16))


@pytest.mark.parametrize("modality, folder, train, test, channel", [
    ("MRI", "Dataset303_AMOS22_MRI", ["amos_0507_0000.nii.gz"], ["amos_0540_0000.nii.gz"], "MRI"),
    ("both", "Dataset304_AMOS22_CTMRI", ["amos_0001_0000.nii.gz", "amos_0008_0000.nii.gz", "amos_0507_0000.nii.gz"],
     ["amos_0002_0000.nii.gz", "amos_0540_0000.nii.gz"], "nonCT"),
])
def test_modality_selects_cases_by_id(amos, nnunet_env, modality, folder, train, test, channel):
    out = convert_amos(amos, modality=modality, verbose=False)
    assert out.name == folder
    assert names(out / "imagesTr") == train and names(out / "imagesTs") == test
    assert json.loads((out / "dataset.json").read_text())["channel_names"] == {"0": channel}


def test_without_dataset_json_the_documented_names_are_used(amos, nnunet_env):
    (amos / "dataset.json").unlink()
    out = convert_amos(amos, 350, max_cases=1, verbose=False)
    ds = json.loads((out / "dataset.json").read_text())
    assert out.name == "Dataset350_AMOS22_CT" and names(out / "imagesTr") == ["amos_0001_0000.nii.gz"]
    assert ds["labels"]["postcava"] == 9 and ds["labels"]["prostate/uterus"] == 15 and len(ds["labels"]) == 16


def test_validation_image_without_label_names_the_file(amos, nnunet_env):
    (amos / "labelsVa/amos_0008.nii.gz").unlink()
    with pytest.raises(DatasetLayoutError, match="imagesVa/amos_0008.nii.gz has no label file"):
        convert_amos(amos, verbose=False)
    assert list(nnunet_env["nnUNet_raw"].iterdir()) == []


def test_label_value_16_names_the_file_and_leaves_nothing(amos, nnunet_env, make):
    label = make.labels(15, 8)
    label[1, 2, 3] = 16
    make.nifti(amos / "labelsVa/amos_0008.nii.gz", label)
    with pytest.raises(DatasetLayoutError, match=r"labelsVa/amos_0008.nii.gz holds label values \[16\]"):
        convert_amos(amos, verbose=False)
    assert list(nnunet_env["nnUNet_raw"].iterdir()) == []


@pytest.mark.bad_input("converters")
def test_shape_mismatch_names_the_files(amos, nnunet_env, make):
    make.nifti(amos / "labelsTr/amos_0001.nii.gz", make.labels(15, 1, shape=(8, 7, 4)))
    with pytest.raises(DatasetLayoutError, match=r"label .*labelsTr/amos_0001.nii.gz does not lie on the voxel grid of "
                                                 r"image .*imagesTr/amos_0001.nii.gz: label shape \(8, 7, 4\) vs image "
                                                 r"shape \(8, 8, 4\)"):
        convert_amos(amos, verbose=False)


def test_missing_folder_and_bad_dataset_json_are_clear_errors(amos, tmp_path, nnunet_env):
    with pytest.raises(DatasetLayoutError, match="imagesTr does not exist: expected the official AMOS22 layout"):
        convert_amos(tmp_path / "empty", verbose=False)
    (amos / "dataset.json").write_text(json.dumps({"labels": {"0": "background", "1": "spleen"}}))
    with pytest.raises(DatasetLayoutError, match=r"dataset.json lists label values \[0, 1\]"):
        convert_amos(amos, verbose=False)
    with pytest.raises(ValueError, match="modality"):
        convert_amos(amos, modality="PET", verbose=False)

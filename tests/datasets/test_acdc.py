import json
import shutil

import nibabel as nib
import numpy as np
import pytest

from sam_nnunet.datasets.acdc import DatasetLayoutError, convert_acdc


def test_converts_real_acdc_with_patient_grouped_splits(acdc_crop, nnunet_env):
    out = convert_acdc(acdc_crop, 27, holdout=1, verbose=False)
    patients = sorted(p.name for p in (acdc_crop / "training").iterdir())
    train_patients, held_out = patients[:-1], patients[-1]
    images = sorted(p.name for p in (out / "imagesTr").iterdir())
    assert len(images) == 2 * len(train_patients) and all(n.endswith("_0000.nii.gz") for n in images)
    assert sorted(p.name for p in (out / "imagesTs").iterdir()) == sorted(
        f.name.replace(".nii.gz", "_0000.nii.gz") for f in (acdc_crop / "training" / held_out).glob("*frame??.nii.gz"))
    ds = json.loads((out / "dataset.json").read_text())
    assert ds["labels"] == {"background": 0, "RV": 1, "MLV": 2, "LVC": 3} and ds["numTraining"] == len(images)
    # labels copied unchanged
    src = next((acdc_crop / "training" / patients[0]).glob("*_gt.nii.gz"))
    dst = out / "labelsTr" / src.name.replace("_gt", "")
    np.testing.assert_array_equal(np.asarray(nib.load(str(dst)).dataobj), np.asarray(nib.load(str(src)).dataobj))

    splits = json.loads((nnunet_env["nnUNet_preprocessed"] / "Dataset027_ACDC" / "splits_final.json").read_text())
    assert len(splits) == 5
    seen = []
    for split in splits:
        val_patients = {c[: len("patient000")] for c in split["val"]}
        train_pats = {c[: len("patient000")] for c in split["train"]}
        assert not val_patients & train_pats  # both frames of a patient in one fold
        seen += sorted(val_patients)
    assert sorted(seen) == train_patients


def test_existing_dataset_is_not_overwritten(acdc_crop, nnunet_env):
    out = convert_acdc(acdc_crop, 27, verbose=False)
    marker = out / "dataset.json"
    before = marker.read_bytes()
    with pytest.raises(FileExistsError, match="not overwriting"):
        convert_acdc(acdc_crop, 27, verbose=False)
    assert marker.read_bytes() == before


def _copy(acdc_crop, tmp_path):
    return shutil.copytree(acdc_crop, tmp_path / "ACDC_copy")


def test_missing_label_names_the_file_and_leaves_nothing(acdc_crop, nnunet_env, tmp_path):
    src = _copy(acdc_crop, tmp_path)
    gt = sorted(src.glob("training/*/*_gt.nii.gz"))[3]
    gt.unlink()
    with pytest.raises(DatasetLayoutError, match=gt.name):
        convert_acdc(src, 27, verbose=False)
    assert list(nnunet_env["nnUNet_raw"].iterdir()) == []


def test_corrupt_nifti_names_the_file_and_leaves_no_partial_dataset(acdc_crop, nnunet_env, tmp_path):
    src = _copy(acdc_crop, tmp_path)
    bad = sorted(src.glob("training/*/*_frame??.nii.gz"))[-1]  # last patient: earlier ones are copied first
    bad.write_bytes(b"\x1f\x8b broken")
    with pytest.raises(DatasetLayoutError, match=bad.name):
        convert_acdc(src, 27, verbose=False)
    assert list(nnunet_env["nnUNet_raw"].iterdir()) == []  # no dataset, no temp folder


def test_unexpected_label_value_is_an_error(acdc_crop, nnunet_env, tmp_path):
    src = _copy(acdc_crop, tmp_path)
    gt = sorted(src.glob("training/*/*_gt.nii.gz"))[0]
    img = nib.load(str(gt))
    data = np.asarray(img.dataobj).copy()
    data[0, 0, 0] = 7
    nib.save(nib.Nifti1Image(data, img.affine, img.header), str(gt))
    with pytest.raises(DatasetLayoutError, match=r"label values \[7\]"):
        convert_acdc(src, 27, verbose=False)


def test_wrong_layout_is_a_clear_error(tmp_path, nnunet_env):
    with pytest.raises(DatasetLayoutError, match="official ACDC layout"):
        convert_acdc(tmp_path / "not_acdc", 27, verbose=False)

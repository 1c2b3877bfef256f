import json

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from sam_nnunet.datasets.common import DatasetLayoutError
from sam_nnunet.datasets.synapse import LOOKUP, TEST_CASES, TRAIN_CASES, convert_synapse

# the 8-organ protocol as source BTCV value -> new value (SAMed preprocess_data.py hashmap)
SAMED = {1: 1, 2: 2, 3: 3, 4: 4, 5: 0, 6: 5, 7: 6, 8: 7, 9: 0, 10: 0, 11: 8, 12: 0, 13: 0}


def test_split_is_transunets():
    assert sorted(TEST_CASES) == [1, 2, 3, 4, 8, 22, 25, 29, 32, 35, 36, 38]
    assert len(TRAIN_CASES) == 18 and not set(TRAIN_CASES) & set(TEST_CASES)
    assert sorted(TRAIN_CASES + TEST_CASES) == list(range(1, 11)) + list(range(21, 41))
    assert {k: int(LOOKUP[k]) for k in SAMED} == SAMED and LOOKUP[0] == 0


def test_remaps_to_eight_organs_with_the_transunet_split(synapse, nnunet_env):
    out = convert_synapse(synapse, verbose=False)
    assert out == nnunet_env["nnUNet_raw"] / "Dataset301_Synapse8"
    assert sorted(p.name for p in (out / "imagesTr").iterdir()) == ["case0005_0000.nii.gz", "case0006_0000.nii.gz"]
    assert sorted(p.name for p in (out / "labelsTr").iterdir()) == ["case0005.nii.gz", "case0006.nii.gz"]
    assert [p.name for p in (out / "imagesTs").iterdir()] == ["case0001_0000.nii.gz"]
    assert [p.name for p in (out / "labelsTs").iterdir()] == ["case0001.nii.gz"]

    ds = json.loads((out / "dataset.json").read_text())
    assert ds["labels"] == {"background": 0, "spleen": 1, "right kidney": 2, "left kidney": 3, "gallbladder": 4,
                            "liver": 5, "stomach": 6, "aorta": 7, "pancreas": 8}
    assert ds["numTraining"] == 2 and ds["channel_names"] == {"0": "CT"} and ds["file_ending"] == ".nii.gz"

    for n, folder in ((5, "labelsTr"), (1, "labelsTs")):
        src = np.asarray(nib.load(str(synapse / f"RawData/Training/label/label{n:04d}.nii.gz")).dataobj)
        dst = nib.load(str(out / folder / f"case{n:04d}.nii.gz"))
        new = np.asarray(dst.dataobj)
        assert dst.get_data_dtype() == np.uint8
        assert np.all(new[src == 5] == 0) and np.all(new[src == 6] == 5)  # esophagus dropped, liver -> 5
        assert np.all(new[src == 11] == 8) and np.all(new[src == 13] == 0)  # pancreas -> 8, left adrenal dropped
        np.testing.assert_array_equal(new, np.vectorize({0: 0, **SAMED}.get)(src))
        assert sorted(np.unique(new)) == list(range(9))


def test_geometry_is_preserved(synapse, nnunet_env):
    out = convert_synapse(synapse, verbose=False)
    src_image = synapse / "RawData/Training/img/img0005.nii.gz"
    assert (out / "imagesTr/case0005_0000.nii.gz").read_bytes() == src_image.read_bytes()
    image = sitk.ReadImage(str(out / "imagesTr/case0005_0000.nii.gz"))
    label = sitk.ReadImage(str(out / "labelsTr/case0005.nii.gz"))
    for attribute in ("GetSize", "GetSpacing", "GetOrigin", "GetDirection"):
        np.testing.assert_allclose(getattr(label, attribute)(), getattr(image, attribute)(), atol=1e-6)
    np.testing.assert_allclose(label.GetSpacing(), (0.75, 0.75, 2.5))
    np.testing.assert_allclose(nib.load(str(out / "labelsTr/case0005.nii.gz")).affine,
                               nib.load(str(src_image)).affine)


def test_max_cases_takes_the_first_of_each_split(synapse, nnunet_env):
    out = convert_synapse(synapse, 302, max_cases=1, verbose=False)
    assert [p.name for p in (out / "imagesTr").iterdir()] == ["case0005_0000.nii.gz"]
    assert [p.name for p in (out / "imagesTs").iterdir()] == ["case0001_0000.nii.gz"]


def test_missing_folder_is_a_clear_error(tmp_path, nnunet_env):
    with pytest.raises(DatasetLayoutError, match="RawData/Training/img.*official Synapse layout"):
        convert_synapse(tmp_path / "nothing", verbose=False)


def test_image_without_label_names_the_file(synapse, nnunet_env):
    (synapse / "RawData/Training/label/label0006.nii.gz").unlink()
    with pytest.raises(DatasetLayoutError, match="img0006.nii.gz has no label file .*label0006.nii.gz"):
        convert_synapse(synapse, verbose=False)
    assert list(nnunet_env["nnUNet_raw"].iterdir()) == []


@pytest.mark.bad_input("converters")
def test_shape_mismatch_names_both_files_and_leaves_nothing(synapse, nnunet_env, make):
    make.nifti(synapse / "RawData/Training/label/label0006.nii.gz", make.labels(13, 6, shape=(8, 8, 5)))
    with pytest.raises(DatasetLayoutError, match=r"label0006.nii.gz does not lie on the voxel grid of image .*img0006"
                                                 r".nii.gz: label shape \(8, 8, 5\) vs image shape \(8, 8, 4\)"):
        convert_synapse(synapse, verbose=False)
    assert list(nnunet_env["nnUNet_raw"].iterdir()) == []  # no dataset and no temporary folder


def test_unexpected_label_value_names_the_file_and_leaves_nothing(synapse, nnunet_env, make):
    label = make.labels(13, 1)
    label[0, 0, 0] = 14
    make.nifti(synapse / "RawData/Training/label/label0001.nii.gz", label)  # test case: converted last
    with pytest.raises(DatasetLayoutError, match=r"label0001.nii.gz holds label values \[14\]"):
        convert_synapse(synapse, verbose=False)
    assert list(nnunet_env["nnUNet_raw"].iterdir()) == []


def test_unknown_case_number_is_an_error(synapse, nnunet_env):
    (synapse / "RawData/Training/img/img0001.nii.gz").rename(synapse / "RawData/Training/img/img0061.nii.gz")
    with pytest.raises(DatasetLayoutError, match="img0061.nii.gz is not one of the 30 labelled"):
        convert_synapse(synapse, verbose=False)


def test_pg_sam_trains_and_predicts_on_converted_synapse(synapse, nnunet_env):
    """convert-synapse -> plan/preprocess -> PGSAMTrainer (the paper's dataset: 8 organs, CT texts) -> predict."""
    import os
    import subprocess

    env = dict(os.environ, SAM_NNUNET_ITERATIONS_PER_EPOCH="2", SAM_NNUNET_VAL_ITERATIONS_PER_EPOCH="1",
               SAM_NNUNET_SEED="0")
    trainer, plans = "PGSAMTrainer_1epoch", "nnUNetPlans_SAMcpu"
    pred = nnunet_env["nnUNet_results"].parent / "pred"
    raw = nnunet_env["nnUNet_raw"] / "Dataset301_Synapse8"
    for cmd in (["sam_nnunet", "convert-synapse", "-i", str(synapse), "-d", "301"],
                ["nnUNetv2_plan_and_preprocess", "-d", "301", "-c", "2d", "-np", "1"],
                ["sam_nnunet", "plans", "-d", "301", "--preset", "cpu_tiny"],
                # two training cases: fold "all" (nnU-Net's 5-fold split needs five)
                ["nnUNetv2_train", "301", "2d", "all", "-tr", trainer, "-p", plans, "-device", "cpu"],
                ["nnUNetv2_predict", "-i", str(raw / "imagesTs"), "-o", str(pred), "-d", "301", "-c", "2d", "-f", "all",
                 "-tr", trainer, "-p", plans, "-device", "cpu", "-npp", "1", "-nps", "1"]):
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"

    model = nnunet_env["nnUNet_results"] / "Dataset301_Synapse8" / f"{trainer}__{plans}__2d"
    texts = json.loads((model / "plans.json").read_text())["configurations"]["2d"]["architecture"]["arch_kwargs"][
        "class_texts"]
    assert len(texts) == 8 and all(t.startswith("CT image showing") for t in texts)
    assert "spleen" in texts[0] and "right kidney" in texts[1] and "pancreas" in texts[7]
    seg = nib.load(str(pred / "case0001.nii.gz"))
    assert seg.shape == nib.load(str(raw / "imagesTs" / "case0001_0000.nii.gz")).shape
    assert set(np.unique(np.asarray(seg.dataobj)).tolist()) <= set(range(9))

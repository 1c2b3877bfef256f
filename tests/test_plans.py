import json

import pytest

from sam_nnunet.plans import available_presets, derive_sam_plans, load_preset, round_patch, write_sam_plans

NNUNET_PLANS = {
    "plans_name": "nnUNetPlans",
    "configurations": {
        "2d": {"data_identifier": "nnUNetPlans_2d", "patch_size": [256, 226], "batch_size": 56},
        "3d_fullres": {"data_identifier": "nnUNetPlans_3d_fullres", "patch_size": [10, 250, 230], "batch_size": 2},
    },
}


def test_round_patch_to_multiples_of_16():
    assert round_patch([256, 226]) == [256, 224]
    assert round_patch([10, 250, 8]) == [10, 240, 16]


def test_derived_plans_keep_data_identifier_and_set_sam_fields():
    plans = derive_sam_plans(NNUNET_PLANS, load_preset("vit_b"))
    assert plans["plans_name"] == "nnUNetPlans_SAMvitb"
    two_d = plans["configurations"]["2d"]
    assert two_d["data_identifier"] == "nnUNetPlans_2d"  # reuses nnU-Net's preprocessed data
    assert two_d["patch_size"] == [256, 224] and two_d["batch_size"] == 8
    assert two_d["sam_nnunet"] == {"encoder": "vit_b"}
    assert NNUNET_PLANS["configurations"]["2d"]["batch_size"] == 56  # input untouched


def test_presets_are_shipped():
    assert {"cpu_tiny", "vit_b"} <= set(available_presets())
    with pytest.raises(FileNotFoundError, match="cpu_tiny"):
        load_preset("nope")


def test_write_refuses_to_overwrite_different_plans(tmp_path):
    folder = tmp_path / "Dataset027_ACDC"
    folder.mkdir()
    (folder / "nnUNetPlans.json").write_text(json.dumps(NNUNET_PLANS))
    out = write_sam_plans("27", "cpu_tiny", preprocessed_root=str(tmp_path))
    assert json.loads(out.read_text())["configurations"]["2d"]["patch_size"] == [128, 128]
    assert write_sam_plans("27", "cpu_tiny", preprocessed_root=str(tmp_path)) == out  # same content: fine
    out.write_text(json.dumps({"edited": True}))
    with pytest.raises(FileExistsError):
        write_sam_plans("27", "cpu_tiny", preprocessed_root=str(tmp_path))
    assert json.loads(out.read_text()) == {"edited": True}

import json
from pathlib import Path

import pytest

from sam_nnunet.plans import CPU_PRESET, available_presets, derive_sam_plans, load_preset, round_patch, write_sam_plans

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


def test_preset_training_block_is_written_to_the_configuration():
    preset = {"plans_name": "nnUNetPlans_x", "configurations": {"2d": {
        "sam_nnunet": {"encoder": "vit_tiny"}, "training": {"HSPSAMTrainer": {"learning_rate": 1e-3}}}}}
    plans = derive_sam_plans(NNUNET_PLANS, preset)
    assert plans["configurations"]["2d"]["sam_nnunet_training"] == {"HSPSAMTrainer": {"learning_rate": 1e-3}}
    assert "sam_nnunet_training" not in derive_sam_plans(NNUNET_PLANS, load_preset("vit_b"))["configurations"]["2d"]


def test_presets_are_shipped():
    assert {"cpu_tiny", "cpu_p8", "vit_b", CPU_PRESET} <= set(available_presets())
    with pytest.raises(FileNotFoundError, match="cpu_tiny"):
        load_preset("nope")


def test_the_cpu_preset_is_the_one_measured_at_60_minutes():
    """The default CPU preset's 2d configuration is the screened preset whose 60-minute row docs/benchmarks.md
    reports (``benchmarks/presets/try_p8_lr1e3.json``): shipping another means measuring it first."""
    measured = load_preset(str(Path(__file__).resolve().parents[1] / "benchmarks" / "presets" / "try_p8_lr1e3.json"))
    shipped = load_preset(CPU_PRESET)["configurations"]
    assert shipped["2d"] == measured["configurations"]["2d"]
    assert shipped["3d_fullres"]["sam_nnunet"] == shipped["2d"]["sam_nnunet"]
    assert shipped["3d_fullres"]["training"] == shipped["2d"]["training"]


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


def test_nnunet_unet_topology_follows_the_smaller_patch():
    """Kvasir-SEG's nnU-Net plans: an 8-stage 2D U-Net for 640 x 640. On the cpu_tiny preset's 128 x 128 patch it
    would pool to 1 x 1 (nnUNetTrainer then fails); the derived plans pool to 4 x 4 as nnU-Net's planner would,
    and the U-Net they describe builds and runs on that patch."""
    import torch
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    arch = {"network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
            "arch_kwargs": {"n_stages": 8, "features_per_stage": [32, 64, 128, 256, 512, 512, 512, 512],
                            "conv_op": "torch.nn.modules.conv.Conv2d", "kernel_sizes": [[3, 3]] * 8,
                            "strides": [[1, 1]] + [[2, 2]] * 7, "n_conv_per_stage": [2] * 8,
                            "n_conv_per_stage_decoder": [2] * 7, "conv_bias": True,
                            "norm_op": "torch.nn.modules.instancenorm.InstanceNorm2d",
                            "norm_op_kwargs": {"eps": 1e-05, "affine": True}, "dropout_op": None,
                            "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True}},
            "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]}
    kvasir = {"plans_name": "nnUNetPlans", "configurations": {"2d": {
        "data_identifier": "nnUNetPlans_2d", "patch_size": [640, 640], "batch_size": 8, "spacing": [1.0, 1.0],
        "architecture": arch}}}
    plans = derive_sam_plans(kvasir, load_preset("cpu_tiny"))
    k = plans["configurations"]["2d"]["architecture"]["arch_kwargs"]
    assert k["n_stages"] == 6 and k["strides"] == [[1, 1]] + [[2, 2]] * 5  # 128 / 2^5 = 4
    assert k["features_per_stage"] == [32, 64, 128, 256, 512, 512] and k["n_conv_per_stage_decoder"] == [2] * 5
    assert kvasir["configurations"]["2d"]["architecture"]["arch_kwargs"]["n_stages"] == 8  # input untouched
    a = plans["configurations"]["2d"]["architecture"]
    net = get_network_from_plans(a["network_class_name"], a["arch_kwargs"], a["_kw_requires_import"], 3, 2,
                                 deep_supervision=False)
    net.train()
    assert net(torch.randn(2, 3, 128, 128)).shape == (2, 2, 128, 128)
    assert json.loads(json.dumps(plans)) == plans  # JSON round trip (write_sam_plans compares the file with it)

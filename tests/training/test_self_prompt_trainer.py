"""SelfPromptSAMTrainer in process: recipe, warm-up schedule, plans, errors."""
import copy

import numpy as np
import pytest
import torch
from batchgenerators.utilities.file_and_folder_operations import load_json
from nnunetv2.run.run_training import get_trainer_from_args
from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper

CPU = torch.device("cpu")
GENERATOR = np.array([8, 4, 2, 1]) / 15  # halving per resolution, normalised (appendix D, Eq. 3)


def test_paper_recipe_and_3d_architecture_from_plans(acdc_env):
    t = get_trainer_from_args("27", "3d_fullres", 0, "SelfPromptSAMTrainer", "nnUNetPlans_SAMcpu", device=CPU)
    arch = t.configuration_manager.configuration["architecture"]
    assert arch["network_class_name"] == "sam_nnunet.modeling.self_prompt_sam.SelfPromptSAM"
    kwargs = arch["arch_kwargs"]
    assert kwargs["patch_depth"] == t.configuration_manager.patch_size[0] == 4
    assert kwargs["img_size"] == [128, 128] and kwargs["encoder"] == "vit_tiny"
    assert kwargs["adapter"] == "dfused" and kwargs["mc_adapter"] and kwargs["modality_adapter"]
    assert t.num_epochs == 1000 and t.warmup_epochs == 200
    t.initialize()
    opt = t.optimizer
    assert isinstance(opt, torch.optim.SGD)
    group = opt.param_groups[0]
    assert (group["lr"], group["momentum"], group["weight_decay"], group["nesterov"]) == (1e-2, 0.99, 3e-5, True)
    assert isinstance(t.loss, DeepSupervisionWrapper)
    assert (t.loss.loss.weight_dice, t.loss.loss.weight_ce) == (1.0, 1.0)  # "simply summing them up"
    assert t._get_deep_supervision_scales() == [[1.0, 1.0, 1.0], [1.0, 1.0, 1.0], [1.0, 0.5, 0.5],
                                                [1.0, 0.25, 0.25], [1.0, 0.125, 0.125]]
    out = t.network(torch.randn(1, 1, 4, 128, 128))
    assert [tuple(o.shape) for o in out] == [(1, 4, 4, 128, 128), (1, 4, 4, 128, 128), (1, 4, 4, 64, 64),
                                             (1, 4, 4, 32, 32), (1, 4, 4, 16, 16)]


def test_2d_configuration_has_no_depth_parts(acdc_env):
    t = get_trainer_from_args("27", "2d", 0, "SelfPromptSAMTrainer_5epochs", "nnUNetPlans_SAMcpu", device=CPU)
    t.initialize()
    assert t.network.patch_depth == 1
    assert not any("depth" in n for n, _ in t.network.named_parameters())
    assert t._get_deep_supervision_scales()[2] == [0.5, 0.5]


@pytest.mark.parametrize("trainer,epochs,warmup", [("SelfPromptSAMTrainer", 1000, 200),
                                                   ("SelfPromptSAMTrainer_250epochs", 250, 50),
                                                   ("SelfPromptSAMTrainer_5epochs", 5, 1),
                                                   ("SelfPromptSAMTrainer_1epoch", 1, 0)])
def test_warmup_keeps_the_one_to_five_ratio_and_follows_the_epoch(acdc_env, trainer, epochs, warmup):
    t = get_trainer_from_args("27", "2d", 0, trainer, "nnUNetPlans_SAMcpu", device=CPU)
    t.initialize()
    assert (t.num_epochs, t.warmup_epochs) == (epochs, warmup)
    for epoch in sorted({0, max(warmup - 1, 0), warmup, epochs - 1}):
        t.current_epoch = epoch  # what load_checkpoint restores on --c
        t._apply_phase()
        in_warmup = epoch < warmup
        np.testing.assert_allclose(t.loss.weight_factors, [0.0 if in_warmup else 1.0, *GENERATOR])
        assert t.network.use_sam_decoder is not in_warmup


def test_ablation_trainers_select_table4_switches(acdc_env):
    expected = {"S1": ("conv", "none", False, False, False), "S3": ("msp", "vanilla", False, False, False),
                "S4": ("msp", "depth_before", False, False, False), "S7": ("msp", "dfused", True, False, False),
                "S8": ("msp", "dfused", True, True, False), "": ("msp", "dfused", True, True, True)}
    for suffix, switches in expected.items():
        name = f"SelfPromptSAMTrainer_{suffix}" if suffix else "SelfPromptSAMTrainer"
        t = get_trainer_from_args("27", "2d", 0, name, "nnUNetPlans_SAMcpu", device=CPU)
        k = t.configuration_manager.configuration["architecture"]["arch_kwargs"]
        got = (k["prompt_generator"], k["adapter"], k["depth_pos_embed"], k["modality_adapter"], k["mc_adapter"])
        assert got == switches, name


def test_plans_block_can_switch_an_ablation_but_not_the_patch_depth(acdc_env):
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    folder = acdc_env["nnUNet_preprocessed"] / "Dataset027_ACDC"
    plans = dict(load_json(folder / "nnUNetPlans_SAMcpu.json"), continue_training=False)  # as nnU-Net's CLI adds
    dataset_json = load_json(folder / "dataset.json")
    cls = recursive_find_trainer_class_by_name("SelfPromptSAMTrainer")
    p = copy.deepcopy(plans)
    p["configurations"]["3d_fullres"]["sam_nnunet"] = {"encoder": "vit_tiny", "adapter": "vanilla"}
    t = cls(p, "3d_fullres", 0, dataset_json, CPU)
    assert t.configuration_manager.configuration["architecture"]["arch_kwargs"]["adapter"] == "vanilla"
    p = copy.deepcopy(plans)
    p["configurations"]["3d_fullres"]["sam_nnunet"] = {"patch_depth": 8}
    with pytest.raises(ValueError, match="patch_depth"):
        cls(p, "3d_fullres", 0, dataset_json, CPU)


def test_region_datasets_are_refused_with_a_clear_error(acdc_env):
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    folder = acdc_env["nnUNet_preprocessed"] / "Dataset027_ACDC"
    plans = dict(load_json(folder / "nnUNetPlans_SAMcpu.json"), continue_training=False)
    dataset_json = load_json(folder / "dataset.json")
    dataset_json["labels"] = {"background": 0, "heart": [1, 2, 3], "LV": 3}
    dataset_json["regions_class_order"] = [1, 3]
    cls = recursive_find_trainer_class_by_name("SelfPromptSAMTrainer")
    with pytest.raises(ValueError, match="region-based"):
        cls(plans, "2d", 0, dataset_json, CPU)

"""SelfPromptSAMTrainer in process: recipe, warm-up schedule, best checkpoint across the phases, plans, errors."""
import copy
import os

import numpy as np
import pytest
import torch
from batchgenerators.utilities.file_and_folder_operations import load_json
from nnunetv2.run.run_training import get_trainer_from_args
from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

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


SWITCHES = ("prompt_generator", "adapter", "depth_pos_embed", "modality_adapter", "mc_adapter",
            "generator_depth_mixing")
TABLE4_ROWS = {  # each row adds one part to the one before; the generator runs per slice in every row
    "S1": ("conv", "none", False, False, False, False),
    "S2": ("msp", "none", False, False, False, False),
    "S3": ("msp", "vanilla", False, False, False, False),
    "S4": ("msp", "depth_before", False, False, False, False),
    "S5": ("msp", "depth_after", False, False, False, False),
    "S6": ("msp", "dfused", False, False, False, False),
    "S7": ("msp", "dfused", True, False, False, False),
    "S8": ("msp", "dfused", True, True, False, False),
    "S9": ("msp", "dfused", True, True, True, False),
    "": ("msp", "dfused", True, True, True, True),  # SelfPromptSAMTrainer: S9 with the 3D generator
}


@pytest.mark.parametrize("suffix", sorted(TABLE4_ROWS), ids=lambda s: s or "full")
def test_ablation_trainers_select_table4_switches(acdc_env, suffix):
    name = f"SelfPromptSAMTrainer_{suffix}" if suffix else "SelfPromptSAMTrainer"
    t = get_trainer_from_args("27", "3d_fullres", 0, name, "nnUNetPlans_SAMcpu", device=CPU)
    k = t.configuration_manager.configuration["architecture"]["arch_kwargs"]
    assert tuple(k[s] for s in SWITCHES) == TABLE4_ROWS[suffix], name
    net = t.build_network_architecture(t.plans_manager, t.configuration_manager, 1, 4)  # what predict rebuilds
    assert net.prompt_generator.depth_mixing is TABLE4_ROWS[suffix][-1]


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


# ---------------------------------------------------------------- checkpoint_best across warm-up and full phase
class _Crash(RuntimeError):
    pass


def _scored_trainer(acdc_env, monkeypatch, dice, warmup=1, crash_at=None):
    """SelfPromptSAMTrainer for 3 epochs (the first ``warmup`` are the warm-up), 1 iteration each, whose validation
    runs the real step but reports the foreground Dice ``dice[epoch]`` for every class; it raises in epoch
    ``crash_at``."""
    for k, v in {"SAM_NNUNET_ITERATIONS_PER_EPOCH": "1", "SAM_NNUNET_VAL_ITERATIONS_PER_EPOCH": "1",
                 "SAM_NNUNET_SEED": "0", "SAM_NNUNET_SAVE_EVERY": "1", "nnUNet_n_proc_DA": "0"}.items():
        monkeypatch.setenv(k, v)
    folder = acdc_env["nnUNet_preprocessed"] / "Dataset027_ACDC"
    plans = dict(load_json(folder / "nnUNetPlans_SAMcpu.json"), continue_training=False)
    plans["configurations"]["2d"]["batch_size"] = 2
    cls = recursive_find_trainer_class_by_name("SelfPromptSAMTrainer_5epochs")
    t = cls(plans, "2d", 0, load_json(folder / "dataset.json"), CPU)
    t.num_epochs, t.warmup_fraction = 3, warmup / 3
    assert t.warmup_epochs == warmup
    real_step = t.validation_step

    def validation_step(batch):
        out = real_step(batch)
        if t.current_epoch == crash_at:
            raise _Crash(f"killed in epoch {t.current_epoch}")
        d, n = dice[t.current_epoch], len(out["tp_hard"])  # Dice = 2 tp / (2 tp + fp + fn)
        return dict(out, tp_hard=np.full(n, d), fp_hard=np.full(n, 2 * (1 - d)), fn_hard=np.zeros(n))

    t.validation_step = validation_step
    return t


def _best_epoch(t) -> int:
    best = torch.load(os.path.join(t.output_folder, "checkpoint_best.pth"), map_location="cpu", weights_only=False)
    return best["current_epoch"] - 1  # nnU-Net stores "next epoch"


def _log(t) -> str:
    return open(t.log_file).read()


def test_first_full_phase_epoch_becomes_best_and_the_ema_restarts(acdc_env, monkeypatch):
    """The warm-up scores the auxiliary mask (Dice 0.9 here); the full model scores 0.2, then 0.3. nnU-Net alone would
    keep the warm-up epoch as the best (EMA 0.9 > 0.83 > 0.777); the full phase restarts both best and EMA."""
    t = _scored_trainer(acdc_env, monkeypatch, dice=[0.9, 0.2, 0.3])
    t.run_training()
    ema = t.logger.get_value("ema_fg_dice", step=None)
    np.testing.assert_allclose(ema, [0.9, 0.2, 0.9 * 0.2 + 0.1 * 0.3])
    assert _best_epoch(t) == 2 and t._best_ema == pytest.approx(0.21)
    log = _log(t)
    assert "Best EMA pseudo Dice reset (was 0.9" in log
    assert log.count("Yayy! New best EMA pseudo Dice") == 3  # warm-up epoch 0, then full-phase epochs 1 and 2


RESUME_CASES = {  # warm-up epochs, epoch of the crash, validation Dice per epoch, best epoch and EMA after the resume
    # latest written after warm-up epoch 1 holds _best_ema 0.9 (epoch 0's; nnU-Net saves latest before its best
    # check): epoch 2 must replace that warm-up best although its Dice is only 0.5
    "at_the_phase_change": (2, 2, [0.9, 0.9, 0.5], 2, 0.5, "Best EMA pseudo Dice reset (was 0.9"),
    # EMA 0.9 | 0.5 (restarted) | 0.46: the full phase's best, epoch 1, stays
    "further_in": (1, 2, [0.9, 0.5, 0.1], 1, 0.5, None),
    # the same, as a run started before the phase rule left it: warm-up best in both files and an EMA that was not
    # restarted (0.9 | 0.86), so epoch 2 replaces it (EMA 0.9 * 0.86 + 0.1 * 0.1)
    "further_in_legacy_warmup_best": (1, 2, [0.9, 0.5, 0.1], 2, 0.784, "whose EMA pseudo Dice was not restarted"),
}


@pytest.mark.parametrize("case", sorted(RESUME_CASES))
@pytest.mark.fault("training")
def test_resume_into_the_full_phase_does_not_bring_back_a_warmup_best(acdc_env, monkeypatch, case):
    """--c, i.e. load_checkpoint (which restores nnU-Net's _best_ema and EMA history), after a crash."""
    warmup, crash_at, dice, best_epoch, best_ema, logged = RESUME_CASES[case]
    t = _scored_trainer(acdc_env, monkeypatch, dice, warmup=warmup, crash_at=crash_at)
    with pytest.raises(_Crash):
        t.run_training()
    latest = os.path.join(t.output_folder, "checkpoint_latest.pth")
    if case == "further_in_legacy_warmup_best":
        for name, update in (("checkpoint_best.pth", {"current_epoch": 1}), ("checkpoint_latest.pth", {})):
            path = os.path.join(t.output_folder, name)
            checkpoint = torch.load(path, map_location="cpu", weights_only=False)
            logging = dict(checkpoint["logging"], ema_fg_dice=[0.9, 0.9 * 0.9 + 0.1 * 0.5])
            torch.save({**checkpoint, **update, "_best_ema": 0.9, "logging": logging}, path)
    restored = torch.load(latest, map_location="cpu", weights_only=False)
    assert restored["current_epoch"] == crash_at
    assert (restored["_best_ema"] == pytest.approx(0.9)) == (case != "further_in")  # what nnU-Net would keep

    resumed = _scored_trainer(acdc_env, monkeypatch, dice, warmup=warmup)
    resumed.load_checkpoint(latest)
    resumed.run_training()
    assert _best_epoch(resumed) == best_epoch and resumed._best_ema == pytest.approx(best_ema)
    log = _log(resumed)
    if logged:
        assert logged in log
    else:
        assert "Best EMA pseudo Dice reset" not in log and "Resumed in the full phase" not in log

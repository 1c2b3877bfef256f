"""The run safeguards and the training budget are mixins for any nnU-Net trainer: here on nnU-Net's own
``nnUNetTrainer`` (its U-Net and SGD), on the preprocessed ACDC crop."""
import json
import math
import os

import pytest
import torch
from batchgenerators.utilities.file_and_folder_operations import join
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from sam_nnunet.training.budget import budgeted, build_trainer
from sam_nnunet.training.safeguards import RUN_INFO_FILE, RunSafeguards, TrainingDiverged

CPU = torch.device("cpu")


class SafeNNUNetTrainer(RunSafeguards, nnUNetTrainer):
    """nnU-Net's trainer with the safeguards, as a user would write it."""


@pytest.fixture
def env(acdc_env, monkeypatch):
    monkeypatch.setenv("nnUNet_n_proc_DA", "0")
    monkeypatch.setenv("SAM_NNUNET_SEED", "0")
    return acdc_env


def _trainer(cls):
    return build_trainer(cls, "27", "2d", 0, "nnUNetPlans_SAMcpu", CPU)


@pytest.mark.fault("training", cases=3)
def test_a_budget_of_steps_trains_nnunets_own_trainer_and_the_safeguards_keep_its_fold(env):
    t = _trainer(budgeted(SafeNNUNetTrainer, steps=2, curve_every=1))
    t.run_training()
    record = t.budget_record
    assert record.steps == 2 and len(record.losses) == 2 and all(math.isfinite(x) for x in record.losses)
    assert [epoch for _, epoch in record.schedule] == [0, 500]  # the schedule follows the spent budget
    assert len(record.curve) == 2 and t.num_epochs == t.schedule_epochs == 1000
    assert os.path.basename(t.output_folder_base) == "SafeNNUNetTrainer__nnUNetPlans_SAMcpu__2d"
    assert os.path.isfile(join(t.output_folder, "checkpoint_final.pth"))
    assert json.load(open(join(t.output_folder, RUN_INFO_FILE))) == {"trainer": "SafeNNUNetTrainer"}
    assert "Training budget spent: 2 steps" in open(t.log_file).read()
    # the finished fold is not trained over without --c
    again = _trainer(budgeted(SafeNNUNetTrainer, steps=1))
    with pytest.raises(RuntimeError, match=r"already holds \['checkpoint_final.pth'\]. Use --c"):
        again.run_training()
    # --c checks the run record, which cannot be skipped by its absence or damage
    final, record = join(t.output_folder, "checkpoint_final.pth"), join(t.output_folder, RUN_INFO_FILE)
    written = open(record).read()
    os.remove(record)
    with pytest.raises(RuntimeError, match=f"{RUN_INFO_FILE} is missing, so this run cannot check"):
        _trainer(SafeNNUNetTrainer).load_checkpoint(final)
    open(record, "w").write(written[:5])  # as a kill while writing it would have left it before it was atomic
    with pytest.raises(RuntimeError, match=f"{RUN_INFO_FILE} is not valid JSON"):
        _trainer(SafeNNUNetTrainer).load_checkpoint(final)
    open(record, "w").write(written)
    resumed = _trainer(SafeNNUNetTrainer)
    resumed.load_checkpoint(final)
    assert resumed.current_epoch == t.current_epoch


@pytest.mark.fault("training")
def test_nan_batches_stop_nnunets_own_trainer_with_its_last_finite_weights_kept(env):
    before = {}

    def poison(t):  # from the budget's first step on, every image is NaN
        before.update({k: v.clone() for k, v in t.network.state_dict().items()})
        real = t.dataloader_train
        t.dataloader_train = (dict(b, data=torch.full_like(torch.as_tensor(b["data"]), float("nan"))) for b in real)

    t = _trainer(budgeted(SafeNNUNetTrainer, steps=10, max_nonfinite_steps=3, before_budget=poison))
    with pytest.raises(TrainingDiverged, match="3 consecutive non-finite training steps"):
        t.run_training()
    assert open(t.log_file).read().count("this update was skipped") == 3
    saved = torch.load(join(t.output_folder, "checkpoint_latest.pth"), map_location="cpu", weights_only=False)
    for k, v in saved["network_weights"].items():  # SGD's updates were all skipped: the weights it started with
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)


@pytest.mark.fault("training", cases=2)
def test_a_nan_batch_is_refused_before_the_forward_and_no_buffer_that_is_not_finite_is_saved(env, esp_micro_plans):
    """ESP-MedSAM's TinyViT has BatchNorm: a forward in training mode on NaN images would write NaN into its running
    statistics, which skipping the update does not undo. The batch is refused before the forward pass; and a
    checkpoint is refused when any weight *or buffer* is not finite."""
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    def poison_second_batch(t):
        real = t.dataloader_train
        t.dataloader_train = (dict(b, data=torch.full_like(torch.as_tensor(b["data"]), float("nan"))) if i == 1
                              else b for i, b in enumerate(real))

    cls = budgeted(recursive_find_trainer_class_by_name("ESPMedSAMTrainer"), steps=3, before_budget=poison_second_batch)
    t = build_trainer(cls, "27", "2d", 0, esp_micro_plans, CPU)
    t.run_training()
    assert open(t.log_file).read().count("non-finite input data (the batch was not run)") == 1
    final = torch.load(join(t.output_folder, "checkpoint_final.pth"), map_location="cpu", weights_only=False)
    stats = [k for k in final["network_weights"] if k.endswith("running_mean")]
    assert stats and all(torch.isfinite(v).all() for v in final["network_weights"].values() if v.is_floating_point())

    net = t._network()
    dict(net.named_buffers())[stats[0]].fill_(float("nan"))
    target = join(t.output_folder, "checkpoint_after_nan_buffer.pth")
    with pytest.raises(TrainingDiverged, match=r"non-finite weights in \['" + stats[0]):
        t.save_checkpoint(target)
    assert not os.path.exists(target) and not os.path.exists(target + ".partial")

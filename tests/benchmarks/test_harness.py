"""The harness's own pieces, imported as a package: row names, the low-data split, the trainer class of a row."""
from argparse import Namespace
from pathlib import Path

import pytest

from benchmarks.harness.data import low_data_split
from benchmarks.harness.measure import row_trainer_class
from benchmarks.harness.rows import row_file
from benchmarks.harness.specs import PLANS, parse_trainer


def test_row_names_parse_into_trainer_plans_configuration_and_prior():
    assert parse_trainer("nnUNetTrainer") == ("nnUNetTrainer", PLANS, "2d", False)
    assert parse_trainer("HSPSAMTrainer@nnUNetPlans_SAMcpu_p8:3d_fullres+pretrained") == (
        "HSPSAMTrainer", "nnUNetPlans_SAMcpu_p8", "3d_fullres", True)
    assert row_file(Path("out"), "A@B:3d_fullres+pretrained").name == "A__B__3d_fullres_pretrained.json"


def test_low_data_split_keeps_every_frame_of_the_first_patients():
    train = ["patient003_frame01", "patient001_frame01", "patient001_frame12", "patient002_frame01",
             "patient003_frame15", "patient002_frame12"]
    assert low_data_split(train, 2) == ["patient001_frame01", "patient001_frame12", "patient002_frame01",
                                        "patient002_frame12"]
    with pytest.raises(SystemExit, match="fold 0 has only 3 training patients"):
        low_data_split(train, 4)


def test_a_row_is_its_trainer_with_a_budget_and_a_prior_row_carries_its_checkpoint_on_the_class(tmp_path, monkeypatch):
    from sam_nnunet import nnunet_env
    from sam_nnunet.training.budget import TrainingBudget

    for var, value in nnunet_env().items():  # where nnU-Net finds the trainers by name
        monkeypatch.setenv(var, value)

    args = Namespace(budget_min=2.0, iterations_per_epoch=7, checkpoint=str(tmp_path / "enc.pth"), train_patients=None)
    scratch = row_trainer_class("HSPSAMTrainer", args)
    prior = row_trainer_class("HSPSAMTrainer+pretrained", args)
    assert scratch.__name__ == "HSPSAMTrainer" and prior.__name__ == "HSPSAMTrainer_pretrained"  # own output folders
    for cls in (scratch, prior):
        assert issubclass(cls, TrainingBudget) and cls.budget_seconds == 120 and cls.curve_every == 7
    assert scratch.pretrained_checkpoint is None and prior.pretrained_checkpoint == str(tmp_path / "enc.pth")
    with pytest.raises(SystemExit, match="nnUNetTrainer takes no pretrained file"):
        row_trainer_class("nnUNetTrainer+pretrained", args)

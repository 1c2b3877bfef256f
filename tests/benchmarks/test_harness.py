"""The harness's own pieces, imported as a package: row names, the low-data split, the trainer class of a row."""
from argparse import Namespace
from pathlib import Path

import numpy as np
import pytest

from benchmarks.harness.data import first_validation_cases, low_data_split, source_cases
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


def test_a_universal_source_keeps_its_own_cases_and_labels():
    from benchmarks.harness.cli import main
    from benchmarks.harness.specs import DATASETS

    cases = ["ACDC_patient001_frame01_z00", "KvasirSEG_cju0qkwl35piu0993l0dewei2", "ACDC_patient002_frame12_z03"]
    assert source_cases(cases, "ACDC") == [cases[0], cases[2]] and source_cases(cases, "KvasirSEG") == [cases[1]]
    universal = DATASETS["universal"]
    assert sorted(k for keys in universal["sources"].values() for k in keys) == sorted(universal["labels"])
    with pytest.raises(SystemExit):  # argparse: --train-source is for the universal dataset
        main(["--out", "unused", "--dataset", "acdc", "--train-source", "ACDC"])


def test_val_cases_take_the_first_volumes_of_each_source_with_all_their_slices():
    from benchmarks.harness.specs import DATASETS

    val = ["ACDC_patient001_frame01_z00", "ACDC_patient001_frame01_z01", "ACDC_patient001_frame12_z00",
           "ACDC_patient002_frame01_z00", "KvasirSEG_a", "KvasirSEG_b", "KvasirSEG_c"]
    assert first_validation_cases(val, 2, DATASETS["universal"]) == val[:3] + ["KvasirSEG_a", "KvasirSEG_b"]
    assert first_validation_cases(val, 0, DATASETS["universal"]) == val
    assert first_validation_cases(val, 2, DATASETS["acdc"]) == val[:2]


def test_a_per_source_rows_mean_dice_is_over_its_own_labels():
    from benchmarks.harness.report import markdown
    from benchmarks.harness.specs import DATASETS

    row = {"trainer": "T", "patch_size": [8, 8], "batch_size": 2, "budget_steps": 1, "val_cases": ["x"],
           "dice": {"4": 0.5}, **{k: 1.0 for k in ("step_s_median", "infer_s_per_volume", "train_peak_rss_mb",
                                                  "infer_peak_rss_mb", "params_total", "params_trainable",
                                                  "gflops_per_patch")}}
    meta = {"labels": DATASETS["universal"]["labels"], "date": "d", "machine": "m", "device": "cpu", "seed": 0,
            "budget_min": 1, "dataset": "universal", "split": "s"}
    line = markdown([row], meta).splitlines()[4]
    assert "| nan | nan | nan | 0.500 | 0.500 |" in line  # Dice RV, MLV, LVC, polyp, then the mean


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


def test_paired_dice_reports_the_difference_its_error_and_the_wins():
    from benchmarks.paired_dice import dice, summary

    a = np.zeros((4, 4), bool)
    a[:2] = True
    b = np.zeros((4, 4), bool)
    b[:1] = True
    assert dice(a, a) == 1.0 and dice(a, b) == pytest.approx(2 * 4 / (8 + 4)) and dice(a & False, b & False) == 1.0
    line = summary({"v1": [0.9, 0.8], "v2": [0.7, 0.7], "v3": [0.5, 0.6]},
                   {"v1": [0.8, 0.8], "v2": [0.8, 0.8], "v3": [0.4, 0.5]}, ["RV", "LV"])
    # differences per volume: +0.05, -0.10, +0.10 -> mean +0.0167, sd 0.1041, se 0.0601
    assert "A - B +0.0167 (standard error 0.0601)" in line and "A better on 2 of 3" in line
    assert "RV +0.033, LV +0.000" in line


def test_paired_dice_scores_a_volumes_slices_stacked(tmp_path):
    import SimpleITK as sitk

    from benchmarks.paired_dice import per_volume

    gt, pred = tmp_path / "gt", tmp_path / "pred"
    gt.mkdir(), pred.mkdir()
    ref = np.zeros((2, 4, 4), np.uint8)
    ref[0, :2] = 1  # slice 0: 8 voxels of label 1; slice 1: none
    seg = ref.copy()
    seg[1, :1] = 1  # 4 false positives on slice 1
    for z in range(2):
        for folder, volume in ((gt, ref), (pred, seg)):
            sitk.WriteImage(sitk.GetImageFromArray(volume[z]), str(folder / f"ACDC_p1_z{z:02d}.nii.gz"))
    sitk.WriteImage(sitk.GetImageFromArray(ref[0]), str(gt / "KvasirSEG_a.nii.gz"))
    sitk.WriteImage(sitk.GetImageFromArray(ref[0]), str(pred / "KvasirSEG_a.nii.gz"))
    # stacked: 2 * 8 / (8 + 12); per slice it would be 1.0 and 0.0
    assert per_volume(gt, pred, [1], slices=True) == {"ACDC_p1": [pytest.approx(0.8)], "KvasirSEG_a": [1.0]}
    assert per_volume(gt, pred, [1]) == {"ACDC_p1_z00": [1.0], "ACDC_p1_z01": [0.0], "KvasirSEG_a": [1.0]}
    assert per_volume(gt, pred, [1], slices=True, prefix="ACDC_") == {"ACDC_p1": [pytest.approx(0.8)]}


def test_a_kept_row_warns_when_the_networks_or_trainers_changed_since_it_was_measured(tmp_path, monkeypatch, capsys):
    import argparse
    import json
    import subprocess

    from benchmarks.harness import rows

    repo = tmp_path / "repo"

    def commit(path: str, text: str) -> str:
        (repo / path).parent.mkdir(parents=True, exist_ok=True)
        (repo / path).write_text(text)
        git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
        subprocess.run(git + ["add", "-A"], check=True)
        subprocess.run(git + ["commit", "-qm", f"change {path}"], check=True)
        return subprocess.run(git + ["rev-parse", "HEAD"], check=True, capture_output=True, text=True).stdout.strip()

    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    measured = commit("sam_nnunet/net.py", "a")
    monkeypatch.setattr(rows, "REPO", repo)
    assert rows.code_commit() == measured and rows.code_changes_since(measured) == []
    commit("docs/x.md", "docs only")
    assert rows.code_changes_since(measured) == []
    commit("trainers/T.py", "b")
    assert [line.split(" ", 1)[1] for line in rows.code_changes_since(measured)] == ["change trainers/T.py"]

    args = argparse.Namespace(dataset="acdc", patients=2, cases=None, budget_min=1.0, iterations_per_epoch=5,
                              val_cases=1, steps=1, warmup=0, seed=0, device="cpu", processes=1, checkpoint=None,
                              train_patients=None, train_source=None)
    path = rows.row_file(tmp_path / "out", "T@P")
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"settings": rows.row_settings(args), "date": "d", "code_commit": measured}))
    assert rows.measure_or_reuse("T@P", args, None, tmp_path / "out")["code_commit"] == measured
    out = capsys.readouterr().out
    assert "kept from d" in out and "WARNING: 1 commit(s) changed" in out and "change trainers/T.py" in out

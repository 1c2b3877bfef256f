"""``crossval``: the real ``nnUNetv2_train`` folds and ``nnUNetv2_find_best_configuration`` on the ACDC crop.

The ``acdc_preprocessed`` fixture holds 5 training patients (10 volumes), so each fold validates one patient
(2 volumes) and trains on the other 4. Tiny schedule: ``HSPSAMTrainer_5epochs`` (the shortest schedule that can be
interrupted with epochs left), 1 training and 1 validation iteration per epoch, CPU, one worker process (``-np 1``).
"""
import hashlib
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from sam_nnunet import trainers_folder
from sam_nnunet.evaluation.crossval import fold_state, run_crossval

TRAINER, PLANS, EPOCHS = "HSPSAMTrainer_5epochs", "nnUNetPlans_SAMcpu", 5
FOLDS = range(5)
LAUNCH = Path(__file__).parents[1] / "faults" / "launch.py"  # nnUNetv2_train killed with SIGKILL at a chosen point


def crossval(env, *extra) -> str:
    cmd = [sys.executable, "-m", "sam_nnunet.cli", "crossval", "-d", "27", "-c", "2d", "-tr", TRAINER,
           "-p", PLANS, "-device", "cpu", "-np", "1", *extra]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=Path(__file__).parents[2])
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


@pytest.fixture(scope="module")
def first_run(acdc_preprocessed, tmp_path_factory):
    """One full ``crossval`` run: (its stdout, the trained-model folder, the environment it ran with)."""
    results = tmp_path_factory.mktemp("crossval_results")
    env = dict(os.environ, **{k: str(v) for k, v in acdc_preprocessed.items()}, nnUNet_results=str(results),
               nnUNet_n_proc_DA="1", nnUNet_compile="false", SAM_NNUNET_ITERATIONS_PER_EPOCH="1",
               SAM_NNUNET_VAL_ITERATIONS_PER_EPOCH="1", SAM_NNUNET_SEED="0")
    for var in ("nnUNet_extTrainer", "SAM_NNUNET_CHECKPOINT", "nnUNet_def_n_proc"):  # crossval sets the first itself
        env.pop(var, None)
    model = results / "Dataset027_ACDC" / f"{TRAINER}__{PLANS}__2d"
    return crossval(env), model, env


def test_crossval_trains_five_folds_then_finds_best_configuration(first_run, acdc_preprocessed):
    out, model, _ = first_run
    assert "nnUNet_extTrainer was not set" in out
    splits = json.loads((acdc_preprocessed["nnUNet_preprocessed"] / "Dataset027_ACDC" / "splits_final.json").read_text())
    for fold in FOLDS:
        assert f"fold {fold}: no checkpoint -> training" in out
        assert f"$ nnUNetv2_train 27 2d {fold} -tr {TRAINER} -p {PLANS} -device cpu --npz\n" in out
        folder = model / f"fold_{fold}"
        assert (folder / "checkpoint_final.pth").is_file()
        summary = json.loads((folder / "validation" / "summary.json").read_text())
        validated = sorted(Path(c["prediction_file"]).name[: -len(".nii.gz")] for c in summary["metric_per_case"])
        assert validated == sorted(splits[fold]["val"]) and len(validated) == 2
        assert sorted(p.stem for p in (folder / "validation").glob("*.npz")) == validated  # --npz reached nnU-Net
        assert fold_state(folder, fold).state == "finished"

    assert f"$ nnUNetv2_find_best_configuration 27 -c 2d -tr {TRAINER} -p {PLANS} -f 0 1 2 3 4 -np 1" in out
    merged = model / "crossval_results_folds_0_1_2_3_4"
    every_case = sorted(c for s in splits for c in s["val"])
    assert sorted(p.name[: -len(".nii.gz")] for p in merged.glob("*.nii.gz")) == every_case  # each case once
    assert (merged / "postprocessing.pkl").is_file() and (merged / "postprocessed" / "summary.json").is_file()
    info = json.loads((model.parent / "inference_information.json").read_text())
    assert info["best_model_or_ensemble"]["selected_model_or_models"] == [
        {"configuration": "2d", "trainer": TRAINER, "plans_identifier": PLANS}]
    assert math.isfinite(info["best_model_or_ensemble"]["result_on_crossval_pre_pp"])


def test_report_on_a_fold_of_crossval_equals_nnunets_dice(first_run, acdc_preprocessed, tmp_path, capsys):
    """The documented use on nnU-Net's output: fold_0/validation against gt_segmentations."""
    from sam_nnunet.cli import main

    _, model, _ = first_run
    gt = acdc_preprocessed["nnUNet_preprocessed"] / "Dataset027_ACDC" / "gt_segmentations"
    validation = model / "fold_0" / "validation"
    assert main(["report", "--gt", str(gt), "--pred", str(validation), "-o", str(tmp_path)]) == 0
    assert "8 reference cases without a prediction" in capsys.readouterr().out  # 10 training volumes, 2 validated

    nnunet = json.loads((validation / "summary.json").read_text())
    import csv

    rows = list(csv.DictReader((tmp_path / "per_case.csv").open()))
    assert {r["method"] for r in rows} == {TRAINER}  # default name: the trainer of the model folder
    assert [r["class"] for r in rows[:3]] == ["RV", "MLV", "LVC"]  # names from the dataset.json next to --gt
    assert len(rows) == 2 * 3
    for case in nnunet["metric_per_case"]:
        name = Path(case["prediction_file"]).name[: -len(".nii.gz")]
        for label, metrics in case["metrics"].items():
            row = next(r for r in rows if r["case"] == name and r["label"] == label)
            assert float(row["dice"]) == pytest.approx(metrics["Dice"], abs=1e-12, nan_ok=True)
            assert int(row["n_ref"]) == metrics["n_ref"] and int(row["n_pred"]) == metrics["n_pred"]


def epochs_started(text: str):
    """The epochs an nnU-Net run started, from its "<timestamp>: Epoch N" lines (stdout or training log)."""
    return [int(n) for n in re.findall(r": Epoch (\d+) ?$", text, flags=re.M)]


def files_of(folders):
    """Every file under ``folders``: path -> (mtime in ns, SHA-256 of its bytes)."""
    return {p: (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
            for folder in folders for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.fault("training")
def test_crossval_again_skips_finished_folds_and_resumes_a_started_one(first_run):
    _, model, env = first_run
    merged_summary = model / "crossval_results_folds_0_1_2_3_4" / "summary.json"
    before = files_of([model])
    assert merged_summary in before

    out = crossval(env)
    for fold in FOLDS:
        assert f"fold {fold}: checkpoint_final.pth and validation/summary.json exist -> skipping" in out
    assert "$ nnUNetv2_train" not in out and "$ nnUNetv2_find_best_configuration" not in out
    assert "nnUNetv2_find_best_configuration is up to date" in out
    assert files_of([model]) == before  # nothing written, not even rewritten with the same bytes

    # Fold 3 interrupted for real: its nnUNetv2_train (the command crossval runs for it) is killed with SIGKILL
    # before the 3rd training step, i.e. 1 iteration into epoch 2, leaving checkpoint_latest.pth with epochs left.
    fold3 = model / "fold_3"
    shutil.rmtree(fold3)
    killed = subprocess.run([sys.executable, str(LAUNCH), "train_step:3", "27", "2d", "3", "-tr", TRAINER, "-p", PLANS,
                             "-device", "cpu", "--npz"], env=dict(env, nnUNet_extTrainer=trainers_folder(),
                                                                  nnUNet_def_n_proc="1"),
                            capture_output=True, text=True, start_new_session=True, timeout=600)
    assert killed.returncode == -signal.SIGKILL, killed.stdout[-3000:] + killed.stderr[-3000:]
    latest = torch.load(fold3 / "checkpoint_latest.pth", map_location="cpu", weights_only=False)
    saved = latest["current_epoch"]  # the epoch a resume starts at (nnU-Net stores "next epoch")
    assert 0 < saved < EPOCHS and epochs_started(killed.stdout)[-1] == saved
    assert not (fold3 / "checkpoint_final.pth").exists() and fold_state(fold3, 3).state == "started"
    finished = files_of([model / f"fold_{f}" for f in (0, 1, 2, 4)])

    interrupted_at = time.time()
    out = crossval(env)
    assert "fold 3: checkpoint_latest.pth, checkpoint_best.pth found, no checkpoint_final.pth -> resuming with --c" in out
    assert f"$ nnUNetv2_train 27 2d 3 -tr {TRAINER} -p {PLANS} -device cpu --npz --c\n" in out
    assert out.count("$ nnUNetv2_train") == 1  # only fold 3
    for fold in (0, 1, 2, 4):
        assert f"fold {fold}: checkpoint_final.pth and validation/summary.json exist -> skipping" in out
    assert files_of([model / f"fold_{f}" for f in (0, 1, 2, 4)]) == finished  # same files, bytes and mtimes

    # the resume trained the epochs left, from the saved one on, not from 0
    assert epochs_started(out) == list(range(saved, EPOCHS))
    resume_log = max(fold3.glob("training_log_*.txt"), key=lambda p: p.stat().st_mtime_ns)
    assert epochs_started(resume_log.read_text()) == list(range(saved, EPOCHS))
    final = torch.load(fold3 / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert final["current_epoch"] == EPOCHS
    for key in ("train_losses", "lrs", "epoch_start_timestamps"):  # one entry per epoch of the whole run
        assert len(final["logging"][key]) == EPOCHS, key
        assert final["logging"][key][:saved] == latest["logging"][key][:saved], key  # the interrupted run's epochs
    assert min(final["logging"]["epoch_start_timestamps"][saved:]) > interrupted_at  # the rest trained now
    assert any(not torch.equal(final["network_weights"][k], v) for k, v in latest["network_weights"].items())
    assert not (fold3 / "checkpoint_latest.pth").exists() and (fold3 / "validation" / "summary.json").is_file()
    assert sorted(p.stem for p in (fold3 / "validation").glob("*.npz"))  # validated with --npz
    assert "$ nnUNetv2_find_best_configuration" in out  # a fold changed, so the best configuration is redone
    assert merged_summary.stat().st_mtime_ns > before[merged_summary][0]


def test_fold_states_and_commands_without_training(tmp_path, capsys):
    """The decisions alone, on fold folders made here, with a runner that records instead of running."""
    model = tmp_path / "results" / "Dataset027_ACDC" / f"{TRAINER}__{PLANS}__2d"
    files = {0: ["checkpoint_final.pth", "validation/summary.json", "validation/a.npz"],  # finished
             1: ["checkpoint_final.pth", "validation/summary.json"],  # finished without --npz
             2: ["checkpoint_latest.pth"],  # interrupted
             3: ["checkpoint_final.pth"]}  # trained, validation interrupted
    for fold, names in files.items():
        for name in names:
            (model / f"fold_{fold}" / name).parent.mkdir(parents=True, exist_ok=True)
            (model / f"fold_{fold}" / name).write_text('{"foreground_mean": {"Dice": 0.5}}')
    (tmp_path / "preprocessed" / "Dataset027_ACDC").mkdir(parents=True)
    env = {"nnUNet_preprocessed": str(tmp_path / "preprocessed"), "nnUNet_results": str(tmp_path / "results")}
    ran = []
    result = run_crossval("27", "2d", TRAINER, PLANS, env=env, runner=lambda cmd, e: ran.append((cmd, e)))

    assert {f: s.state for f, s in result.states.items()} == {0: "finished", 1: "needs_npz", 2: "started",
                                                              3: "started", 4: "new"}
    base = ["nnUNetv2_train", "27", "2d"]
    tail = ["-tr", TRAINER, "-p", PLANS, "--npz"]
    assert [cmd for cmd, _ in ran] == [base + ["1"] + tail + ["--val"], base + ["2"] + tail + ["--c"],
                                       base + ["3"] + tail + ["--c"], base + ["4"] + tail]
    assert all(e["nnUNet_extTrainer"].endswith("trainers") for _, e in ran)
    assert result.best_configuration is None  # the recorder trained nothing, so folds 2-4 are still unfinished
    out = capsys.readouterr().out
    assert "fold 0: 0.5000" in out and "fold 4: no readable summary.json" in out
    assert "folds 2 3 4 are not finished" in out

    with pytest.raises(ValueError, match="nnUNet_results"):
        run_crossval("27", "2d", TRAINER, PLANS, env={"nnUNet_preprocessed": env["nnUNet_preprocessed"]})
    with pytest.raises(ValueError, match="Dataset028_"):
        run_crossval("28", "2d", TRAINER, PLANS, env=env, runner=lambda cmd, e: None)

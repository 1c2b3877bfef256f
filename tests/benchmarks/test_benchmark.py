"""The benchmark harness in --quick mode: what it reports, checked against the files it wrote (not speeds)."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "benchmark.py"
DATASET, PLANS = "Dataset027_ACDC", "nnUNetPlans_SAMcpu"
QUICK = {"steps": 3, "warmup": 1, "budget_min": 0.1, "val_cases": 1, "iterations_per_epoch": 5}  # what --quick sets
TRAINERS = ["nnUNetTrainer", "HSPSAMTrainer", "SelfPromptSAMTrainer", "PGSAMTrainer", "ESPMedSAMTrainer"]
METRICS = {"step_s_median": "train step (s)", "infer_s_per_volume": "inference (s/volume)",
           "train_peak_rss_mb": "train peak RSS (MB)", "infer_peak_rss_mb": "inference peak RSS (MB)",
           "params_total": "parameters", "params_trainable": "trainable parameters",
           "gflops_per_patch": "GFLOPs per patch"}
CLASSES = {"1": "RV", "2": "MLV", "3": "LVC"}


def dice(ref: np.ndarray, pred: np.ndarray, label: int) -> float:
    a, b = ref == label, pred == label
    return 2 * float((a & b).sum()) / float(a.sum() + b.sum()) if a.any() or b.any() else float("nan")


def table_rows(markdown: str):
    """The results.md table as {trainer: {column header: cell text}}."""
    lines = [line for line in markdown.splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:]]
    return {r[0]: dict(zip(header, r)) for r in rows}


def number(text: str) -> float:
    return float(text.split(" (")[0].replace(",", ""))


def run_quick(acdc_preprocessed, out: Path, *extra: str) -> subprocess.CompletedProcess:
    """The harness in --quick mode on the prepared ACDC crop (not converted again), without SAM_NNUNET_* settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAM_NNUNET_")}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--out", str(out), "--quick",
                           "--nnunet-raw", str(acdc_preprocessed["nnUNet_raw"]),
                           "--nnunet-preprocessed", str(acdc_preprocessed["nnUNet_preprocessed"]),
                           "--processes", "1", *extra], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_quick_benchmark_writes_json_markdown_and_plot(acdc_preprocessed, tmp_path):
    out = tmp_path / "bench"
    proc = run_quick(acdc_preprocessed, out)

    # files where the docstring says: the three reports in --out; the prepared dataset used, not converted again
    result = json.loads((out / "results.json").read_text())
    table = (out / "results.md").read_text()
    png = (out / "results.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    assert not (out / "nnUNet_raw").exists() and not (out / "nnUNet_preprocessed").exists()
    (results,) = out.glob("nnUNet_results_*")  # this run's nnUNet_results: the trainers' folders, the predictions
    meta, rows = result["meta"], result["trainers"]
    assert [r["trainer"] for r in rows] == TRAINERS
    assert meta["seed"] == 0 and "fold 0" in meta["split"]
    assert {k: meta[k] for k in ("steps", "warmup", "budget_min")} == {k: QUICK[k] for k in ("steps", "warmup",
                                                                                             "budget_min")}
    raw = Path(acdc_preprocessed["nnUNet_raw"]) / DATASET
    splits = json.loads((Path(acdc_preprocessed["nnUNet_preprocessed"]) / DATASET / "splits_final.json").read_text())

    for r in rows:
        name = r["trainer"]
        for key in ("step_s_median", "step_s_q1", "step_s_q3", "infer_s_per_volume", "train_peak_rss_mb",
                    "infer_peak_rss_mb", "params_total", "params_trainable", "budget_steps", "gflops_per_patch",
                    "machine_probe_s"):
            assert math.isfinite(r[key]) and r[key] > 0, (name, key, r[key])
        assert r["step_s_q1"] <= r["step_s_median"] <= r["step_s_q3"]
        assert r["params_trainable"] <= r["params_total"]
        assert r["patch_size"] == [128, 128] and r["batch_size"] == 8  # same patch and batch for all
        # the step time is the median over exactly the steps asked for, after the warm-up
        assert f"[{name}] train step {r['step_s_median']:.3f} s (median of {QUICK['steps']})" in proc.stdout
        assert f"[{name}] machine probe {r['machine_probe_s']:.3f} s" in proc.stdout

        # validation: the first --val-cases cases of fold 0, predicted in their own geometry; Dice recomputed here
        # from the written predictions and the reference labels
        assert r["val_cases"] == splits[0]["val"][: QUICK["val_cases"]]
        per_class = {k: [] for k in CLASSES}
        for case in r["val_cases"]:
            ref_img, pred_img = nib.load(str(raw / "labelsTr" / f"{case}.nii.gz")), nib.load(
                str(results / f"val_{name}" / f"{case}.nii.gz"))
            assert pred_img.shape == ref_img.shape
            np.testing.assert_allclose(pred_img.affine, ref_img.affine, atol=1e-4)
            ref, pred = np.asarray(ref_img.dataobj), np.asarray(pred_img.dataobj)
            for k in CLASSES:
                per_class[k].append(dice(ref, pred, int(k)))
        assert set(r["dice"]) == set(CLASSES)
        for k, values in per_class.items():
            assert 0 <= r["dice"][k] <= 1
            assert r["dice"][k] == pytest.approx(np.nanmean(values), abs=1e-9), (name, k)

        # the equal wall-clock budget: the budget asked for, and the steps reported are the optimiser's steps
        # (Adam(W) counts its own; SGD keeps no count): the timed steps before the budget were undone
        assert r["budget_s"] == QUICK["budget_min"] * 60 and r["budget_steps"] >= 1
        checkpoint = torch.load(results / DATASET / f"{name}__{PLANS}__2d" / "fold_0" / "checkpoint_final.pth",
                                map_location="cpu", weights_only=False)
        adam_steps = {float(s["step"]) for s in checkpoint["optimizer_state"]["state"].values() if "step" in s}
        if name == "HSPSAMTrainer":  # AdamW by default
            assert adam_steps == {r["budget_steps"]}

        # the schedule follows the budget's clock: each epoch starts at the schedule's epoch e = floor(1000 * t / budget)
        # (t: seconds into the budget, kept to the millisecond, so 1000 * t / budget may be off by 1000 * 0.0005 / budget),
        # and its learning rate is lr0 * (1 - e / 1000) ** 0.9 (poly; ESP-MedSAM: lr0 * 0.01 ** (e / 1000));
        # nnU-Net logs one rate per schedule epoch
        assert r["schedule_epochs"] == 1000 and r["schedule"][0][1] == 0
        slack = 1000 * 0.0005 / r["budget_s"] + 1e-9
        for t, e in r["schedule"]:
            assert -slack <= 1000 * t / r["budget_s"] - e < 1 + slack, (name, t, e)
        epochs = list(dict.fromkeys(e for _, e in r["schedule"]))
        assert len(epochs) >= 2 and epochs == sorted(epochs), (name, r["schedule"])
        lrs = checkpoint["logging"]["lrs"]
        if name == "ESPMedSAMTrainer":  # exponential decay to 1 % at the last epoch
            expected = [lrs[0] * 0.01 ** (e / 1000) for e in epochs]
        else:
            expected = [lrs[0] * (1 - e / 1000) ** 0.9 for e in epochs]
        assert lrs == pytest.approx(expected, rel=1e-9), (name, lrs)
        if name == "SelfPromptSAMTrainer" and epochs[-1] >= 200:  # its warm-up: the first 20 % of the budget
            (log,) = (results / DATASET / f"{name}__{PLANS}__2d" / "fold_0").glob("training_log_*.txt")
            text = log.read_text()
            assert "Warm-up (200 of 1000 epochs)" in text
            first_full = min(e for e in epochs if e >= 200)
            assert f"Epoch {first_full}: full loss" in text

    # results.md: each figure of results.json, the ratios against nnUNetTrainer computed from those figures
    assert (f"budget {QUICK['budget_min']} min per trainer" in table
            and f"{QUICK['val_cases']} validation volumes" in table)
    cells = table_rows(table)
    assert list(cells) == TRAINERS
    base = rows[0]
    for r in rows:
        row = cells[r["trainer"]]
        for key, column in METRICS.items():
            assert number(row[column]) == pytest.approx(r[key], rel=5e-3, abs=0.5), (r["trainer"], column)
            if r is base:
                assert "x)" not in row[column]
            else:
                ratio = float(row[column].split(" (")[1].rstrip("x)"))
                assert ratio == pytest.approx(r[key] / base[key], abs=0.005 + 1e-9), (r["trainer"], column)
        assert int(row["steps in budget"]) == r["budget_steps"]
        for k, label in CLASSES.items():
            assert float(row[f"Dice {label}"]) == pytest.approx(r["dice"][k], abs=5e-4 + 1e-9)
        assert float(row["mean Dice"]) == pytest.approx(np.mean(list(r["dice"].values())), abs=5e-4 + 1e-9)
    assert table.strip() in proc.stdout  # the same table printed


def test_network_speed_reports_finite_positive_times_for_2d_and_3d():
    script = SCRIPT.parent / "network_speed.py"
    for args in (["--network", "SelfPromptSAM", "--patch", "2", "32", "32", "--batch", "1"],
                 ["--network", "HSPSAM", "--patch", "32", "32", "--batch", "2"]):
        proc = subprocess.run([sys.executable, str(script), *args, "--steps", "1", "--warmup", "0"],
                              capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr[-2000:]
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        assert r["network"] == args[1] and r["patch"] == [int(a) for a in args[3:-2]]
        for key in ("train_step_s", "infer_tile_s", "params", "train_step_gflop", "infer_tile_gflop",
                    "train_tflops", "infer_tflops"):
            assert math.isfinite(r[key]) and r[key] > 0, (args, key, r[key])
        # a training step (forward + backward at batch B) costs more than one batch-1 forward
        assert r["train_step_gflop"] > r["infer_tile_gflop"]


def test_conv_ab_reports_both_backends_for_2d_and_3d():
    proc = subprocess.run([sys.executable, str(SCRIPT.parent / "conv_ab.py"), "--patch", "32", "32", "--patch", "2", "32", "32",
                           "--rounds", "1", "--calls", "1"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [json.loads(line) for line in proc.stdout.strip().splitlines()]
    measured = [r for r in rows if "what" in r]
    assert [(r["patch"], r["what"]) for r in measured] == [
        ([32, 32], "inference tile, batch 1"), ([2, 32, 32], "inference tile, batch 1"),
        ([2, 32, 32], "training step, batch 1")]
    for r in measured:
        assert all(math.isfinite(r[k]) and r[k] > 0 for k in ("torch", "onednn", "onednn_over_torch")), r


def test_quick_kvasir_with_a_frozen_pretrained_row(tmp_path, golden_model_folder):
    """--dataset kvasir on real shipped images, and NAME+pretrained: the same trainer with --checkpoint frozen,
    in its own folder, next to the run from scratch."""
    from sam_nnunet.export.encoder import export_encoder

    checkpoint = export_encoder(golden_model_folder, 0, tmp_path / "encoder.pth")  # 1-channel encoder, loads as RGB
    out = tmp_path / "bench"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAM_NNUNET_")}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--out", str(out), "--quick", "--dataset", "kvasir",
                           "--cases", "6", "--processes", "1", "--checkpoint", str(checkpoint),
                           "--trainers", "HSPSAMTrainer", "HSPSAMTrainer+pretrained"],
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((out / "results.json").read_text())
    scratch, pretrained = result["trainers"]
    assert result["meta"]["dataset"] == "Dataset311_KvasirSEG" and result["meta"]["labels"] == {"1": "polyp"}
    assert scratch["params_total"] == pretrained["params_total"]
    assert scratch["params_trainable"] == scratch["params_total"] > pretrained["params_trainable"]
    (results,) = out.glob("nnUNet_results_*")
    for row in result["trainers"]:
        assert set(row["dice"]) == set(row["hd95"]) == {"1"} and 0 <= row["dice"]["1"] <= 1
        assert row["curve"] and all(math.isfinite(loss) for _, loss in row["curve"])
        for case in row["val_cases"]:
            assert (results / f"val_{row['trainer']}" / f"{case}.png").is_file()  # PNG, as the dataset
    folder = results / "Dataset311_KvasirSEG"
    final = torch.load(folder / f"HSPSAMTrainer_pretrained__{PLANS}__2d" / "fold_0" / "checkpoint_final.pth",
                       map_location="cpu", weights_only=False)["network_weights"]
    sd = torch.load(checkpoint, map_location="cpu", weights_only=True)
    assert torch.equal(final["encoder.blocks.1.attn.qkv.weight"], sd["image_encoder.blocks.1.attn.qkv.weight"])
    scratch_final = torch.load(folder / f"HSPSAMTrainer__{PLANS}__2d" / "fold_0" / "checkpoint_final.pth",
                               map_location="cpu", weights_only=False)["network_weights"]
    assert not torch.equal(scratch_final["encoder.blocks.1.attn.qkv.weight"], sd["image_encoder.blocks.1.attn.qkv.weight"])
    assert "HD95 polyp" in (out / "results.md").read_text()


def test_trainer_at_plans_runs_on_another_plans_of_the_same_data(acdc_preprocessed, tmp_path):
    """``nnUNetTrainer@nnUNetPlans``: nnU-Net on its own default plans, next to the same trainer on the SAM preset's."""
    out = tmp_path / "bench"
    run_quick(acdc_preprocessed, out, "--trainers", "nnUNetTrainer", "nnUNetTrainer@nnUNetPlans")
    rows = json.loads((out / "results.json").read_text())["trainers"]
    assert [(r["trainer"], r["plans"]) for r in rows] == [("nnUNetTrainer", PLANS),
                                                          ("nnUNetTrainer@nnUNetPlans", "nnUNetPlans")]
    default = json.loads((Path(acdc_preprocessed["nnUNet_preprocessed"]) / DATASET / "nnUNetPlans.json").read_text())
    conf = default["configurations"]["2d"]
    assert rows[1]["patch_size"] == conf["patch_size"] and rows[1]["batch_size"] == conf["batch_size"]
    assert rows[0]["patch_size"] == [128, 128] and rows[0]["patch_size"] != rows[1]["patch_size"]
    (results,) = out.glob("nnUNet_results_*")
    for folder in (f"nnUNetTrainer__{PLANS}__2d", "nnUNetTrainer__nnUNetPlans__2d"):
        assert (results / DATASET / folder / "fold_0" / "checkpoint_final.pth").is_file()
    table = (out / "results.md").read_text()
    assert f"plans {PLANS} (patch [128, 128], batch 8); plans nnUNetPlans (patch {conf['patch_size']}" in table

    # the same command again: both rows are kept from the first run (measured once), the table rebuilt from them
    kept = {p.name: p.read_text() for p in (out / "rows").iterdir()}
    assert sorted(kept) == ["nnUNetTrainer.json", "nnUNetTrainer__nnUNetPlans.json"]
    proc = run_quick(acdc_preprocessed, out, "--trainers", "nnUNetTrainer@nnUNetPlans", "nnUNetTrainer")
    assert proc.stdout.count("kept from") == 2 and "] train step" not in proc.stdout
    again = json.loads((out / "results.json").read_text())["trainers"]
    assert again == rows[::-1]  # in the order asked for
    assert {p.name: p.read_text() for p in (out / "rows").iterdir()} == kept
    # a kept row measured with other settings is refused, not overwritten
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAM_NNUNET_")}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--out", str(out), "--quick", "--seed", "1",
                           "--nnunet-raw", str(acdc_preprocessed["nnUNet_raw"]),
                           "--nnunet-preprocessed", str(acdc_preprocessed["nnUNet_preprocessed"]),
                           "--processes", "1", "--trainers", "nnUNetTrainer"], capture_output=True, text=True, env=env)
    assert proc.returncode != 0 and "was measured with other settings" in proc.stderr
    assert {p.name: p.read_text() for p in (out / "rows").iterdir()} == kept


def test_rows_on_a_shipped_preset_get_its_plans_written(acdc_env):
    """``--trainers HSPSAMTrainer@nnUNetPlans_SAMcpu_p8`` from an empty --out: the harness writes the plans of the
    shipped preset a row names; a plans name no shipped preset has is left alone (nnU-Net then names it); plans
    that differ from their preset stop the harness."""
    from benchmarks.harness.data import write_missing_shipped_plans

    folder = acdc_env["nnUNet_preprocessed"] / DATASET
    written = folder / "nnUNetPlans_SAMcpu_p8.json"
    assert not written.exists()
    try:
        write_missing_shipped_plans("27", folder, {"nnUNetPlans_SAMcpu_p8", "nnUNetPlans_SAMnone", PLANS})
        plans = json.loads(written.read_text())
        assert plans["configurations"]["2d"]["sam_nnunet"]["encoder"] == "vit_tiny_p8"
        assert not (folder / "nnUNetPlans_SAMnone.json").exists()
        # plans written from an older version of the preset: the harness stops rather than run their settings
        plans["configurations"]["2d"]["batch_size"] += 1
        written.write_text(json.dumps(plans))
        with pytest.raises(SystemExit, match="differs from what preset cpu_p8 gives now"):
            write_missing_shipped_plans("27", folder, {"nnUNetPlans_SAMcpu_p8"})
        assert json.loads(written.read_text()) == plans  # left as it was
    finally:
        written.unlink(missing_ok=True)


@pytest.mark.parametrize("configuration", ["2d", "3d_fullres"])
def test_the_cpu_preset_trains_hsp_sam_and_self_prompt_sam_refuses_it(acdc_env, configuration):
    """The shipped CPU preset (``cpu_p8``: 8-pixel patches), HSP-SAM's row of --accuracy: the trainer builds its
    network on the preset's encoder at the preset's rate and takes a finite training step on ACDC patches.
    Self-Prompt-SAM's MSPGenerator decodes 16-pixel patches only: it refuses the preset with an error naming
    the patch size (its --accuracy rows run on cpu_tiny)."""
    from nnunetv2.run.run_training import get_trainer_from_args
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    from sam_nnunet.modeling.blocks.registry import get_encoder_config
    from sam_nnunet.plans import CPU_PRESET, load_preset, write_sam_plans
    from sam_nnunet.training.budget import budgeted, build_trainer

    preset = load_preset(CPU_PRESET)
    written = write_sam_plans("27", CPU_PRESET, preprocessed_root=str(acdc_env["nnUNet_preprocessed"]))
    try:
        trainer = build_trainer(budgeted(recursive_find_trainer_class_by_name("HSPSAMTrainer"), steps=1), "27",
                                configuration, 0, preset["plans_name"], torch.device("cpu"))
        trainer.run_training()
        conf = preset["configurations"][configuration]
        assert trainer.network.patch_size == get_encoder_config(conf["sam_nnunet"]["encoder"]).patch_size == 8
        assert trainer.initial_lr == pytest.approx(conf["training"]["HSPSAMTrainer"]["learning_rate"]) != 3e-4
        assert trainer.budget_record.steps == 1 and np.isfinite(trainer.budget_record.losses).all()
        other = get_trainer_from_args("27", configuration, 0, "SelfPromptSAMTrainer_1epoch", preset["plans_name"],
                                      device=torch.device("cpu"))
        with pytest.raises(ValueError, match="16-pixel encoder patches.*8-pixel"):
            other.initialize()
    finally:
        written.unlink()  # the plans folder is shared by the session's tests


@pytest.mark.parametrize("preset", sorted(p.name for p in (SCRIPT.parent / "presets").glob("*.json")))
def test_tried_presets_give_plans_the_trainer_builds_and_trains_on(acdc_env, preset, tmp_path):
    """Every preset in benchmarks/presets (screened in docs/benchmark_log.md, or next to be): its plans derive from
    nnU-Net's, and the trainer its training block names (HSPSAMTrainer if none) builds its network with the preset's
    switches, applies its training settings (a named prior loaded) and takes a finite training step on ACDC patches
    of its patch size."""
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    from sam_nnunet.modeling.weights.pretrained_files import resolve_checkpoint
    from sam_nnunet.plans import load_preset, write_sam_plans
    from sam_nnunet.training.budget import budgeted, build_trainer

    spec = load_preset(str(SCRIPT.parent / "presets" / preset))
    conf = spec["configurations"]["2d"]
    (name, settings), = conf.get("training", {"HSPSAMTrainer": {}}).items()
    written = write_sam_plans("27", str(SCRIPT.parent / "presets" / preset), preprocessed_root=str(acdc_env["nnUNet_preprocessed"]))
    try:
        trainer = build_trainer(budgeted(recursive_find_trainer_class_by_name(name), steps=1), "27", "2d", 0,
                                spec["plans_name"], torch.device("cpu"))
        trainer.run_training()
        arch = trainer.configuration_manager.network_arch_init_kwargs
        assert {k: arch[k] for k in conf["sam_nnunet"]} == conf["sam_nnunet"]
        assert list(trainer.configuration_manager.patch_size) == conf["patch_size"] and trainer.batch_size == conf["batch_size"]
        assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(settings.get("learning_rate", trainer.base_learning_rate))
        assert trainer.sam_checkpoint == (resolve_checkpoint(settings["checkpoint"]) if "checkpoint" in settings else None)
        if name == "HSPSAMTrainer":
            weights = np.asarray(trainer.loss.weight_factors, dtype=float)
            assert weights[0] > 0 and len(weights) == trainer.network.num_levels
            assert (np.count_nonzero(weights) == 1) == (settings.get("supervised_outputs", "all") == "final")
        assert trainer.budget_record.steps == 1 and np.isfinite(trainer.budget_record.losses).all()
    finally:
        written.unlink()  # the plans folder is shared by the session's tests


def test_low_data_mode_trains_on_the_first_patients_and_validates_on_the_same_volumes(acdc_preprocessed, tmp_path):
    run_quick(acdc_preprocessed, tmp_path / "full", "--trainers", "nnUNetTrainer")
    run_quick(acdc_preprocessed, tmp_path / "low", "--trainers", "nnUNetTrainer", "--train-patients", "2")
    full = json.loads((tmp_path / "full" / "results.json").read_text())["trainers"][0]
    low = json.loads((tmp_path / "low" / "results.json").read_text())
    row = low["trainers"][0]
    assert low["meta"]["train_patients"] == 2 and row["settings"]["train_patients"] == 2
    assert "train_patients" not in full["settings"]  # rows kept before the mode existed still match
    patients = sorted({c.split("_frame")[0] for c in row["train_cases"]})
    assert len(patients) == 2 and len(row["train_cases"]) == 4  # both frames of each
    assert row["val_cases"] == full["val_cases"] and not set(row["train_cases"]) & set(row["val_cases"])
    assert "low-data mode: 2 training patients" in (tmp_path / "low" / "results.md").read_text()


def test_network_speed_with_litemedsams_prior_freezes_its_tinyvit():
    proc = subprocess.run([sys.executable, str(SCRIPT.parent / "network_speed.py"), "--network", "ESPMedSAM",
                           "--light-encoder", "tiny_vit_litemedsam", "--input-scaling", "unit_range", "--checkpoint",
                           "litemedsam", "--patch", "32", "32", "--batch", "1", "--steps", "1", "--warmup", "0"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    assert r["light_encoder"] == "tiny_vit_litemedsam" and r["checkpoint"] == "litemedsam"
    assert r["frozen_params"] == 5_053_908 and r["train_step_s"] > 0 and r["infer_tile_gflop"] > 0


def test_prior_box_dice_reports_each_scaling_and_size(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT.parent / "prior_box_dice.py"), "--patients", "2",
                           "--sizes", "128", "64", "--out", str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads((tmp_path / "box_dice.json").read_text())["rows"]
    assert [(r["size"], r["scaling"]) for r in rows] == [(128, "percentile"), (128, "zscore"),
                                                          (128, "zscore_unit_range"), (64, "zscore_unit_range")]
    assert all(0 <= r[k] <= 1 for r in rows for k in ("RV", "MLV", "LVC")) and rows[0]["slices"] == 2
    assert rows[0]["LVC"] > 0.5  # the prior segments the LV cavity from a box at half its training size
    assert (tmp_path / "box_dice.md").read_text().count("\n") == 2 + len(rows)

"""The model zip through nnU-Net's own commands: cross-validation files written by ``nnUNetv2_find_best_configuration``,
exported with ``sam_nnunet export-model --zip``, installed by ``nnUNetv2_install_pretrained_model_from_zip`` into a
fresh ``nnUNet_results``, predicted by ``nnUNetv2_predict_from_modelfolder`` + ``nnUNetv2_apply_postprocessing`` and by
``sam_nnunet predict -m model.zip``: the masks are identical."""
import json
import shutil
import subprocess
import zipfile

import numpy as np
import SimpleITK as sitk

from sam_nnunet import nnunet_env
from tests.golden.golden import ACDC, held_out_cases

CASES = ("patient023_frame01", "patient024_frame01")


def run(command, env):
    result = subprocess.run([str(c) for c in command], env=env, capture_output=True, text=True)
    assert result.returncode == 0, f"{command[0]} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout


def test_zip_installs_with_nnunet_and_predicts_the_same_masks(model_copy, tmp_path):
    import os

    results = model_copy.parents[1]
    raw, preprocessed = tmp_path / "raw" / "Dataset027_ACDC", tmp_path / "preprocessed" / "Dataset027_ACDC"
    env = dict(os.environ, **nnunet_env(nnUNet_raw=raw.parent, nnUNet_preprocessed=preprocessed.parent,
                                        nnUNet_results=results), nnUNet_def_n_proc="1", nnUNet_compile="false")
    # fold 0's validation: the golden model's masks of two held-out volumes, against their references
    (raw / "labelsTr").mkdir(parents=True)
    (preprocessed / "gt_segmentations").mkdir(parents=True)  # where preprocessing copies them; postprocessing reads
    shutil.copy(model_copy / "plans.json", preprocessed / "nnUNetPlans_SAMcpu.json")
    shutil.copy(model_copy / "dataset.json", raw / "dataset.json")
    images = tmp_path / "images"
    images.mkdir()
    for case in CASES:
        image = held_out_cases(ACDC)[case]
        shutil.copy(image, images / f"{case}_0000.nii.gz")
        for labels in (raw / "labelsTr", preprocessed / "gt_segmentations"):
            shutil.copy(str(image).replace(".nii.gz", "_gt.nii.gz"), labels / f"{case}.nii.gz")
    run(["sam_nnunet", "predict", "-i", images, "-o", model_copy / "fold_0" / "validation", "-m", model_copy, "--fast",
         "--disable-progress-bar"], env)
    (model_copy / "fold_0" / "validation" / "predictions.json").unlink()
    run(["nnUNetv2_find_best_configuration", "27", "-c", "2d", "-tr", "HSPSAMTrainer_20epochs", "-p",
         "nnUNetPlans_SAMcpu", "-f", "0", "-np", "1", "--disable_ensembling"], env)
    crossval = model_copy / "crossval_results_folds_0"
    assert {"summary.json", "postprocessing.pkl", "postprocessing.json"} <= {p.name for p in crossval.iterdir()}

    run(["sam_nnunet", "export-model", "-d", "27", "-c", "2d", "-tr", "HSPSAMTrainer_20epochs", "-p",
         "nnUNetPlans_SAMcpu", "-f", "0", "--zip", tmp_path / "model.zip"], env)
    with zipfile.ZipFile(tmp_path / "model.zip") as zf:
        names = set(zf.namelist())
        info = zf.read("Dataset027_ACDC/inference_information.json").decode()
        card = json.loads(zf.read(f"Dataset027_ACDC/{model_copy.name}/model_card.json"))
    prefix = f"Dataset027_ACDC/{model_copy.name}/"
    assert {prefix + "crossval_results_folds_0/" + n for n in ("summary.json", "postprocessing.json",
                                                                "postprocessing.pkl")} <= names
    assert prefix + "fold_0/validation/summary.json" not in names  # nnU-Net's per-fold validation was not run
    assert str(results) not in info  # no host paths leave the machine
    summary = json.loads((crossval / "summary.json").read_text())
    assert card["crossval"]["dice"]["foreground_mean"] == round(summary["foreground_mean"]["Dice"], 4)

    fresh = tmp_path / "fresh_results"
    fresh.mkdir()
    env_fresh = dict(env, nnUNet_results=str(fresh))
    run(["nnUNetv2_install_pretrained_model_from_zip", tmp_path / "model.zip"], env_fresh)
    installed = fresh / "Dataset027_ACDC" / model_copy.name
    run(["nnUNetv2_predict_from_modelfolder", "-i", images, "-o", tmp_path / "nnunet", "-m", installed, "-f", "0",
         "--disable_tta", "-npp", "1", "-nps", "1", "-device", "cpu", "--disable_progress_bar"], env_fresh)
    run(["nnUNetv2_apply_postprocessing", "-i", tmp_path / "nnunet", "-o", tmp_path / "nnunet_pp", "-pp_pkl_file",
         installed / "crossval_results_folds_0" / "postprocessing.pkl", "-np", "1", "-plans_json",
         installed / "plans.json"], env_fresh)
    run(["sam_nnunet", "predict", "-i", images, "-o", tmp_path / "ours", "-m", tmp_path / "model.zip", "--fast",
         "--disable-progress-bar"], dict(env_fresh, SAM_NNUNET_MODEL_CACHE=str(tmp_path / "cache")))
    run(["sam_nnunet", "predict", "-i", images, "-o", tmp_path / "ours_raw", "-m", installed, "--fast",
         "--no-postprocessing", "--disable-progress-bar"], env_fresh)
    # nnU-Net chose to remove stray components (the 20-epoch model leaves many), so the comparison covers it
    assert json.loads((crossval / "postprocessing.json").read_text())["postprocessing_fns"]
    changed = 0
    for case in CASES:
        def mask(folder):
            return sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / folder / f"{case}.nii.gz")))
        np.testing.assert_array_equal(mask("ours_raw"), mask("nnunet"))
        np.testing.assert_array_equal(mask("ours"), mask("nnunet_pp"))
        changed += int((mask("nnunet_pp") != mask("nnunet")).sum())
    assert changed > 0

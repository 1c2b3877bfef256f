"""ESP-MedSAM's universal path through the stock commands: merge-universal (ACDC crop + Kvasir-SEG pairs), nnU-Net's
planning and preprocessing, nnUNetv2_train with ESPMedSAMTrainer (bags and query sets per sample, from each case's
modality channel), sam_nnunet modality-channel and nnUNetv2_predict on new images of either modality."""
import json
import shutil
import subprocess
import sys

import numpy as np
import SimpleITK as sitk
import torch

from tests.datasets.test_universal import universal_sources

PLANS = "nnUNetPlans_SAMcpu"


def run(cmd, env):
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def test_universal_esp_medsam_trains_and_predicts_through_nnunet(acdc_preprocessed, nnunet_env, nnunet_command_env,
                                                                  kvasir, tmp_path):
    from sam_nnunet.datasets.universal import merge_universal

    raw, pre = universal_sources(acdc_preprocessed, nnunet_env, kvasir, n_kvasir=4)
    target = merge_universal(["27", "311"], 400, verbose=False)
    env = nnunet_command_env(nnunet_env, nnUNet_def_n_proc=1, SAM_NNUNET_SEED=0, SAM_NNUNET_ITERATIONS_PER_EPOCH=2,
                             SAM_NNUNET_VAL_ITERATIONS_PER_EPOCH=1)
    sam_nnunet = [sys.executable, "-m", "sam_nnunet.cli"]
    run(["nnUNetv2_plan_and_preprocess", "-d", "400", "-c", "2d", "-np", "1"], env)
    run([*sam_nnunet, "plans", "-d", "400", "--preset", "cpu_tiny"], env)
    plans_file = pre / "Dataset400_Universal" / f"{PLANS}.json"
    plans = json.loads(plans_file.read_text())
    plans["configurations"]["2d"]["sam_nnunet"]["light_encoder"] = "tiny_vit_micro"
    plans_file.write_text(json.dumps(plans))

    common = ["-tr", "ESPMedSAMTrainer_1epoch", "-p", PLANS, "-device", "cpu"]
    run(["nnUNetv2_train", "400", "2d", "0", *common], env)
    model = nnunet_env["nnUNet_results"] / "Dataset400_Universal" / f"ESPMedSAMTrainer_1epoch__{PLANS}__2d"
    log = next((model / "fold_0").glob("training_log_*.txt")).read_text()
    assert "Universal path: each sample's bags and query set from its modality channel" in log
    arch = json.loads((model / "plans.json").read_text())["configurations"]["2d"]["architecture"]["arch_kwargs"]
    assert arch["modality_codes"] == {"MRI": 10.0, "endoscopy": 40.0} and arch["modalities"] == ["MRI", "endoscopy"]
    weights = torch.load(model / "fold_0" / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    keys = weights["network_weights"]
    assert "controller.bags.endoscopy.0.k_tokens" in keys and "decoder.queries.MRI.weight" in keys
    assert keys["encoder.patch_embed.conv1.conv.weight"].shape[1] == 3  # R, G, B; not the modality channel
    assert (model / "fold_0" / "validation" / "summary.json").is_file()  # validated per case, by its channel

    # new images: the same slice given as MRI and as endoscopy; the modality channel decides the bags and queries
    first = sorted((target / "imagesTr").glob("ACDC_*_0000.nii.gz"))[0]
    images = tmp_path / "in"
    images.mkdir()
    for name, modality in (("as_mri", "MRI"), ("as_endoscopy", "endoscopy")):
        folder = tmp_path / name
        folder.mkdir()
        for c in range(3):
            shutil.copyfile(str(first).replace("_0000.", f"_{c:04d}."), folder / f"{name}_{c:04d}.nii.gz")
        run([*sam_nnunet, "modality-channel", "-i", str(folder), "-d", "400", "-m", modality], env)
        for f in folder.iterdir():
            shutil.copyfile(f, images / f.name)
    pred = tmp_path / "pred"
    run(["nnUNetv2_predict", "-i", str(images), "-o", str(pred), "-d", "400", "-c", "2d", "-f", "0", *common,
         "-npp", "1", "-nps", "1", "--save_probabilities"], env)
    masks = {n: sitk.GetArrayFromImage(sitk.ReadImage(str(pred / f"{n}.nii.gz"))) for n in ("as_mri", "as_endoscopy")}
    shape = sitk.GetArrayFromImage(sitk.ReadImage(str(first))).shape
    for mask in masks.values():
        assert mask.shape == shape and set(np.unique(mask).tolist()) <= {0, 1, 2, 3, 4}
    p_mri = np.load(pred / "as_mri.npz")["probabilities"]
    p_endo = np.load(pred / "as_endoscopy.npz")["probabilities"]
    assert np.abs(p_mri - p_endo).max() > 1e-4  # same pixels, other bags and queries

"""The real nnU-Net commands with HSPSAMTrainer, on a small crop of the shipped ACDC data (CPU)."""
import hashlib
import json
import os
import subprocess

import nibabel as nib
import numpy as np
import pytest
import torch


def run(cmd, env, ok=True):
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if ok and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.fault("training")
def test_train_resume_predict_through_nnunet_cli(acdc_env):
    """convert + nnUNetv2_plan_and_preprocess + sam_nnunet plans ran in the acdc_preprocessed fixture."""
    paths = acdc_env
    env = dict(os.environ, SAM_NNUNET_ITERATIONS_PER_EPOCH="2", SAM_NNUNET_VAL_ITERATIONS_PER_EPOCH="1",
               SAM_NNUNET_SEED="0")
    raw = paths["nnUNet_raw"] / "Dataset027_ACDC"
    trainer = "HSPSAMTrainer_1epoch"
    common = ["-tr", trainer, "-p", "nnUNetPlans_SAMcpu", "-device", "cpu"]

    run(["nnUNetv2_train", "27", "2d", "0", *common], env)
    out = paths["nnUNet_results"] / "Dataset027_ACDC" / f"{trainer}__nnUNetPlans_SAMcpu__2d"
    final = out / "fold_0" / "checkpoint_final.pth"
    ckpt = torch.load(final, map_location="cpu", weights_only=False)
    assert ckpt["trainer_name"] == trainer and ckpt["current_epoch"] == 1
    assert any(k.endswith("lora_A") for k in ckpt["network_weights"])
    plans = json.loads((out / "plans.json").read_text())
    arch = plans["configurations"]["2d"]["architecture"]
    assert arch["network_class_name"] == "sam_nnunet.modeling.hsp_sam.HSPSAM"
    assert arch["arch_kwargs"]["encoder"] == "vit_tiny" and arch["arch_kwargs"]["num_prompts"] == 3
    summary = json.loads((out / "fold_0" / "validation" / "summary.json").read_text())
    assert np.isfinite(summary["foreground_mean"]["Dice"])

    # a finished fold is not retrained over: without --c it is an error and the checkpoint stays
    digest = sha(final)
    again = run(["nnUNetv2_train", "27", "2d", "0", *common], env, ok=False)
    assert again.returncode != 0 and "Use --c to resume" in again.stdout + again.stderr
    assert sha(final) == digest
    # --c resumes from the checkpoint (here: already finished, so only re-validates)
    resumed = run(["nnUNetv2_train", "27", "2d", "0", *common, "--c"], env)
    assert "Epoch 0" not in resumed.stdout
    assert torch.load(final, map_location="cpu", weights_only=False)["current_epoch"] == 1

    # fold 'all' works as with any nnU-Net trainer
    run(["nnUNetv2_train", "27", "2d", "all", *common], env)
    assert (out / "fold_all" / "checkpoint_final.pth").is_file()

    inputs = sorted((raw / "imagesTs").glob("*.nii.gz"))
    assert len(inputs) == 2
    before = {p: sha(p) for p in inputs}
    pred = paths["nnUNet_results"].parent / "pred"
    corrupt_in = paths["nnUNet_results"].parent / "corrupt_in"
    corrupt_in.mkdir()
    (corrupt_in / "case_0000.nii.gz").write_bytes(b"not a nifti file")
    bad = run(["nnUNetv2_predict", "-i", str(corrupt_in), "-o", str(pred) + "_bad", "-d", "27", "-c", "2d",
               "-f", "0", *common, "-npp", "1", "-nps", "1"], env, ok=False)
    assert bad.returncode != 0 and "case_0000.nii.gz" in bad.stdout + bad.stderr

    run(["nnUNetv2_predict", "-i", str(raw / "imagesTs"), "-o", str(pred), "-d", "27", "-c", "2d",
         "-f", "0", "all", *common, "-npp", "1", "-nps", "1"], env)
    for image in inputs:
        seg_file = pred / image.name.replace("_0000.nii.gz", ".nii.gz")
        assert seg_file.is_file()
        img, seg = nib.load(str(image)), nib.load(str(seg_file))
        assert seg.shape == img.shape
        np.testing.assert_allclose(seg.affine, img.affine, atol=1e-4)
        values = np.unique(np.asarray(seg.dataobj))
        assert set(values.tolist()) <= {0, 1, 2, 3}
        assert sha(image) == before[image]  # inputs untouched

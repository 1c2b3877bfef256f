"""SelfPromptSAMTrainer through the real nnU-Net commands on 3d_fullres patches of the ACDC crop (CPU):
train, crash, resume with --c in the right phase, predict NIfTI with the input geometry."""
import os
import signal
import subprocess
import time

import nibabel as nib
import numpy as np
import torch

from test_cli_end_to_end import run, sha


def test_train_crash_resume_predict_3d(acdc_env):
    paths = acdc_env
    env = dict(os.environ, SAM_NNUNET_ITERATIONS_PER_EPOCH="1", SAM_NNUNET_VAL_ITERATIONS_PER_EPOCH="1",
               SAM_NNUNET_SEED="0", SAM_NNUNET_SAVE_EVERY="1")
    trainer = "SelfPromptSAMTrainer_5epochs"  # warm-up: epoch 0
    common = ["-tr", trainer, "-p", "nnUNetPlans_SAMcpu", "-device", "cpu"]
    out = paths["nnUNet_results"] / "Dataset027_ACDC" / f"{trainer}__nnUNetPlans_SAMcpu__3d_fullres"
    latest = out / "fold_0" / "checkpoint_latest.pth"

    # a run killed mid-training (process group, as a crash or a cluster time limit would)
    proc = subprocess.Popen(["nnUNetv2_train", "27", "3d_fullres", "0", *common], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    deadline = time.time() + 300
    try:
        while time.time() < deadline and proc.poll() is None:
            if latest.is_file() and torch.load(latest, map_location="cpu", weights_only=False)["current_epoch"] >= 1:
                break
            time.sleep(0.2)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        log = proc.communicate()[0]
    assert latest.is_file(), log[-3000:]
    assert "Warm-up (1 of 5 epochs)" in log, log[-3000:]
    assert not (out / "fold_0" / "checkpoint_final.pth").exists()
    stopped_at = torch.load(latest, map_location="cpu", weights_only=False)["current_epoch"]
    assert 1 <= stopped_at < 5

    # --c continues after the warm-up: its first phase is the full loss, at the epoch it stopped at
    resumed = run(["nnUNetv2_train", "27", "3d_fullres", "0", *common, "--c"], env).stdout
    assert f"Epoch {stopped_at}\n" in resumed and "Epoch 0\n" not in resumed
    assert f"Epoch {stopped_at}: full loss" in resumed and "Warm-up" not in resumed
    final = torch.load(out / "fold_0" / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert final["current_epoch"] == 5
    assert any("adapter_attn.depth_mlp" in k for k in final["network_weights"])
    summary = (out / "fold_0" / "validation" / "summary.json").read_text()
    assert '"Dice"' in summary

    raw = paths["nnUNet_raw"] / "Dataset027_ACDC"
    inputs = sorted((raw / "imagesTs").glob("*.nii.gz"))
    before = {p: sha(p) for p in inputs}
    pred = paths["nnUNet_results"].parent / "pred3d"
    run(["nnUNetv2_predict", "-i", str(raw / "imagesTs"), "-o", str(pred), "-d", "27", "-c", "3d_fullres",
         "-f", "0", *common, "-npp", "1", "-nps", "1"], env)
    for image in inputs:
        seg_file = pred / image.name.replace("_0000.nii.gz", ".nii.gz")
        img, seg = nib.load(str(image)), nib.load(str(seg_file))
        assert seg.shape == img.shape and img.shape[2] < 4  # shallower than the patch depth: padded by nnU-Net
        np.testing.assert_allclose(seg.affine, img.affine, atol=1e-4)
        assert set(np.unique(np.asarray(seg.dataobj)).tolist()) <= {0, 1, 2, 3}
        assert sha(image) == before[image]

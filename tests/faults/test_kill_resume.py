"""kill -9 at several points of one real ``nnUNetv2_train`` run, each followed by ``--c``; the model must finish,
load and predict. One lineage on purpose: each resume starts from what the previous kill left behind.

Run alone with ``python -m pytest -m faults tests``.
"""
import os
import signal
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

pytestmark = pytest.mark.faults
LAUNCH = Path(__file__).with_name("launch.py")
TRAINER = "HSPSAMTrainer_5epochs"


def train(env, fault=None, resume=True):
    args = ["27", "2d", "0", "-tr", TRAINER, "-p", "nnUNetPlans_SAMcpu", "-device", "cpu"] + (["--c"] if resume else [])
    cmd = [sys.executable, str(LAUNCH), fault, *args] if fault else ["nnUNetv2_train", *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, start_new_session=True, timeout=900)
    if fault:
        assert proc.returncode == -signal.SIGKILL, f"{fault}: expected SIGKILL, got {proc.returncode}\n" \
                                                   f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    else:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def epoch_of(path: Path) -> int:
    """The epoch a checkpoint resumes at; loading it also proves it is complete."""
    return torch.load(path, map_location="cpu", weights_only=False)["current_epoch"]


@pytest.mark.fault("training", cases=4)
def test_kill_9_anywhere_then_resume_to_a_model_that_predicts(acdc_env):
    env = dict(os.environ, SAM_NNUNET_ITERATIONS_PER_EPOCH="2", SAM_NNUNET_VAL_ITERATIONS_PER_EPOCH="1",
               SAM_NNUNET_SEED="0", nnUNet_n_proc_DA="1")
    fold = acdc_env["nnUNet_results"] / "Dataset027_ACDC" / f"{TRAINER}__nnUNetPlans_SAMcpu__2d" / "fold_0"
    latest, final = fold / "checkpoint_latest.pth", fold / "checkpoint_final.pth"

    # 1. mid-epoch: the 6th step is the 2nd of epoch 2; checkpoint_latest.pth of epoch 1 (5 epochs: saved every epoch)
    train(env, "train_step:6", resume=False)
    assert epoch_of(latest) == 2 and not final.exists()

    # 2. during a checkpoint write: the first save of this resumed run (after epoch 2) dies half-written
    train(env, "save:checkpoint_latest.pth:1")
    assert epoch_of(latest) == 2  # the previous checkpoint is intact, under its own name
    partial = fold / "checkpoint_latest.pth.partial"
    assert partial.is_file() and partial.stat().st_size < latest.stat().st_size

    # 3. while writing checkpoint_final.pth: the run resumes from the latest checkpoint (epoch 4)
    train(env, "save:checkpoint_final.pth:1")
    assert not final.exists() and epoch_of(latest) == 4

    # 4. after checkpoint_final.pth, during the final validation
    train(env, "validation")
    assert epoch_of(final) == 5 and not latest.exists()
    assert not (fold / "validation" / "summary.json").exists()

    # 5. --c finishes what is left (the validation) and cleans up the half-written files
    done = train(env)
    assert "Epoch " not in done.stdout  # no epoch retrained
    assert (fold / "validation" / "summary.json").is_file()
    assert not list(fold.glob("*.partial"))
    log = "".join(p.read_text() for p in fold.glob("training_log_*.txt"))
    assert "Removed checkpoint_latest.pth.partial" in log and "Removed checkpoint_final.pth.partial" in log

    # the finished model predicts the held-out volumes in their own geometry
    raw = acdc_env["nnUNet_raw"] / "Dataset027_ACDC"
    pred = acdc_env["nnUNet_results"].parent / "pred"
    subprocess.run(["nnUNetv2_predict", "-i", str(raw / "imagesTs"), "-o", str(pred), "-d", "27", "-c", "2d",
                    "-tr", TRAINER, "-p", "nnUNetPlans_SAMcpu", "-f", "0", "-device", "cpu", "-npp", "1", "-nps", "1",
                    "--disable_tta"], env=env, check=True, capture_output=True)
    for image in sorted((raw / "imagesTs").glob("*.nii.gz")):
        seg = nib.load(str(pred / image.name.replace("_0000.nii.gz", ".nii.gz")))
        assert seg.shape == nib.load(str(image)).shape
        assert set(np.unique(np.asarray(seg.dataobj)).tolist()) <= {0, 1, 2, 3}

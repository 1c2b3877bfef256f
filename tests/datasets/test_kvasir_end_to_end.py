"""HSP-SAM's and ESP-MedSAM's own task (polyps, 2D RGB) through the real commands: convert-kvasir on shipped pairs,
nnU-Net's planning and preprocessing (NaturalImage2DIO), nnUNetv2_train and nnUNetv2_predict on PNG."""
import hashlib
import json
import subprocess
import sys

import numpy as np
import torch
from PIL import Image

PLANS = "nnUNetPlans_SAMcpu"


def run(cmd, env):
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def test_hsp_sam_trains_and_predicts_rgb_polyp_pngs(kvasir, nnunet_env, nnunet_command_env):
    source = kvasir(6)
    env = nnunet_command_env(nnunet_env, nnUNet_def_n_proc=1, SAM_NNUNET_SEED=0, SAM_NNUNET_ITERATIONS_PER_EPOCH=2,
                             SAM_NNUNET_VAL_ITERATIONS_PER_EPOCH=1)
    sam_nnunet = [sys.executable, "-m", "sam_nnunet.cli"]
    run([*sam_nnunet, "convert-kvasir", "-i", str(source), "-d", "311"], env)
    run(["nnUNetv2_plan_and_preprocess", "-d", "311", "-c", "2d", "-np", "1"], env)
    run([*sam_nnunet, "plans", "-d", "311", "--preset", "cpu_tiny"], env)
    common = ["-tr", "HSPSAMTrainer_1epoch", "-p", "nnUNetPlans_SAMcpu", "-device", "cpu"]
    run(["nnUNetv2_train", "311", "2d", "0", *common], env)
    model = nnunet_env["nnUNet_results"] / "Dataset311_KvasirSEG" / "HSPSAMTrainer_1epoch__nnUNetPlans_SAMcpu__2d"
    weights = torch.load(model / "fold_0" / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert weights["network_weights"]["encoder.patch_embed.proj.weight"].shape[1] == 3  # RGB in, as 3 channels
    assert (model / "fold_0" / "validation" / "summary.json").is_file()

    raw = nnunet_env["nnUNet_raw"] / "Dataset311_KvasirSEG"
    inputs = sorted((raw / "imagesTr").glob("*_0000.png"))[:2]
    pred_in = nnunet_env["nnUNet_results"].parent / "pred_in"
    pred_in.mkdir()
    for image in inputs:
        (pred_in / image.name).write_bytes(image.read_bytes())
    before = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in pred_in.iterdir()}
    pred = nnunet_env["nnUNet_results"].parent / "pred"
    run(["nnUNetv2_predict", "-i", str(pred_in), "-o", str(pred), "-d", "311", "-c", "2d", "-f", "0", *common[:-2],
         "-device", "cpu", "-npp", "1", "-nps", "1"], env)
    for image in inputs:
        rgb = np.asarray(Image.open(pred_in / image.name))
        assert rgb.ndim == 3 and rgb.shape[2] == 3
        mask = np.asarray(Image.open(pred / image.name.replace("_0000.png", ".png")))
        assert mask.shape == rgb.shape[:2]
        assert set(np.unique(mask).tolist()) <= {0, 1}
    assert before == {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in pred_in.iterdir()}


def test_student_distilled_from_mobile_sam_on_kvasir_pngs(kvasir, nnunet_env, nnunet_command_env, tmp_path, mobile_sam,
                                                         official_sam, small_encoder):
    """convert-kvasir (writes imaging_modality "endoscopy"), plan; distill a student started from a MobileSAM-layout
    file (--init) on the polyps with a SAM-layout teacher; ESPMedSAMTrainer loads it (TinyViT frozen); predict a PNG.
    (The teacher-fold path, 1-channel data and --c are tested on ACDC: tests/training/test_distill.py.)"""
    from sam_nnunet.distill import distill

    torch.save(mobile_sam().state_dict(), tmp_path / "mobile_sam.pt")
    torch.save(official_sam()[1], tmp_path / "sam.pth")  # the registry's test-sized ViT (small_encoder), 256 wide
    source = kvasir(6)
    env = nnunet_command_env(nnunet_env, nnUNet_def_n_proc=1, SAM_NNUNET_SEED=0, SAM_NNUNET_ITERATIONS_PER_EPOCH=2,
                             SAM_NNUNET_VAL_ITERATIONS_PER_EPOCH=1)
    sam_nnunet = [sys.executable, "-m", "sam_nnunet.cli"]
    run([*sam_nnunet, "convert-kvasir", "-i", str(source), "-d", "311"], env)
    raw = nnunet_env["nnUNet_raw"] / "Dataset311_KvasirSEG"
    assert json.loads((raw / "dataset.json").read_text())["imaging_modality"] == "endoscopy"
    run(["nnUNetv2_plan_and_preprocess", "-d", "311", "-c", "2d", "-np", "1"], env)
    run([*sam_nnunet, "plans", "-d", "311", "--preset", "cpu_tiny"], env)
    student = distill(datasets=["311"], out=str(tmp_path / "student.pth"), plans=PLANS,
                      teacher_checkpoint=str(tmp_path / "sam.pth"), init=str(tmp_path / "mobile_sam.pt"), steps=2,
                      batch_size=2, progress=False)
    distilled = torch.load(student, map_location="cpu", weights_only=True)
    assert distilled["sam_nnunet_distill"]["modalities"] == ["endoscopy"]
    assert "modality_controller.bags.endoscopy.0.k_tokens" in distilled["model"]

    common = ["-tr", "ESPMedSAMTrainer_1epoch", "-p", PLANS, "-device", "cpu"]
    run(["nnUNetv2_train", "311", "2d", "0", *common], dict(env, SAM_NNUNET_CHECKPOINT=str(student)))
    model = nnunet_env["nnUNet_results"] / "Dataset311_KvasirSEG" / f"ESPMedSAMTrainer_1epoch__{PLANS}__2d"
    log = next((model / "fold_0").glob("training_log_*.txt")).read_text()
    assert "freeze_pretrained: 5,071,124 pretrained parameters frozen" in log  # MobileSAM's TinyViT
    weights = torch.load(model / "fold_0" / "checkpoint_final.pth", map_location="cpu", weights_only=False)["network_weights"]
    stem = distilled["model"]["image_encoder.patch_embed.seq.0.c.weight"]
    torch.testing.assert_close(weights["encoder.patch_embed.conv1.conv.weight"], stem)  # RGB: as distilled, frozen
    assert not torch.equal(stem, mobile_sam().state_dict()["image_encoder.patch_embed.seq.0.c.weight"])  # distilled

    pred_in = tmp_path / "pred_in"
    pred_in.mkdir()
    inputs = sorted((raw / "imagesTr").glob("*_0000.png"))[:1]
    for image in inputs:
        (pred_in / image.name).write_bytes(image.read_bytes())
    pred = tmp_path / "pred"
    run(["nnUNetv2_predict", "-i", str(pred_in), "-o", str(pred), "-d", "311", "-c", "2d", "-f", "0", *common,
         "-npp", "1", "-nps", "1"], env)
    for image in inputs:
        mask = np.asarray(Image.open(pred / image.name.replace("_0000.png", ".png")))
        assert mask.shape == np.asarray(Image.open(image)).shape[:2]
        assert set(np.unique(mask).tolist()) <= {0, 1}

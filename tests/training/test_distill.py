"""`sam_nnunet distill` (MMDKD, Eq. 1) on the shipped ACDC crops: a teacher the project trains
(ESPMedSAMTeacherTrainer), the student distilled from it, then loaded, trained, resumed and used for prediction
through the real nnU-Net commands; resuming a killed distillation; the MobileSAM key layout of the file."""
import json
import os
import subprocess
import sys

import pytest
import torch

from sam_nnunet.modeling.blocks.light_encoder import TinyViTEncoder, mobile_sam_key_map
from sam_nnunet.modeling.blocks.registry import LIGHT_ENCODERS

PLANS = "nnUNetPlans_SAMcpu"


def run(cmd, env):
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def test_file_keys_are_mobile_sams(mobile_sam):
    from sam_nnunet.distill import to_mobile_sam_key

    ours = TinyViTEncoder(LIGHT_ENCODERS["tiny_vit_5m"]).state_dict()
    theirs = {k for k in mobile_sam().image_encoder.state_dict() if mobile_sam_key_map(k)}
    assert {to_mobile_sam_key(k) for k in ours} == theirs
    assert all(mobile_sam_key_map(to_mobile_sam_key(k)) == k for k in ours)


def test_distill_then_train_resume_predict_through_the_cli(acdc_env, esp_teacher, esp_micro_plans, acdc_predict,
                                                           tmp_path):
    student = tmp_path / "student.pth"
    env = dict(os.environ, SAM_NNUNET_ITERATIONS_PER_EPOCH="2", SAM_NNUNET_VAL_ITERATIONS_PER_EPOCH="1",
               SAM_NNUNET_SEED="0")
    env.pop("SAM_NNUNET_CHECKPOINT", None)
    distill = [sys.executable, "-m", "sam_nnunet.cli", "distill", "-d", "27", "-p", PLANS, "--teacher-model",
               str(esp_teacher), "-f", "0", "--student", "tiny_vit_micro", "--steps", "30", "--batch-size", "4",
               "--save-every", "10", "-o", str(student)]
    proc = run(distill, env)
    assert "bags: ['MRI']" in proc.stdout and "Dataset027_ACDC (MRI)" in proc.stdout

    saved = torch.load(student, map_location="cpu", weights_only=True)
    keys = set(saved["model"])
    assert "image_encoder.patch_embed.seq.0.c.weight" in keys and "image_encoder.neck.0.weight" in keys
    assert "modality_controller.bags.MRI.0.k_tokens" in keys
    assert saved["model"]["image_encoder.patch_embed.seq.0.c.weight"].shape[1] == 3  # MobileSAM's RGB stem
    assert saved["sam_nnunet_distill"]["modalities"] == ["MRI"]
    history = json.loads((tmp_path / "student.pth.log.json").read_text())
    assert [h["step"] for h in history] == list(range(30))
    assert all(h["modality"] > 0 for h in history)  # the teacher has MRI bags: Eq. 1's second term is used
    first = sum(h["universal"] + h["modality"] for h in history[:5])
    last = sum(h["universal"] + h["modality"] for h in history[-5:])
    assert last < 0.8 * first, (first, last)  # the feature loss falls
    assert not (tmp_path / "student.pth.partial").exists()

    again = subprocess.run(distill, env=env, capture_output=True, text=True)
    assert again.returncode != 0 and "never overwrites" in again.stderr

    # the distilled student: loaded with SAM_NNUNET_CHECKPOINT, trained (TinyViT frozen), resumed, predicting
    train_env = dict(env, SAM_NNUNET_CHECKPOINT=str(student))
    common = ["-tr", "ESPMedSAMTrainer_1epoch", "-p", esp_micro_plans, "-device", "cpu"]
    run(["nnUNetv2_train", "27", "2d", "0", *common], train_env)
    out = acdc_env["nnUNet_results"] / "Dataset027_ACDC" / f"ESPMedSAMTrainer_1epoch__{esp_micro_plans}__2d"
    log = next((out / "fold_0").glob("training_log_*.txt")).read_text()
    assert "pretrained parameters frozen" in log
    weights = torch.load(out / "fold_0" / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    stem = saved["model"]["image_encoder.patch_embed.seq.0.c.weight"].sum(1, keepdim=True)  # 1-channel ACDC
    torch.testing.assert_close(weights["network_weights"]["encoder.patch_embed.conv1.conv.weight"], stem)
    resumed = run(["nnUNetv2_train", "27", "2d", "0", *common, "--c"], train_env)
    assert "Epoch 0" not in resumed.stdout
    acdc_predict(common, env, tmp_path / "pred")


def test_a_killed_distillation_resumes_and_other_arguments_are_refused(acdc_env, esp_teacher, tmp_path, monkeypatch,
                                                                       capsys):
    from sam_nnunet import distill as module

    write = module._write_partial

    def write_then_die(path, state):
        write(path, state)
        raise KeyboardInterrupt("killed after the resume point of step %d" % state["step"])

    out = tmp_path / "student.pth"
    kwargs = dict(datasets=["27"], out=str(out), plans=PLANS, teacher_model=str(esp_teacher), student="tiny_vit_micro",
                  steps=6, batch_size=2, save_every=3, progress=False)
    monkeypatch.setattr(module, "_write_partial", write_then_die)
    with pytest.raises(KeyboardInterrupt):
        module.distill(**kwargs)
    assert (tmp_path / "student.pth.partial").is_file() and not out.exists()
    monkeypatch.setattr(module, "_write_partial", write)

    with pytest.raises(ValueError, match=r"other arguments \(\['lr'\]\)"):
        module.distill(**dict(kwargs, lr=5e-4))
    module.distill(**kwargs)
    assert "resuming student.pth from step 3 of 6" in capsys.readouterr().out
    history = json.loads((tmp_path / "student.pth.log.json").read_text())
    assert [h["step"] for h in history] == list(range(6))
    assert out.is_file() and not (tmp_path / "student.pth.partial").exists()


def test_the_teacher_must_be_an_esp_medsam_vit(acdc_env, tmp_path):
    from sam_nnunet.distill import load_teacher

    with pytest.raises(ValueError, match="exactly one teacher"):
        load_teacher()
    with pytest.raises(FileNotFoundError, match="no checkpoint_final.pth"):
        load_teacher(str(tmp_path), "0")


def test_a_sam_checkpoint_teacher_gives_the_universal_term_through_a_regressor(acdc_env, official_sam,
                                                                                small_encoder, tmp_path, capsys):
    """A SAM-layout file as teacher (no bags: Eq. 1's first term only); its 256-wide embedding against the micro
    student's 64-wide one goes through the 1x1 regressor, which is not written to the file."""
    from sam_nnunet.distill import distill

    torch.save(official_sam()[1], tmp_path / "sam.pth")
    out = distill(datasets=["27"], out=str(tmp_path / "student.pth"), plans=PLANS,
                  teacher_checkpoint=str(tmp_path / "sam.pth"), student="tiny_vit_micro", steps=3, batch_size=2,
                  progress=False)
    printed = capsys.readouterr().out
    assert "bags: none" in printed and "1x1 regressor 64 -> 256" in printed
    history = json.loads((tmp_path / "student.pth.log.json").read_text())
    assert all(h["modality"] == 0 and h["universal"] > 0 for h in history)
    saved = torch.load(out, map_location="cpu", weights_only=True)["model"]
    assert saved["image_encoder.neck.0.weight"].shape[0] == 64 and not any("regressor" in k for k in saved)

    # the file loads into the student as ESPMedSAMTrainer builds it: encoder, neck and the modality's bags
    from sam_nnunet.modeling.esp_medsam import ESPMedSAM

    net = ESPMedSAM(num_input_channels=1, num_classes=4, img_size=(128, 128), modality="MRI",
                    light_encoder="tiny_vit_micro")
    report = net.load_pretrained(out)
    assert not report.unexpected and {f"controller.{k}" for k in net.controller.state_dict()} <= set(report.loaded)
    for key, value in net.controller.state_dict().items():
        torch.testing.assert_close(value, saved[f"modality_controller.{key}"])
    torch.testing.assert_close(net.neck.state_dict()["0.weight"], saved["image_encoder.neck.0.weight"])

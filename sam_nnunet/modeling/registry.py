"""Encoder presets by name: the official SAM sizes and small from-scratch ones for CPU runs.

One place for every size so the network classes stay free of presets (cf.
``segment_anything.sam_model_registry``). ``vit_b/l/h`` match the official checkpoints
(``sam_vit_b_01ec64.pth`` etc. and MedSAM's ``medsam_vit_b.pth``); ``vit_tiny`` / ``vit_small``
have no pretrained weights and exist so that tests and CPU demos train in minutes.
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
}


def get_encoder_config(name: str) -> EncoderConfig:
    try:
        return ENCODERS[name]
    except KeyError:
        raise ValueError(f"Unknown encoder {name!r}; choose one of {sorted(ENCODERS)}") from None

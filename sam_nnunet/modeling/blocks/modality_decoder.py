"""ESP-MedSAM's Query-Decoupled Modality Decoder, QDMD (shared/papers/004, section III-D, Eqs. 6-7).

SAM's mask decoder with one query set per imaging modality. Per modality n: mask queries q^n and the
hypernetwork MLPs f_MLP^n. Shared: SAM's two-way transformer (Eq. 6, run twice: depth 2), the upscaling Psi
(two 2x2 transposed convolutions, 4x) and the positional encoding alpha. Eq. 7's mask is the product of the
upscaled embedding with f_MLP^n of the transformed query; nnU-Net applies the softmax, so logits leave here.

For nnU-Net a query set holds one token (and one MLP) per segmentation output, K (background included),
where the paper's is one binary mask per modality; SAM's IoU head is not built (no loss; it would break DDP).

Which set runs: the dataset's modality (chosen before training and recorded with the model), never a
choice among the outputs. The paper's evaluation picks, per image, the modality mask that scores best
against the ground truth: an oracle that cannot exist at inference, so it is not implemented. Sets of other
modalities exist (a checkpoint may bring them) but get no gradient. ``decoupled=False`` (Table VI rows without
QDMD) has a single query set shared by all modalities, i.e. SAM's decoder.
"""
from __future__ import annotations

from typing import Sequence

import torch
from segment_anything.modeling.transformer import TwoWayTransformer
from torch import nn

from sam_nnunet.modeling.blocks.mask_decoder import BatchedMLP, build_output_upscaling
from sam_nnunet.modeling.blocks.modality_controller import MODALITIES, _key, canonical_modality

SHARED = "shared"


class QueryDecoupledModalityDecoder(nn.Module):
    def __init__(self, *, dim: int, num_masks: int, active: str, modalities: Sequence[str] = MODALITIES,
                 decoupled: bool = True, depth: int = 2, mlp_dim: int = 2048, num_heads: int = 8) -> None:
        """
        Args:
            dim: D, the decoder width (256 in SAM).
            num_masks: K, nnU-Net's segmentation outputs.
            active: the dataset's modality (its query set runs).
            modalities: modalities with a query set.
            decoupled: one query set per modality (QDMD) or a single shared one.
            depth / mlp_dim / num_heads: SAM's two-way transformer.
        """
        super().__init__()
        self.num_masks = num_masks
        self.decoupled = decoupled
        self.modalities = tuple(canonical_modality(m) for m in modalities)
        names = [_key(m) for m in self.modalities] if decoupled else [SHARED]
        self.transformer = TwoWayTransformer(depth=depth, embedding_dim=dim, num_heads=num_heads, mlp_dim=mlp_dim)
        self.output_upscaling = build_output_upscaling(dim)
        self.queries = nn.ModuleDict({n: nn.Embedding(num_masks, dim) for n in names})
        self.hypernetworks = nn.ModuleDict({
            n: BatchedMLP(num_mlps=num_masks, input_dim=dim, hidden_dim=dim, output_dim=dim // 8) for n in names})
        self.active = ""
        self.select(active)

    def select(self, modality: str, freeze_others: bool = True) -> None:
        """Use ``modality``'s query set; ``freeze_others``: the other sets get no gradient (False: only route)."""
        modality = canonical_modality(modality)
        if self.decoupled and modality not in self.modalities:
            raise ValueError(f"No query set for modality {modality!r}; this decoder has {list(self.modalities)}")
        self.active = modality
        chosen = _key(modality) if self.decoupled else SHARED
        if freeze_others:
            for name in self.queries:
                self.queries[name].requires_grad_(name == chosen)
                self.hypernetworks[name].requires_grad_(name == chosen)

    def forward(self, embedding: torch.Tensor, image_pe: torch.Tensor) -> torch.Tensor:
        """Eqs. 6-7: E + D (B x D x h x w) and alpha (1 x D x h x w) -> mask logits B x K x 4h x 4w."""
        name = _key(self.active) if self.decoupled else SHARED
        B, D, h, w = embedding.shape
        queries = self.queries[name].weight.unsqueeze(0).expand(B, -1, -1)
        tokens, src = self.transformer(embedding, image_pe, queries)
        upscaled = self.output_upscaling(src.transpose(1, 2).reshape(B, D, h, w))  # B x D/8 x 4h x 4w
        hyper = self.hypernetworks[name](tokens[:, : self.num_masks])  # B x K x D/8
        return (hyper @ upscaled.flatten(2)).view(B, self.num_masks, *upscaled.shape[2:])

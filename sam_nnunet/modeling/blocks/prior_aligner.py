"""PG-SAM's fine-grained modality prior aligner, FGMPA (shared/papers/003, section 2.2, Eqs. 1-3).

Given SAM features F_sam (B x C x h x w, L = h*w positions) and class text vectors F_text (K x C,
:class:`~sam_nnunet.modeling.blocks.text_prior.ClassTextPrior`), it returns the semantic guide matrix G
(B x C x h x w)::

    s   = cos(F_img, F_text)                         B x K      F_img = mean of F_sam over positions
    W_s = sigmoid(P(s))                              Eq. 1      P: learnable linear map of the K similarities
    A   = softmax(LN(F) LN(F)^T / sqrt(C))           Eq. 2      B x L x L, LN over channels
    G   = Gamma_spatial(Gamma_channel((F + A F) * W_s))         Eq. 3

Gamma_channel is a LayerNorm over the C channels at each position (segment-anything's LayerNorm2d's
arithmetic, eps 1e-6) *without* an affine; Gamma_spatial a normalisation over the L positions of each
channel with a per-channel affine (an instance norm: "layer norm over space"). Why no affine in
Gamma_channel: a per-channel scale and shift after it are undone by Gamma_spatial, which normalises
each channel over the positions next. With one (segment-anything's LayerNorm2d), randomising those 2C
parameters changed G by about 1e-4 and their gradients were 1e-4 against 3.4 for the rest: parameters
that cannot learn anything. Gamma_spatial's affine is the one that sets G's per-channel scale.

**Where W_s acts (``weighting``).** The paper's W_s is B x 1 x L, one weight per position. A positive
per-position factor cancels in Gamma_channel: LN(w * y) = LN(y) for w > 0 (up to LN's epsilon), so
with the literal form the text has no effect on G at all (a test shows it). The default here is
``weighting="channel"``: P maps the K similarities to C weights, W_s is B x C x 1, and it rescales
channels relative to each other, which Gamma_channel keeps (and Gamma_spatial, acting after it, does
not undo). The text then gates which feature channels the guide matrix carries, per image, by how
the image's pooled features resemble each class description. ``weighting="spatial"`` keeps the
literal form (P: K -> L, tied to the patch size) for comparison.

F_img: the paper takes CLIP's image embedding. No CLIP weights can be had offline here, so F_img is
the average of the (LoRA-tuned) SAM features, in the same C-wide space that the text projection maps
into. Without class vectors (``text_prior="none"``) W_s is 1.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from sam_nnunet.modeling.common import InstanceNorm2d

WEIGHTINGS = ("channel", "spatial")


class ChannelNorm(nn.Module):
    """Gamma_channel: B x C x h x w normalised over C at every position, no affine (LayerNorm2d's arithmetic)."""

    def __init__(self, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        return (x - mean) / torch.sqrt(var + self.eps)


class ModalityPriorAligner(nn.Module):
    def __init__(self, *, dim: int, num_targets: int, num_positions: int, weighting: str = "channel",
                 similarity: bool = True) -> None:
        """
        Args:
            dim: C, the width of F_sam and of the class vectors.
            num_targets: K, foreground classes (length of the similarity vector).
            num_positions: L = h*w of the feature grid (used by ``weighting="spatial"`` only).
            weighting: "channel" (W_s: B x C x 1, default) or "spatial" (the paper's B x 1 x L).
            similarity: False for a network without class vectors (``text_prior="none"``): W_s = 1, no P.
        """
        super().__init__()
        if weighting not in WEIGHTINGS:
            raise ValueError(f"aligner_weighting must be one of {WEIGHTINGS}, got {weighting!r}")
        self.weighting = weighting
        self.dim = dim
        self.num_positions = num_positions
        out = dim if weighting == "channel" else num_positions
        self.proj = nn.Linear(num_targets, out) if similarity else None  # P of Eq. 1
        self.attn_norm = nn.LayerNorm(dim)  # F_sam^norm of Eq. 2
        self.channel_norm = ChannelNorm()  # Gamma_channel (no affine: see the module docstring)
        self.spatial_norm = InstanceNorm2d(dim, affine=True)  # Gamma_spatial

    def similarity_weights(self, features: torch.Tensor, class_vectors: Optional[torch.Tensor]) -> torch.Tensor:
        """Eq. 1. features: B x C x h x w; class_vectors: K x C or None -> W_s, B x C x 1 or B x 1 x L (ones without
        class vectors)."""
        B = features.shape[0]
        if class_vectors is None or self.proj is None:
            shape = (B, self.dim, 1) if self.weighting == "channel" else (B, 1, features.shape[2] * features.shape[3])
            return features.new_ones(shape)
        image = features.mean(dim=(2, 3))  # F_img: B x C
        similarity = F.normalize(image, dim=1) @ F.normalize(class_vectors.to(image.dtype), dim=1).t()  # B x K
        weights = torch.sigmoid(self.proj(similarity))
        return weights.unsqueeze(-1) if self.weighting == "channel" else weights.unsqueeze(1)

    def attention(self, tokens: torch.Tensor) -> torch.Tensor:
        """Eq. 2. tokens: B x L x C -> A: B x L x L (rows sum to 1)."""
        normed = self.attn_norm(tokens)
        return torch.softmax(normed @ normed.transpose(1, 2) / math.sqrt(tokens.shape[-1]), dim=-1)

    def forward(self, features: torch.Tensor, class_vectors: Optional[torch.Tensor]) -> torch.Tensor:
        """features: F_sam, B x C x h x w; class_vectors: F_text, K x C or None -> G: B x C x h x w (Eq. 3)."""
        B, C, h, w = features.shape
        if self.weighting == "spatial" and h * w != self.num_positions:
            raise ValueError(f"aligner_weighting='spatial' was built for {self.num_positions} positions, got {h}x{w}")
        tokens = features.flatten(2).transpose(1, 2)  # B x L x C
        refined = tokens + self.attention(tokens) @ tokens  # F + A F
        weighted = refined.transpose(1, 2) * self.similarity_weights(features, class_vectors)  # B x C x L
        return self.spatial_norm(self.channel_norm(weighted.reshape(B, C, h, w)))

"""One hierarchical mask decoder block of HSP-SAM (``Decoder_j`` in Eq. 2).

SAM's mask decoder (two-way transformer, 4x transposed-conv upscaling, hypernetwork MLPs) without
the IoU head (it gets no loss here; an unused head also breaks DDP). Tokens are one mask token per
nnU-Net output channel followed by the level's A-prompts. The block returns both

* the updated image embedding (``output_j``, B x D x h x w), which Eq. 2 feeds to the next level;
* mask logits from it, B x K x 4h x 4w (one per output channel), used for the prediction (level 1)
  and for deep supervision (levels 2..N).

The K hypernetwork MLPs run as one batched op (stacked weights) instead of a loop over classes.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
from segment_anything.modeling.common import LayerNorm2d
from segment_anything.modeling.transformer import TwoWayTransformer
from torch import nn


def build_output_upscaling(dim: int) -> nn.Sequential:
    """SAM's 4x mask upscaling (``mask_decoder.output_upscaling``): B x dim x h x w -> B x dim/8 x 4h x 4w."""
    return nn.Sequential(
        nn.ConvTranspose2d(dim, dim // 4, kernel_size=2, stride=2),
        LayerNorm2d(dim // 4),
        nn.GELU(),
        nn.ConvTranspose2d(dim // 4, dim // 8, kernel_size=2, stride=2),
        nn.GELU(),
    )


class BatchedMLP(nn.Module):
    """K independent MLPs applied to K tokens at once: B x K x in -> B x K x out."""

    def __init__(self, *, num_mlps: int, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int = 3
                 ) -> None:
        super().__init__()
        dims = [input_dim] + [hidden_dim] * (num_layers - 1) + [output_dim]
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for d_in, d_out in zip(dims[:-1], dims[1:]):
            w = nn.Parameter(torch.empty(num_mlps, d_in, d_out))
            nn.init.uniform_(w, -1 / math.sqrt(d_in), 1 / math.sqrt(d_in))
            self.weights.append(w)
            self.biases.append(nn.Parameter(torch.zeros(num_mlps, d_out)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: B x K x input_dim -> B x K x output_dim (ReLU between layers, as SAM's MLP)."""
        n = len(self.weights)
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            x = torch.einsum("bki,kio->bko", x, w) + b
            if i < n - 1:
                x = torch.relu(x)
        return x


class HierarchicalMaskDecoderBlock(nn.Module):
    def __init__(
        self,
        *,
        transformer_dim: int = 256,
        num_mask_tokens: int,
        transformer_depth: int = 2,
        transformer_mlp_dim: int = 2048,
        transformer_heads: int = 8,
        upscaling: bool = True,
    ) -> None:
        """
        Args:
            transformer_dim: D, the decoder width (256 in SAM).
            num_mask_tokens: K, one per nnU-Net segmentation head.
            transformer_depth / transformer_mlp_dim / transformer_heads: SAM's two-way transformer.
            upscaling: build SAM's 4x upscaling; False for a network that upsamples itself (PG-SAM's MLFF)
                and calls :meth:`attend` and :meth:`mask_logits`.
        """
        super().__init__()
        self.transformer = TwoWayTransformer(depth=transformer_depth, embedding_dim=transformer_dim,
                                             num_heads=transformer_heads, mlp_dim=transformer_mlp_dim)
        self.num_mask_tokens = num_mask_tokens
        self.mask_tokens = nn.Embedding(num_mask_tokens, transformer_dim)
        self.output_upscaling = build_output_upscaling(transformer_dim) if upscaling else None
        self.output_hypernetworks = BatchedMLP(num_mlps=num_mask_tokens, input_dim=transformer_dim,
                                               hidden_dim=transformer_dim, output_dim=transformer_dim // 8)

    def forward(self, image_embedding: torch.Tensor, image_pe: torch.Tensor,
                prompt_tokens: Optional[torch.Tensor] = None, predict_masks: bool = True
                ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """
        Args:
            image_embedding: B x D x h x w.
            image_pe: 1 x D x h x w dense positional encoding.
            prompt_tokens: c x D A-prompts of this level, or None.
            predict_masks: False skips the mask head (a level whose masks nobody uses).
        Returns:
            (output_j: B x D x h x w, mask logits: B x K x 4h x 4w, or None).
        """
        features, mask_tokens = self.attend(image_embedding, image_pe, prompt_tokens)
        if not predict_masks:
            return features, None
        return features, self.mask_logits(mask_tokens, self.output_upscaling(features))

    def attend(self, image_embedding: torch.Tensor, image_pe: torch.Tensor,
               prompt_tokens: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """The two-way transformer: (B x D x h x w, 1 x D x h x w, c x D or None) -> (updated image embedding
        B x D x h x w, mask tokens after the transformer B x K x D)."""
        B, D, h, w = image_embedding.shape
        tokens = self.mask_tokens.weight
        if prompt_tokens is not None:
            tokens = torch.cat([tokens, prompt_tokens.to(tokens.dtype)], dim=0)
        tokens = tokens.unsqueeze(0).expand(B, -1, -1)
        hs, src = self.transformer(image_embedding, image_pe, tokens)
        return src.transpose(1, 2).reshape(B, D, h, w), hs[:, : self.num_mask_tokens]

    def mask_logits(self, mask_tokens: torch.Tensor, upscaled: torch.Tensor) -> torch.Tensor:
        """Hypernetworks: mask tokens B x K x D and upscaled features B x D/8 x H x W -> logits B x K x H x W."""
        hyper_in = self.output_hypernetworks(mask_tokens)
        return (hyper_in @ upscaled.flatten(2)).view(upscaled.shape[0], self.num_mask_tokens, *upscaled.shape[2:])

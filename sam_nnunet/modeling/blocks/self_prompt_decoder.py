"""Self-Prompt-SAM's mask decoder (section 2.5): SAM's mask decoder, per class, with adapters and depth.

SAM's decoder (two-way transformer, 4x upscaling, hypernetwork) runs once per (patch, class, slice)
with that class's prompts. Changes, all additive so the official ``mask_decoder.*`` weights load:

* in every two-way attention block, an adapter after each of the two cross-attention layers
  (token -> image, on the tokens; image -> token, on the image embedding), since "each transformer
  consists of two cross-attention blocks, which we also insert DFusedAdapter". Its depth layers
  mix the same token / pixel across the D slices of a patch and class;
* a learnable depth positional embedding added to SAM's dense image positional encoding
  (zero-initialised);
* one mask per prompt, from SAM's first mask token (SAM's single-mask output). The IoU head and
  the three multi-mask hypernetworks would get no loss, so they are not built (unused parameters
  also break DDP); the IoU and mask tokens still take part in attention as in SAM.

Batch layout: the decoder batch is ``B*K*D`` with the order (patch, class, slice), slices innermost,
so the adapters' depth layers see the D slices of one patch and class together.
"""
from __future__ import annotations

from typing import Optional

import torch
from segment_anything.modeling.mask_decoder import MLP
from segment_anything.modeling.transformer import TwoWayAttentionBlock, TwoWayTransformer
from torch import Tensor, nn

from sam_nnunet.modeling.blocks.adapters import build_adapter
from sam_nnunet.modeling.blocks.mask_decoder import build_output_upscaling


class AdaptedTwoWayAttentionBlock(TwoWayAttentionBlock):
    """SAM's two-way attention block with an adapter after each cross-attention layer."""

    def __init__(self, *, adapter: str, patch_depth: int, **block_kwargs) -> None:
        super().__init__(**block_kwargs)
        dim = block_kwargs["embedding_dim"]
        self.adapter_tokens = build_adapter(adapter, dim=dim, depth=patch_depth)
        self.adapter_image = build_adapter(adapter, dim=dim, depth=patch_depth)

    def forward(self, queries: Tensor, keys: Tensor, query_pe: Tensor, key_pe: Tensor):
        """queries: M x T x C tokens, keys: M x hw x C image embedding (M = B*K*D) -> (queries, keys)."""
        if self.skip_first_layer_pe:
            queries = self.self_attn(q=queries, k=queries, v=queries)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q=q, k=q, v=queries)
        queries = self.norm1(queries)

        q = queries + query_pe
        k = keys + key_pe
        queries = queries + self.cross_attn_token_to_image(q=q, k=k, v=keys)
        if self.adapter_tokens is not None:
            queries = self.adapter_tokens(queries)
        queries = self.norm2(queries)

        queries = self.norm3(queries + self.mlp(queries))

        q = queries + query_pe
        k = keys + key_pe
        keys = keys + self.cross_attn_image_to_token(q=k, k=q, v=queries)
        if self.adapter_image is not None:
            keys = self.adapter_image(keys)
        keys = self.norm4(keys)
        return queries, keys


class SelfPromptMaskDecoder(nn.Module):
    def __init__(self, *, transformer_dim: int = 256, transformer_depth: int = 2, transformer_mlp_dim: int = 2048,
                 transformer_heads: int = 8, patch_depth: int = 1, adapter: str = "dfused",
                 depth_pos_embed: bool = True, num_multimask_outputs: int = 3) -> None:
        """
        Args:
            transformer_dim / _depth / _mlp_dim / _heads: SAM's two-way transformer (256, 2, 2048, 8).
            patch_depth: D, slices per patch.
            adapter: adapter kind in the two-way blocks.
            depth_pos_embed: add a learnable depth embedding to the image positional encoding (D > 1).
            num_multimask_outputs: SAM's 3 (its 4 mask tokens are kept; the first gives the mask).
        """
        super().__init__()
        self.patch_depth = patch_depth
        self.transformer = TwoWayTransformer(depth=transformer_depth, embedding_dim=transformer_dim,
                                             num_heads=transformer_heads, mlp_dim=transformer_mlp_dim)
        self.transformer.layers = nn.ModuleList(
            AdaptedTwoWayAttentionBlock(adapter=adapter, patch_depth=patch_depth, embedding_dim=transformer_dim,
                                        num_heads=transformer_heads, mlp_dim=transformer_mlp_dim,
                                        activation=nn.ReLU, attention_downsample_rate=2,
                                        skip_first_layer_pe=(i == 0))
            for i in range(transformer_depth)
        )
        self.iou_token = nn.Embedding(1, transformer_dim)
        self.mask_tokens = nn.Embedding(num_multimask_outputs + 1, transformer_dim)
        self.output_upscaling = build_output_upscaling(transformer_dim)
        self.output_hypernetworks_mlps = nn.ModuleList([MLP(transformer_dim, transformer_dim, transformer_dim // 8, 3)])
        self.depth_pos_embed: Optional[nn.Parameter] = None
        if depth_pos_embed and patch_depth > 1:
            self.depth_pos_embed = nn.Parameter(torch.zeros(patch_depth, transformer_dim))

    def forward(self, image_embeddings: Tensor, image_pe: Tensor, sparse_prompts: Tensor, dense_prompts: Tensor
                ) -> Tensor:
        """
        Args:
            image_embeddings: (B*D) x C x h x w, slices innermost.
            image_pe: 1 x C x h x w, SAM's dense positional encoding.
            sparse_prompts: (B*K*D) x T x C, order (patch, class, slice).
            dense_prompts: (B*K*D) x C x h x w.
        Returns:
            (B*K*D) x 1 x 4h x 4w mask logits.
        """
        BD, C, h, w = image_embeddings.shape
        D = self.patch_depth
        M = sparse_prompts.shape[0]
        if BD % D or M % BD:
            raise ValueError(f"{BD} slices and {M} prompts do not fit patch depth {D}")
        K = M // BD
        src = image_embeddings.view(BD // D, 1, D, C, h, w).expand(-1, K, -1, -1, -1, -1).reshape(M, C, h, w)
        src = src + dense_prompts
        pos = image_pe.expand(D, -1, -1, -1)
        if self.depth_pos_embed is not None:
            pos = pos + self.depth_pos_embed.view(D, C, 1, 1)
        pos = pos.unsqueeze(0).expand(M // D, -1, -1, -1, -1).reshape(M, C, h, w)

        output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        tokens = torch.cat([output_tokens.unsqueeze(0).expand(M, -1, -1), sparse_prompts], dim=1)
        hs, src = self.transformer(src, pos, tokens)
        upscaled = self.output_upscaling(src.transpose(1, 2).reshape(M, C, h, w))
        hyper = self.output_hypernetworks_mlps[0](hs[:, 1])  # first mask token: SAM's single-mask output
        return (hyper.unsqueeze(1) @ upscaled.flatten(2)).view(M, 1, *upscaled.shape[-2:])

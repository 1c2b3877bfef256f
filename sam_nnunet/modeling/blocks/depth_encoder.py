"""Self-Prompt-SAM's image encoder (section 2.2): SAM's ViT on the D slices of a patch, with adapters.

The D slices of each 3D patch run through SAM's ViT as a batch of ``B*D`` images (depth innermost).
Two additions make it see depth:

* a learnable **depth positional embedding** (one C-vector per slice index, zero-initialised so a
  pretrained encoder starts unchanged) added to the tokens after SAM's absolute position embedding;
* **adapters** in every block, AIM style (the paper follows AIM): one after multi-head
  self-attention, on the residual stream (with its own skip), and one in parallel to the MLP, whose
  output is added to the MLP's with AIM's scale 0.5. Their kind is a Table 4 switch
  (:func:`~sam_nnunet.modeling.blocks.adapters.build_adapter`): the full model uses the DFusedAdapter.

The blocks are segment-anything ``Block`` subclasses: checkpoint keys stay the official ones
(``blocks.{i}.attn.qkv.weight`` ...) and the adapters add ``blocks.{i}.adapter_attn.*`` /
``adapter_mlp.*``. ``forward`` returns feature maps of 4 blocks at evenly spaced depths (for ViT-B
blocks 2, 5, 8, 11, SAM's global-attention blocks) for the prompt generator; the last is the encoder
output that SAM's neck turns into the mask decoder's image embedding.
"""
from __future__ import annotations

from functools import partial
from typing import List, Optional, Sequence, Tuple

import torch
from segment_anything.modeling.image_encoder import Block, window_partition, window_unpartition
from torch import nn

from sam_nnunet.modeling.blocks.adapters import build_adapter
from sam_nnunet.modeling.blocks.image_encoder import SAMImageEncoder


def feature_block_indexes(depth: int, count: int = 4) -> Tuple[int, ...]:
    """Blocks whose outputs feed the prompt generator: the last of each of ``count`` equal groups."""
    if depth < count:
        raise ValueError(f"the encoder needs at least {count} blocks for the prompt generator, has {depth}")
    return tuple(depth * (k + 1) // count - 1 for k in range(count))


class AdaptedBlock(Block):
    """segment-anything ``Block`` with an adapter after attention and one in parallel to the MLP."""

    def __init__(self, *, adapter: str, patch_depth: int, mlp_adapter_scale: float = 0.5, index: int = 0,
                 **block_kwargs) -> None:
        """
        Args:
            adapter: kind, see :data:`~sam_nnunet.modeling.blocks.adapters.ADAPTER_KINDS`.
            patch_depth: D, slices per patch (depth layers of the adapters).
            mlp_adapter_scale: weight of the MLP-parallel adapter (AIM: 0.5).
            index: position in the encoder (unused).
            block_kwargs: segment-anything ``Block`` arguments.
        """
        super().__init__(**block_kwargs)
        dim = block_kwargs["dim"]
        self.adapter_attn = build_adapter(adapter, dim=dim, depth=patch_depth, skip=True)
        self.adapter_mlp = build_adapter(adapter, dim=dim, depth=patch_depth, skip=False)
        self.mlp_adapter_scale = mlp_adapter_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B*D) x H x W x C -> (B*D) x H x W x C."""
        shortcut = x
        x = self.norm1(x)
        if self.window_size > 0:
            H, W = x.shape[1], x.shape[2]
            x, pad_hw = window_partition(x, self.window_size)
        x = self.attn(x)
        if self.window_size > 0:
            x = window_unpartition(x, self.window_size, pad_hw, (H, W))
        x = shortcut + x
        if self.adapter_attn is not None:
            x = self.adapter_attn(x)
        xn = self.norm2(x)
        out = x + self.mlp(xn)
        if self.adapter_mlp is not None:
            out = out + self.mlp_adapter_scale * self.adapter_mlp(xn)
        return out


class DepthAdaptedImageEncoder(SAMImageEncoder):
    def __init__(self, *, patch_depth: int = 1, adapter: str = "dfused", depth_pos_embed: bool = True,
                 num_feature_maps: int = 4, **encoder_kwargs) -> None:
        """
        Args:
            patch_depth: D, slices per patch (1 for 2D: depth parts off).
            adapter: adapter kind in every block.
            depth_pos_embed: learnable depth positional embedding (needs D > 1).
            num_feature_maps: feature maps returned for the prompt generator.
            encoder_kwargs: :class:`SAMImageEncoder` arguments (size of the ViT, img_size, in_chans).
        """
        depth = encoder_kwargs.get("depth", 12)
        super().__init__(out_indexes=feature_block_indexes(depth, num_feature_maps),
                         block_factory=partial(AdaptedBlock, adapter=adapter, patch_depth=patch_depth),
                         **encoder_kwargs)
        self.patch_depth = patch_depth
        self.depth_pos_embed: Optional[nn.Parameter] = None
        if depth_pos_embed and patch_depth > 1:
            self.depth_pos_embed = nn.Parameter(torch.zeros(patch_depth, self.embed_dim))

    def forward(self, x: torch.Tensor, prompts: Optional[Sequence] = None) -> List[torch.Tensor]:
        """x: (B*D) x in_chans x H x W (depth innermost) -> 4 maps, each (B*D) x H/16 x W/16 x C."""
        if prompts is not None:
            raise ValueError("the Self-Prompt-SAM encoder takes no prompt tokens")
        if x.shape[0] % self.patch_depth:
            raise ValueError(f"batch of {x.shape[0]} slices is not a multiple of the patch depth {self.patch_depth}")
        tokens = self.embed(x)
        if self.depth_pos_embed is not None:
            N, h, w, C = tokens.shape
            tokens = (tokens.view(-1, self.patch_depth, h, w, C) + self.depth_pos_embed.view(1, -1, 1, 1, C)
                      ).view(N, h, w, C)
        return self.run_blocks(tokens)

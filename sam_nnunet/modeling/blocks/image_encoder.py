"""SAM's ViT image encoder for nnU-Net patches, with prompt tokens at the global-attention blocks.

Built from segment-anything's own ``PatchEmbed`` and ``Block`` so that parameter names match the
official checkpoints (``patch_embed.proj``, ``pos_embed``, ``blocks.{i}.attn.qkv`` ...). What
differs from ``segment_anything.modeling.ImageEncoderViT``:

* the input size is the plans' patch size (any multiple of the ViT patch size, not only 1024x1024
  and not only square): the absolute position embedding is built for that token grid, and the
  relative position tables of the global blocks for its height and width
  (:func:`resize_pos_embed` / :func:`resize_rel_pos` convert pretrained ones);
* ``in_chans`` is the number of image channels nnU-Net gives (1 for MRI/CT, 3 for RGB); a
  pretrained RGB patch embedding is mapped onto it when a checkpoint is loaded
  (``checkpoint.adapt_patch_embed``);
* ``forward`` returns the output of every global-attention block (the ``embedding_j`` of HSP-SAM
  Eq. 2), not the neck output: HSP-SAM has one neck per level;
* a global block can attend together with extra prompt tokens (HSP-SAM's Q-prompts,
  :class:`PromptableBlock`), either given to that block alone and dropped at its output
  (``forward(x, prompts=[...])``: one set per global block) or joined once to the encoder's input
  tokens and carried through it (``forward(x, input_prompts=...)``): windowed blocks cannot attend
  to tokens that have no place in a window, so there the prompt tokens pass unchanged and every
  global block updates them (attention + MLP) together with the image tokens.
"""
from __future__ import annotations

from functools import partial
from typing import Callable, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from segment_anything.modeling.common import LayerNorm2d
from segment_anything.modeling.image_encoder import Block, PatchEmbed, add_decomposed_rel_pos
from torch import nn


class PromptableBlock(Block):
    """segment-anything ViT block; a global-attention block may also take ``c`` prompt tokens.

    The prompt tokens are concatenated to the ``H*W`` image tokens, go through this block's
    attention and MLP with them, and are dropped at its output (VPT-deep style): they steer what the
    image tokens attend to. Relative position bias applies between image tokens only; pairs that
    involve a prompt token get none (prompts have no position).
    """

    def __init__(self, *, index: int = 0, **block_kwargs) -> None:
        """index: position in the encoder (unused here); block_kwargs: segment-anything ``Block``'s."""
        super().__init__(**block_kwargs)

    def forward(self, x: torch.Tensor, prompts: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x: B x H x W x C; prompts: c x C (or B x c x C) or None -> B x H x W x C (prompts dropped)."""
        if prompts is None:
            return super().forward(x)
        return self.forward_with_prompts(x, prompts)[0]

    def forward_with_prompts(self, x: torch.Tensor, prompts: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """x: B x H x W x C; prompts: c x C or B x c x C -> (B x H x W x C, updated prompts B x c x C)."""
        if self.window_size > 0:
            raise ValueError("prompt tokens are only supported in global-attention blocks")
        B, H, W, C = x.shape
        prompts = prompts.to(x.dtype)
        if prompts.ndim == 2:
            prompts = prompts.unsqueeze(0).expand(B, -1, -1)
        tokens = torch.cat([x.reshape(B, H * W, C), prompts], dim=1)
        tokens = tokens + self._attend(self.norm1(tokens), (H, W))
        tokens = tokens + self.mlp(self.norm2(tokens))
        return tokens[:, : H * W].reshape(B, H, W, C), tokens[:, H * W:]

    def _attend(self, tokens: torch.Tensor, hw: Tuple[int, int]) -> torch.Tensor:
        """tokens: B x (H*W + c) x C (image tokens first) -> B x (H*W + c) x C."""
        attn = self.attn
        B, N, C = tokens.shape
        L = hw[0] * hw[1]
        heads = attn.num_heads
        q, k, v = attn.qkv(tokens).reshape(B, N, 3, heads, C // heads).permute(2, 0, 3, 1, 4).unbind(0)
        bias = None
        if attn.use_rel_pos:
            q_img = q[:, :, :L].reshape(B * heads, L, -1)
            spatial = add_decomposed_rel_pos(q_img.new_zeros(B * heads, L, L), q_img,
                                             attn.rel_pos_h, attn.rel_pos_w, hw, hw)
            bias = q.new_zeros(B, heads, N, N)
            bias[:, :, :L, :L] = spatial.view(B, heads, L, L)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)  # scale = head_dim ** -0.5
        return attn.proj(out.transpose(1, 2).reshape(B, N, C))


def build_sam_neck(in_dim: int, out_dim: int) -> nn.Sequential:
    """SAM's neck (``image_encoder.neck`` in the checkpoints): B x in_dim x h x w -> B x out_dim x h x w."""
    return nn.Sequential(
        nn.Conv2d(in_dim, out_dim, kernel_size=1, bias=False),
        LayerNorm2d(out_dim),
        nn.Conv2d(out_dim, out_dim, kernel_size=3, padding=1, bias=False),
        LayerNorm2d(out_dim),
    )


def resize_pos_embed(pos_embed: torch.Tensor, grid: Tuple[int, int]) -> torch.Tensor:
    """Bicubic resize of an absolute position embedding, 1 x h x w x C -> 1 x grid[0] x grid[1] x C."""
    if tuple(pos_embed.shape[1:3]) == tuple(grid):
        return pos_embed
    resized = F.interpolate(pos_embed.permute(0, 3, 1, 2).float(), size=tuple(grid), mode="bicubic",
                            align_corners=False)
    return resized.permute(0, 2, 3, 1).to(pos_embed.dtype)


def resize_rel_pos(rel_pos: torch.Tensor, length: int) -> torch.Tensor:
    """Linear resize of a relative position table, (2s-1) x C -> length x C (as SAM's get_rel_pos)."""
    if rel_pos.shape[0] == length:
        return rel_pos
    resized = F.interpolate(rel_pos.float().t().unsqueeze(0), size=length, mode="linear")
    return resized.squeeze(0).t().to(rel_pos.dtype)


class SAMImageEncoder(nn.Module):
    def __init__(
        self,
        *,
        img_size: Tuple[int, int] = (1024, 1024),
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        window_size: int = 14,
        global_attn_indexes: Sequence[int] = (2, 5, 8, 11),
        use_rel_pos: bool = True,
        out_indexes: Optional[Sequence[int]] = None,
        block_factory: Callable[..., Block] = PromptableBlock,
    ) -> None:
        """
        Args:
            img_size: (H, W) of the input; each must be a multiple of ``patch_size``.
            patch_size: ViT patch size (16 for all SAM encoders).
            in_chans: image channels given by nnU-Net.
            embed_dim / depth / num_heads / mlp_ratio: ViT size (see ``registry.ENCODERS``).
            window_size: window of the local-attention blocks (14 in SAM).
            global_attn_indexes: blocks with global attention; their outputs are returned.
            use_rel_pos: decomposed relative position bias in attention (True in SAM).
            out_indexes: blocks whose outputs ``forward`` returns (default: the global blocks).
            block_factory: builds block i from segment-anything ``Block`` arguments (plus ``index=i``);
                subclasses of ``Block`` with extra parts (adapters) keep the official parameter names.
        """
        super().__init__()
        if img_size[0] % patch_size or img_size[1] % patch_size:
            raise ValueError(f"img_size {tuple(img_size)} must be a multiple of the patch size {patch_size}")
        if not global_attn_indexes or max(global_attn_indexes) != depth - 1:
            raise ValueError("the last block must use global attention (HSP-SAM's embedding_N is the encoder output)")
        self.patch_size = patch_size
        self.grid_size = (img_size[0] // patch_size, img_size[1] // patch_size)
        self.global_attn_indexes = tuple(sorted(global_attn_indexes))
        self.out_indexes = tuple(sorted(out_indexes)) if out_indexes is not None else self.global_attn_indexes
        self.patch_embed = PatchEmbed(kernel_size=(patch_size, patch_size), stride=(patch_size, patch_size),
                                      in_chans=in_chans, embed_dim=embed_dim)
        # Zero-initialised in SAM because weights always come from a checkpoint; without one the
        # encoder trains from scratch and needs a non-degenerate position signal.
        self.pos_embed = nn.Parameter(torch.zeros(1, *self.grid_size, embed_dim))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.blocks = nn.ModuleList(
            block_factory(
                index=i,
                dim=embed_dim,
                num_heads=num_heads,
                mlp_ratio=mlp_ratio,
                qkv_bias=True,
                norm_layer=partial(nn.LayerNorm, eps=1e-6),
                act_layer=nn.GELU,
                use_rel_pos=use_rel_pos,
                rel_pos_zero_init=True,
                window_size=0 if i in self.global_attn_indexes else window_size,
                input_size=self.grid_size,
            )
            for i in range(depth)
        )

    @property
    def embed_dim(self) -> int:
        return self.pos_embed.shape[-1]

    def forward(self, x: torch.Tensor, prompts: Optional[Sequence[Optional[torch.Tensor]]] = None,
                input_prompts: Optional[torch.Tensor] = None) -> List[torch.Tensor]:
        """x: B x in_chans x H x W.

        Args:
            prompts: one (c x embed_dim or None) per global block, used by that block only.
            input_prompts: P x embed_dim tokens joined to the input tokens and carried through every
                global block (windowed blocks pass them unchanged). At most one of the two.
        Returns the outputs of the blocks in ``out_indexes``, each B x H/16 x W/16 x embed_dim.
        """
        if prompts is not None and len(prompts) != len(self.global_attn_indexes):
            raise ValueError(f"expected {len(self.global_attn_indexes)} prompt sets, got {len(prompts)}")
        if prompts is not None and input_prompts is not None:
            raise ValueError("give prompts per global block or input prompts, not both")
        return self.run_blocks(self.embed(x), prompts, input_prompts)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Patch embedding + absolute position: B x in_chans x H x W -> B x H/16 x W/16 x embed_dim."""
        x = self.patch_embed(x)
        return x + resize_pos_embed(self.pos_embed, tuple(x.shape[1:3]))

    def run_blocks(self, x: torch.Tensor, prompts: Optional[Sequence[Optional[torch.Tensor]]] = None,
                   input_prompts: Optional[torch.Tensor] = None) -> List[torch.Tensor]:
        """The transformer blocks on embedded tokens; returns the ``out_indexes`` outputs."""
        outputs: List[torch.Tensor] = []
        carried = input_prompts
        for i, block in enumerate(self.blocks):
            if i in self.global_attn_indexes and carried is not None:
                x, carried = block.forward_with_prompts(x, carried)
            elif prompts is not None and i in self.global_attn_indexes:
                x = block(x, prompts[self.global_attn_indexes.index(i)])
            else:
                x = block(x)
            if i in self.out_indexes:
                outputs.append(x)
        return outputs


def build_lora_encoder(cfg, *, img_size: Sequence[int], in_chans: int, lora_rank: int,
                       lora_targets: Sequence[str] = ("qkv",), out_indexes: Optional[Sequence[int]] = None
                       ) -> SAMImageEncoder:
    """The SAM ViT of a ``registry.EncoderConfig`` for a patch (padded to the ViT patch size), with LoRA of
    ``lora_rank`` on every block (0: none), as HSP-SAM and PG-SAM use it."""
    from sam_nnunet.modeling.common import padded_size
    from sam_nnunet.modeling.blocks.lora import apply_lora

    if lora_rank < 0:
        raise ValueError(f"lora_rank must be >= 0 (0: no LoRA, encoder fine-tuned in full), got {lora_rank}")
    encoder = SAMImageEncoder(
        img_size=padded_size(img_size, cfg.patch_size), patch_size=cfg.patch_size, in_chans=in_chans,
        embed_dim=cfg.embed_dim, depth=cfg.depth, num_heads=cfg.num_heads, window_size=cfg.window_size,
        global_attn_indexes=cfg.global_attn_indexes, out_indexes=out_indexes,
    )
    if lora_rank > 0:
        apply_lora(encoder.blocks, rank=lora_rank, targets=lora_targets)
    return encoder

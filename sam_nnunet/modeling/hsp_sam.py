"""HSP-SAM: Hierarchical Self-Prompting SAM (shared/papers/000, sections 3.2-3.4), as an nnU-Net network.

Composition (each part its own module):

* ``encoder``: SAM ViT (:class:`SAMImageEncoder`) with LoRA on every block (:mod:`.lora`);
* ``prompts[j]``: Q&A prompt pairs of global layer j (:class:`QAPromptPairs`): Q_j joins the tokens of
  encoder global block j, A_j = MLP_j(f_j(Q_j)) goes to decoder j;
* ``necks[j]``: SAM neck mapping embedding_j (d_I) to decoder width d_D;
* ``decoders[j]``: :class:`HierarchicalMaskDecoderBlock`, wired as Eq. 2::

      output_N = Decoder_N(neck_N(embedding_N), A_N)
      output_i = Decoder_i(output_{i+1} + neck_i(embedding_i) + output_N, A_i),  i = N-1 .. 1

Levels are numbered 1..N from the shallowest global block; level 1 gives the prediction.

Ablation switches (paper Table 5, rows in ``trainers/HSPSAMTrainer.py``): ``qa_prompts`` (Q&A pairs),
``hierarchical`` (N decoders; off: one decoder on the last embedding), ``skip_connections`` (the
``+ output_N`` term; off: output_i = Decoder_i(output_{i+1} + neck_i(embedding_i), A_i)) and
``lora_rank`` (0: no LoRA, the encoder is fine-tuned in full even when pretrained: Table 5's Ft-SAM).

Where Q_j enters the encoder (``q_prompts_at``; section 3.3 says the Q-prompts "are concatenated with
the input of the image encoder", section 3.4 gives each global layer j its own Q_j):

* ``"blocks"`` (default): Q_j joins the tokens of global block j only and is dropped at its output
  (VPT-deep style). Each level's Q_j then acts where its embedding_j is taken, which is what the
  per-layer sets of section 3.4 are for; with ``hierarchical`` off the single Q set prompts the last
  global block.
* ``"input"``: all Q_1..Q_N (N*c tokens) are concatenated with the encoder's input tokens once and
  carried through the encoder (VPT-shallow style, the literal reading of section 3.3). SAM's
  windowed blocks have no window for prompt tokens, so they pass there unchanged and are updated by
  every global block. A_j = MLP_j(f_j(Q_j)) still comes from the learnable Q_j (Eq. 2).

The default stays ``"blocks"``: it is the reading under which the per-layer Q_j of Eq. 2 differ in
role, it needs no choice about windowed blocks, and it is the variant every recorded figure used; no
run here was long enough to rank the two (``HSPSAMTrainer_QInput`` trains the other).

A TinyViT encoder (``light_encoder``, e.g. ``"tiny_vit_litemedsam"``: LiteMedSAM's prior, plans preset
``cpu_hsp_medsam``), with LoRA on the qkv projection of every attention block (frozen base, as the paper freezes
SAM's ViT). HSP-SAM's levels assume a plain ViT: N global-attention blocks whose embeddings share one grid, so that
Eq. 2 can add them. A TinyViT has no global block; its attention is windowed in four stages, and only the last two
stages share a grid (1/4 of the input for LiteMedSAM's stride-1 stem, 1/16 for MobileSAM's). Choices, made where
the ViT reading carries over:

* the levels are the outputs of the last two stages (before the patch merging; 160 and 320 channels for
  LiteMedSAM), shallowest first, so N = 2 as for the CPU ViTs; ``hierarchical`` off keeps the last stage only;
* Q_j joins the attention of the *last block* of level j's stage (VPT-deep at the block whose output is
  embedding_j, as ``"blocks"`` does for a global block): its tokens go through that block's own norm and qkv and
  every window attends to them as extra keys and values; their outputs are dropped, as in the ViT, where A_j does
  not depend on them either. ``q_prompts_at="input"`` has no TinyViT reading (windows have no place for carried
  tokens) and is refused;
* LoRA targets ``qkv`` (default) and ``proj`` exist in TinyViT blocks; the MBConv stage has no attention and no
  LoRA, and its convolutions stay frozen with the rest of the file's tensors (batch norms keep their statistics);
* ``input_scaling`` and ``encoder_scale`` adapt nnU-Net's input to the prior as ESP-MedSAM does
  (:func:`~.litemedsam.encoder_input`); the masks come out at 4x the embedding grid and are resized to the input.

The file's neck goes to the deepest level's neck, its two-way transformer and upscaling to every level's decoder
and its positional encoding to ``pe_layer`` (:meth:`HSPSAM.sam_key_map`), as for SAM's ViT files.

nnU-Net integration choices:

* Outputs: one mask token per nnU-Net segmentation head (background + classes, or one per region).
  The number of Q&A pairs ``num_prompts`` defaults to the number of segmentation targets c
  (foreground classes or regions), as the paper sets it.
* Mask logits come out at 4x the token grid (SAM's upscaling) and are resized bilinearly to the
  input size, as SAM's postprocessing does.
* Deep supervision: with ``deep_supervision`` on, ``forward`` returns ``[logits_1, ..., logits_N]``,
  all at full resolution (the trainer gives nnU-Net matching full-resolution targets and weights
  1, 1/2, 1/4 ...); off, it returns ``logits_1`` only. The parameters are the same either way.
* Input sizes that are not a multiple of 16 are zero-padded and the logits cropped back.
* 5D input (3d_fullres patches, B x C x D x H x W) runs slice by slice (slices folded into the batch);
  HSP-SAM itself is a 2D method.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from segment_anything.modeling.prompt_encoder import PositionEmbeddingRandom
from torch import nn

from sam_nnunet.modeling.weights.checkpoint import LoadReport, freeze_pretrained_encoder, load_sam_checkpoint
from sam_nnunet.modeling.common import Outputs, slices_for_vit, top_level_part, trainable_by_part, unfold_depth
from sam_nnunet.modeling.blocks.image_encoder import build_lora_encoder, build_sam_neck
from sam_nnunet.modeling.blocks.light_encoder import build_lora_tinyvit, image_encoder_key, load_light_checkpoint
from sam_nnunet.modeling.litemedsam import check_encoder_input, encoder_input, encoder_stride
from sam_nnunet.modeling.blocks.mask_decoder import HierarchicalMaskDecoderBlock
from sam_nnunet.modeling.blocks.qa_prompts import QAPromptPairs
from sam_nnunet.modeling.blocks.registry import get_encoder_config, get_light_encoder_config


class HSPSAM(nn.Module):
    def __init__(
        self,
        *,
        num_input_channels: int,
        num_classes: int,
        img_size: Sequence[int],
        encoder: str = "vit_b",
        num_prompts: Optional[int] = None,
        lora_rank: int = 32,
        lora_targets: Sequence[str] = ("qkv",),
        qa_prompts: bool = True,
        q_prompts_at: str = "blocks",
        hierarchical: bool = True,
        skip_connections: bool = True,
        light_encoder: Optional[str] = None,
        input_scaling: str = "none",
        encoder_scale: float = 1.0,
        deep_supervision: bool = True,
    ) -> None:
        """
        Args:
            num_input_channels: image channels from nnU-Net.
            num_classes: nnU-Net segmentation heads (``label_manager.num_segmentation_heads``).
            img_size: patch size (H, W) of one slice; padded up to a multiple of 16 internally.
            encoder: name in ``registry.ENCODERS`` (vit_b, vit_l, vit_h, vit_small, vit_tiny).
            num_prompts: Q&A pairs per level (default: segmentation targets, ``num_classes - 1``, at least 1).
            lora_rank / lora_targets: LoRA on every encoder block (rank 32, qkv in the paper's setup);
                rank 0: no LoRA, and the encoder is trained in full even with a checkpoint (Ft-SAM).
            qa_prompts / hierarchical / skip_connections: the paper's ablation switches.
            q_prompts_at: "blocks" (Q_j at global block j) or "input" (all Q at the encoder input).
            light_encoder: ``registry.LIGHT_ENCODERS`` name of a TinyViT used instead of the ViT ``encoder`` (see the
                module docstring), or None.
            input_scaling / encoder_scale: how the input is adapted to a pretrained TinyViT (as ESP-MedSAM's:
                ``"unit_range"`` rescales each sample and channel to [0, 1]; the TinyViT sees the input resized by s).
            deep_supervision: return all levels' logits (list) instead of only level 1's.
        """
        super().__init__()
        if q_prompts_at not in ("blocks", "input"):
            raise ValueError(f"q_prompts_at must be 'blocks' or 'input', got {q_prompts_at!r}")
        self.light = light_encoder is not None
        check_encoder_input(input_scaling, encoder_scale, self.light)
        cfg = get_light_encoder_config(light_encoder) if self.light else get_encoder_config(encoder)
        self.encoder_name = light_encoder or encoder
        self.num_input_channels = num_input_channels
        self.num_classes = num_classes
        self.hierarchical = hierarchical
        self.skip_connections = skip_connections
        self.deep_supervision = deep_supervision
        self.q_prompts_at = q_prompts_at
        self.lora_rank = lora_rank
        self.input_scaling = input_scaling
        self.encoder_scale = float(encoder_scale)
        if self.light:
            if q_prompts_at != "blocks":
                raise ValueError("q_prompts_at='input' needs a plain ViT (carried tokens have no place in TinyViT's "
                                 "windows); a TinyViT takes 'blocks'")
            self.encoder = build_lora_tinyvit(cfg, in_chans=num_input_channels, lora_rank=lora_rank,
                                              lora_targets=lora_targets)
            level_dims = list(cfg.embed_dims[-2:] if hierarchical else cfg.embed_dims[-1:])  # the last two stages
        else:
            self.encoder = build_lora_encoder(cfg, img_size=img_size, in_chans=num_input_channels, lora_rank=lora_rank,
                                              lora_targets=lora_targets)
            level_dims = [cfg.embed_dim] * (len(cfg.global_attn_indexes) if hierarchical else 1)
        self.patch_size = encoder_stride(cfg.patch_size, self.encoder_scale)  # input pixels per embedding pixel

        self.num_levels = len(level_dims)
        self.num_prompts = num_prompts if num_prompts is not None else max(num_classes - 1, 1)
        self.necks = nn.ModuleList(build_sam_neck(d, cfg.decoder_dim) for d in level_dims)
        self.prompts = nn.ModuleList(
            QAPromptPairs(num_prompts=self.num_prompts, encoder_dim=d, decoder_dim=cfg.decoder_dim)
            for d in level_dims
        ) if qa_prompts else None
        self.decoders = nn.ModuleList(
            HierarchicalMaskDecoderBlock(transformer_dim=cfg.decoder_dim, num_mask_tokens=num_classes,
                                         transformer_depth=cfg.decoder_depth,
                                         transformer_mlp_dim=cfg.decoder_mlp_dim,
                                         transformer_heads=cfg.decoder_heads)
            for _ in range(self.num_levels)
        )
        # SAM's dense positional encoding (prompt_encoder.pe_layer in the checkpoints).
        self.pe_layer = PositionEmbeddingRandom(cfg.decoder_dim // 2)

    def _encoder_prompts(self, q: List[torch.Tensor]) -> Optional[List[Optional[torch.Tensor]]]:
        """Q-prompts per encoder global block (per attention stage of a TinyViT); those without a decoder level get
        none."""
        if self.prompts is None:
            return None
        slots = len(self.encoder.layers) - 1 if self.light else len(self.encoder.global_attn_indexes)
        return [None] * (slots - self.num_levels) + q

    def embed(self, x: torch.Tensor, q: Optional[List[torch.Tensor]]) -> List[torch.Tensor]:
        """embedding_1 .. embedding_N (each B x h x w x d_I_j) of padded slices x, with the Q-prompts ``q`` (or None)."""
        if self.light:
            prompts = self._encoder_prompts(q) if q is not None else None
            stages = self.encoder.forward_stages(encoder_input(x, self.input_scaling, self.encoder_scale),
                                                 prompts=prompts)
            return stages[-self.num_levels:]
        if q is not None and self.q_prompts_at == "input":
            embeddings = self.encoder(x, input_prompts=torch.cat(q, dim=0))
        else:
            embeddings = self.encoder(x, self._encoder_prompts(q) if q is not None else None)
        return embeddings[-self.num_levels:]

    def decode(self, embeddings: List[torch.Tensor], answers: Optional[List[torch.Tensor]],
               all_masks: bool = True) -> Tuple[List[torch.Tensor], List[Optional[torch.Tensor]]]:
        """Eq. 2 over the levels.

        Args:
            embeddings: the ``num_levels`` deepest global-block outputs, each B x h x w x d_I,
                shallowest first (embedding_1 .. embedding_N).
            answers: A_1 .. A_N (each c x d_D) or None.
            all_masks: mask logits for every level (deep supervision); False: level 1 only.
        Returns:
            (features output_1..output_N, each B x d_D x h x w; mask logits 1..N, each B x K x 4h x 4w,
            None for levels not asked for).
        """
        n = self.num_levels
        pe = self.pe_layer(tuple(embeddings[0].shape[1:3])).unsqueeze(0).to(embeddings[0].dtype)
        features: List[Optional[torch.Tensor]] = [None] * n
        masks: List[Optional[torch.Tensor]] = [None] * n
        for i in reversed(range(n)):
            x = self.necks[i](embeddings[i].permute(0, 3, 1, 2))
            if i < n - 1:
                x = x + features[i + 1]
                if self.skip_connections:
                    x = x + features[n - 1]
            features[i], masks[i] = self.decoders[i](x, pe, answers[i] if answers is not None else None,
                                                     predict_masks=all_masks or i == 0)
        return features, masks

    def forward(self, x: torch.Tensor) -> Outputs:
        """x: B x C x H x W (2d) or B x C x D x H x W (3d, slice-wise).

        Returns B x K x H(xD) x W logits, or a list of N such tensors (level 1 first) with deep supervision.
        """
        x, depth, (H, W) = slices_for_vit(self, x)

        q = a = None
        if self.prompts is not None:
            q, a = map(list, zip(*(p() for p in self.prompts)))
        _, masks = self.decode(self.embed(x, q), a, all_masks=self.deep_supervision)

        out = []
        for m in masks if self.deep_supervision else masks[:1]:
            m = F.interpolate(m, size=x.shape[-2:], mode="bilinear", align_corners=False)[..., :H, :W]
            out.append(unfold_depth(m, depth) if depth is not None else m)
        return out if self.deep_supervision else out[0]

    def deep_supervision_scales(self, ndim: int) -> List[List[float]]:
        """nnU-Net target scale per output: every level's logits are full resolution."""
        return [[1.0] * ndim for _ in range(self.num_levels)]

    def load_pretrained(self, path) -> LoadReport:
        """A SAM / MedSAM ViT file (:func:`~.checkpoint.load_sam_checkpoint`), or for a TinyViT encoder a file in
        MobileSAM's layout (LiteMedSAM's, :func:`~.light_encoder.load_light_checkpoint`)."""
        return load_light_checkpoint(self, path) if self.light else load_sam_checkpoint(self, path)

    def freeze_pretrained(self, report: LoadReport) -> Tuple[int, int]:
        """Freeze the encoder tensors the checkpoint supplied (the paper: encoder frozen, LoRA trained).

        LoRA factors and encoder tensors the file lacked (``report.not_supplied``) are trained; necks,
        prompts and decoders always train. Without LoRA (``lora_rank=0``, Ft-SAM) nothing is frozen.
        Returns (frozen, trainable) encoder parameter counts.
        """
        return freeze_pretrained_encoder(self, report)

    def trainable_parts(self) -> dict:
        """Trainable parameter count per part (what Table 5's "Params" column counts)."""
        def part_of(name: str) -> str:
            part = top_level_part(name)
            return part if part.startswith("encoder") or part == "necks" else (
                "qa_prompts" if part == "prompts" else "decoders")

        return trainable_by_part(self, ("encoder (LoRA)", "encoder (other)", "necks", "qa_prompts", "decoders"),
                                 part_of)

    def sam_key_map(self, key: str) -> List[str]:
        """Where a tensor of an official SAM checkpoint goes in this network (empty: not used).

        The image encoder maps one to one; SAM's neck becomes the deepest level's neck; the mask
        decoder's two-way transformer and upscaling initialise every level's decoder; the dense
        positional encoding goes to ``pe_layer``. SAM's mask tokens, hypernetworks, IoU head and
        point/box embeddings have no counterpart (class heads here are task-specific).
        """
        if key.startswith("image_encoder.neck."):
            return [f"necks.{self.num_levels - 1}.{key[len('image_encoder.neck.'):]}"]
        if key.startswith("image_encoder."):
            return image_encoder_key(key, self.light)
        if key == "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix":
            return ["pe_layer.positional_encoding_gaussian_matrix"]
        for part in ("transformer.", "output_upscaling."):
            if key.startswith("mask_decoder." + part):
                rest = key[len("mask_decoder."):]
                return [f"decoders.{j}.{rest}" for j in range(self.num_levels)]
        return []

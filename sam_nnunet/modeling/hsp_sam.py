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

from .checkpoint import LoadReport, freeze_pretrained_encoder
from .common import Outputs, slices_for_vit, unfold_depth
from .image_encoder import build_lora_encoder, build_sam_neck
from .mask_decoder import HierarchicalMaskDecoderBlock
from .qa_prompts import QAPromptPairs
from .registry import get_encoder_config


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
            deep_supervision: return all levels' logits (list) instead of only level 1's.
        """
        super().__init__()
        if q_prompts_at not in ("blocks", "input"):
            raise ValueError(f"q_prompts_at must be 'blocks' or 'input', got {q_prompts_at!r}")
        cfg = get_encoder_config(encoder)
        self.encoder_name = encoder
        self.num_input_channels = num_input_channels
        self.patch_size = cfg.patch_size
        self.num_classes = num_classes
        self.hierarchical = hierarchical
        self.skip_connections = skip_connections
        self.deep_supervision = deep_supervision
        self.q_prompts_at = q_prompts_at
        self.lora_rank = lora_rank
        self.encoder = build_lora_encoder(cfg, img_size=img_size, in_chans=num_input_channels, lora_rank=lora_rank,
                                          lora_targets=lora_targets)

        self.num_levels = len(cfg.global_attn_indexes) if hierarchical else 1
        self.num_prompts = num_prompts if num_prompts is not None else max(num_classes - 1, 1)
        self.necks = nn.ModuleList(build_sam_neck(cfg.embed_dim, cfg.decoder_dim) for _ in range(self.num_levels))
        self.prompts = nn.ModuleList(
            QAPromptPairs(num_prompts=self.num_prompts, encoder_dim=cfg.embed_dim, decoder_dim=cfg.decoder_dim)
            for _ in range(self.num_levels)
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
        """Q-prompts per encoder global block; blocks without a decoder level get none."""
        if self.prompts is None:
            return None
        n_global = len(self.encoder.global_attn_indexes)
        return [None] * (n_global - self.num_levels) + q

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
        if q is not None and self.q_prompts_at == "input":
            embeddings = self.encoder(x, input_prompts=torch.cat(q, dim=0))
        else:
            embeddings = self.encoder(x, self._encoder_prompts(q) if q is not None else None)
        _, masks = self.decode(embeddings[-self.num_levels:], a, all_masks=self.deep_supervision)

        out = []
        for m in masks if self.deep_supervision else masks[:1]:
            m = F.interpolate(m, size=x.shape[-2:], mode="bilinear", align_corners=False)[..., :H, :W]
            out.append(unfold_depth(m, depth) if depth is not None else m)
        return out if self.deep_supervision else out[0]

    def deep_supervision_scales(self, ndim: int) -> List[List[float]]:
        """nnU-Net target scale per output: every level's logits are full resolution."""
        return [[1.0] * ndim for _ in range(self.num_levels)]

    def freeze_pretrained(self, report: LoadReport) -> Tuple[int, int]:
        """Freeze the encoder tensors the checkpoint supplied (the paper: encoder frozen, LoRA trained).

        LoRA factors and encoder tensors the file lacked (``report.not_supplied``) are trained; necks,
        prompts and decoders always train. Without LoRA (``lora_rank=0``, Ft-SAM) nothing is frozen.
        Returns (frozen, trainable) encoder parameter counts.
        """
        return freeze_pretrained_encoder(self, report)

    def trainable_parts(self) -> dict:
        """Trainable parameter count per part (what Table 5's "Params" column counts)."""
        parts = {"encoder (LoRA)": 0, "encoder (other)": 0, "necks": 0, "qa_prompts": 0, "decoders": 0}
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            if name.startswith("encoder."):
                parts["encoder (LoRA)" if ".lora_" in name else "encoder (other)"] += p.numel()
            elif name.startswith("necks."):
                parts["necks"] += p.numel()
            elif name.startswith("prompts."):
                parts["qa_prompts"] += p.numel()
            else:
                parts["decoders"] += p.numel()
        return parts

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
            return ["encoder." + key[len("image_encoder."):]]
        if key == "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix":
            return ["pe_layer.positional_encoding_gaussian_matrix"]
        for part in ("transformer.", "output_upscaling."):
            if key.startswith("mask_decoder." + part):
                rest = key[len("mask_decoder."):]
                return [f"decoders.{j}.{rest}" for j in range(self.num_levels)]
        return []

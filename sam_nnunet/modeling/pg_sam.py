"""PG-SAM: prompt-free SAM guided by text priors (shared/papers/003), as an nnU-Net network.

Composition (each part its own module)::

    F_sam  = neck(encoder(x))                          LoRA-tuned SAM ViT (rank 4) + SAM's neck   B x C x h x w
    F_text = text_prior()                              :class:`ClassTextPrior`                    K_fg x C
    G      = aligner(F_sam, F_text)                    FGMPA, Eqs. 1-3 (:mod:`.prior_aligner`)    B x C x h x w
    F_trans, m = decoder.attend(F_sam + G, pe)         SAM's two-way transformer, K mask tokens
    F_up   = fusion(F_trans, G)                        MLFF, Eqs. 4-5 (:mod:`.feature_fusion`)    B x C/8 x 4h x 4w
    coarse = hypernetworks(m) . F_up                   SAM's mask head                            B x K x 4h x 4w
    fine   = optimizer(coarse, F_up, m)                IMO, Eqs. 6-7 (:mod:`.mask_optimizer`)     B x K x 4h x 4w

Where G enters: the paper feeds G to the decoder (Fig. 2a) and fuses it with the upsampled features
(Fig. 2b, Eq. 5). Here it is added to the image embedding before the two-way transformer, the way SAM
adds its dense prompt embedding, whenever FGMPA is on; MLFF fuses it again at 4x resolution. So Table
2's row II (FGMPA alone) uses G too, and row III adds exactly Eq. 5's fusion.

Ablation switches (Table 2; trainers ``PGSAMTrainer_Baseline`` / ``_FGMPA`` / ``_MLFF``):

* ``aligner`` off: no G (row I, the SAMed-like baseline);
* ``fusion`` off: SAM's own 4x upscaling (DeConv-LN-GELU-DeConv-GELU) instead of MLFF;
* ``mask_optimizer`` off: the coarse masks are the prediction.

Other switches: ``text_prior`` ("text" / "learned" / "none"), ``text_projection`` ("isometry": fixed, so that
the texts' geometry constrains the class vectors; "trainable"), ``aligner_weighting`` ("channel" /
"spatial", see :mod:`.prior_aligner`), ``optimizer_iterations`` and ``optimizer_update``
("sigmoid" / "signed", see :mod:`.mask_optimizer`), ``lora_rank``.

A pretrained TinyViT instead of SAM's ViT (``light_encoder``, e.g. ``"tiny_vit_litemedsam"``: LiteMedSAM's prior,
plans preset ``cpu_pg_medsam``): LoRA on the qkv of every attention block of the frozen TinyViT (the MBConv stage has
no attention), its neck gives F_sam; ``input_scaling`` / ``encoder_scale`` adapt nnU-Net's input as for ESP-MedSAM
(:func:`~.litemedsam.encoder_input`). Nothing of PG-SAM assumes a plain ViT: it reads the last embedding only.

Outputs and deep supervision (Eq. 8: low- and high-resolution paths, 56 and 224 for 224 inputs):
output 0 is the prediction resized bilinearly to the input size (the refined masks with IMO, else the
coarse ones); output 1 is the coarse mask logits at a quarter of the input size (4h x 4w). nnU-Net
gets target scales [1, 1/4] and the trainer weights both 1, as Eq. 8 sums them. Inputs whose size is
not a multiple of 16 are zero-padded and both outputs cropped to the input's extent (the low one to
round(H/4) x round(W/4), nnU-Net's target size). 5D input (3d_fullres) runs slice by slice.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from segment_anything.modeling.prompt_encoder import PositionEmbeddingRandom
from torch import nn

from sam_nnunet.modeling.weights.checkpoint import LoadReport, freeze_pretrained_encoder, load_sam_checkpoint
from sam_nnunet.modeling.common import Outputs, padded_size, slices_for_vit, trainable_by_part, unfold_depth
from sam_nnunet.modeling.blocks.feature_fusion import MultiLevelFeatureFusion
from sam_nnunet.modeling.blocks.image_encoder import build_lora_encoder, build_sam_neck
from sam_nnunet.modeling.blocks.light_encoder import build_lora_tinyvit, image_encoder_key, load_light_checkpoint
from sam_nnunet.modeling.litemedsam import check_encoder_input, encoder_input, encoder_stride
from sam_nnunet.modeling.blocks.mask_decoder import HierarchicalMaskDecoderBlock
from sam_nnunet.modeling.blocks.mask_optimizer import IterativeMaskOptimizer
from sam_nnunet.modeling.blocks.prior_aligner import ModalityPriorAligner
from sam_nnunet.modeling.blocks.registry import get_encoder_config, get_light_encoder_config
from sam_nnunet.modeling.blocks.text_prior import TEXT_DIM, ClassTextPrior

LOW_RES_SCALE = 0.25


class PGSAM(nn.Module):
    def __init__(
        self,
        *,
        num_input_channels: int,
        num_classes: int,
        img_size: Sequence[int],
        encoder: str = "vit_b",
        lora_rank: int = 4,
        lora_targets: Sequence[str] = ("qkv",),
        aligner: bool = True,
        fusion: bool = True,
        mask_optimizer: bool = True,
        text_prior: str = "text",
        text_projection: str = "isometry",
        aligner_weighting: str = "channel",
        optimizer_iterations: int = 3,
        optimizer_update: str = "sigmoid",
        class_texts: Optional[Sequence[str]] = None,
        text_dim: int = TEXT_DIM,
        light_encoder: Optional[str] = None,
        input_scaling: str = "none",
        encoder_scale: float = 1.0,
        deep_supervision: bool = True,
    ) -> None:
        """
        Args:
            num_input_channels: image channels from nnU-Net.
            num_classes: K, nnU-Net segmentation heads (background + classes, or regions).
            img_size: patch size (H, W) of one slice; padded up to a multiple of 16 internally.
            encoder: name in ``registry.ENCODERS``.
            lora_rank / lora_targets: LoRA on every encoder block (rank 4 as SAMed and the paper); 0: none.
            aligner / fusion / mask_optimizer: Table 2's switches (FGMPA, MLFF, IMO).
            text_prior: "text", "learned" or "none" (:mod:`.text_prior`).
            text_projection: "isometry" (fixed: the texts' geometry reaches W_s) or "trainable" (:mod:`.text_prior`).
            aligner_weighting: "channel" or "spatial" (:mod:`.prior_aligner`).
            optimizer_iterations / optimizer_update: IMO's T and update (:mod:`.mask_optimizer`).
            class_texts: the class descriptions (recorded for the record; their vectors are a buffer).
            text_dim: width of the text encoder's vectors.
            light_encoder: ``registry.LIGHT_ENCODERS`` name of a TinyViT used instead of the ViT ``encoder``, or None.
            input_scaling / encoder_scale: how the input is adapted to a pretrained TinyViT (as ESP-MedSAM's).
            deep_supervision: return [high, low] instead of only the high-resolution logits.
        """
        super().__init__()
        self.light = light_encoder is not None
        check_encoder_input(input_scaling, encoder_scale, self.light)
        cfg = get_light_encoder_config(light_encoder) if self.light else get_encoder_config(encoder)
        self.num_input_channels = num_input_channels
        self.num_classes = num_classes
        self.input_scaling = input_scaling
        self.encoder_scale = float(encoder_scale)
        self.patch_size = encoder_stride(cfg.patch_size, self.encoder_scale)  # input pixels per embedding pixel
        self.deep_supervision = deep_supervision
        self.lora_rank = lora_rank
        self.class_texts = list(class_texts) if class_texts is not None else None
        size = padded_size(img_size, self.patch_size)
        grid = (size[0] // self.patch_size, size[1] // self.patch_size)
        num_targets = max(num_classes - 1, 1)
        dim = cfg.decoder_dim

        if self.light:
            self.encoder = build_lora_tinyvit(cfg, in_chans=num_input_channels, lora_rank=lora_rank,
                                              lora_targets=lora_targets)
            self.neck = build_sam_neck(self.encoder.out_dim, dim)
        else:
            self.encoder = build_lora_encoder(cfg, img_size=img_size, in_chans=num_input_channels,
                                              lora_rank=lora_rank, lora_targets=lora_targets,
                                              out_indexes=(cfg.depth - 1,))
            self.neck = build_sam_neck(cfg.embed_dim, dim)
        self.text_prior = ClassTextPrior(num_targets=num_targets, feature_dim=dim, mode=text_prior,
                                         text_dim=text_dim, projection=text_projection) if aligner else None
        self.aligner = ModalityPriorAligner(dim=dim, num_targets=num_targets, num_positions=grid[0] * grid[1],
                                            weighting=aligner_weighting,
                                            similarity=text_prior != "none") if aligner else None
        self.decoder = HierarchicalMaskDecoderBlock(
            transformer_dim=dim, num_mask_tokens=num_classes, transformer_depth=cfg.decoder_depth,
            transformer_mlp_dim=cfg.decoder_mlp_dim, transformer_heads=cfg.decoder_heads, upscaling=not fusion)
        self.fusion = MultiLevelFeatureFusion(dim, with_guide=aligner) if fusion else None
        self.mask_optimizer = IterativeMaskOptimizer(
            token_dim=dim, feature_dim=dim // 8, num_masks=num_classes, iterations=optimizer_iterations,
            update=optimizer_update) if mask_optimizer else None
        self.pe_layer = PositionEmbeddingRandom(dim // 2)  # SAM's dense positional encoding

    def guide(self, features: torch.Tensor) -> Optional[torch.Tensor]:
        """G for F_sam (B x C x h x w), or None without FGMPA."""
        if self.aligner is None:
            return None
        return self.aligner(features, self.text_prior())

    def decode(self, features: torch.Tensor, guide: Optional[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
        """F_sam (B x C x h x w) and G -> (prediction logits, coarse logits), both B x K x 4h x 4w."""
        pe = self.pe_layer(tuple(features.shape[-2:])).unsqueeze(0).to(features.dtype)
        embedding = features if guide is None else features + guide
        transformed, tokens = self.decoder.attend(embedding, pe)
        if self.fusion is not None:
            upscaled = self.fusion(transformed, guide)
        else:
            upscaled = self.decoder.output_upscaling(transformed)
        coarse = self.decoder.mask_logits(tokens, upscaled)
        if self.mask_optimizer is None:
            return coarse, coarse
        return self.mask_optimizer(coarse, upscaled, tokens), coarse

    def forward(self, x: torch.Tensor) -> Outputs:
        """x: B x C x H x W (2d) or B x C x D x H x W (3d, slice-wise).

        Returns B x K x (D x) H x W logits, or with deep supervision [those, coarse B x K x (D x) H/4 x W/4].
        """
        x, depth, (H, W) = slices_for_vit(self, x)
        if self.light:
            features = self.neck(self.encoder(encoder_input(x, self.input_scaling, self.encoder_scale)))
        else:
            features = self.neck(self.encoder(x)[-1].permute(0, 3, 1, 2))
        prediction, coarse = self.decode(features, self.guide(features))

        high = F.interpolate(prediction, size=x.shape[-2:], mode="bilinear", align_corners=False)[..., :H, :W]
        outputs = [high]
        if self.deep_supervision:
            low_size = (round(H * LOW_RES_SCALE), round(W * LOW_RES_SCALE))
            low = coarse[..., :low_size[0], :low_size[1]]
            if tuple(low.shape[-2:]) != low_size:
                low = F.interpolate(coarse, size=low_size, mode="bilinear", align_corners=False)
            outputs.append(low)
        if depth is not None:
            outputs = [unfold_depth(o, depth) for o in outputs]
        return outputs if self.deep_supervision else outputs[0]

    def deep_supervision_scales(self, ndim: int) -> List[List[float]]:
        """nnU-Net target scale per output: full resolution, then a quarter in-plane (3d: depth kept)."""
        low = [LOW_RES_SCALE] * 2 if ndim == 2 else [1.0, LOW_RES_SCALE, LOW_RES_SCALE]
        return [[1.0] * ndim, low]

    def load_pretrained(self, path) -> LoadReport:
        """A SAM / MedSAM ViT file, or for a TinyViT encoder a file in MobileSAM's layout (LiteMedSAM's)."""
        return load_light_checkpoint(self, path) if self.light else load_sam_checkpoint(self, path)

    def freeze_pretrained(self, report: LoadReport) -> Tuple[int, int]:
        """Freeze the encoder tensors the checkpoint supplied (LoRA trains, as SAMed and the paper); rank 0:
        nothing frozen. The neck, prior, decoder, fusion and optimizer always train."""
        return freeze_pretrained_encoder(self, report)

    def trainable_parts(self) -> dict:
        """Trainable parameter count per part."""
        return trainable_by_part(self, ("encoder (LoRA)", "encoder (other)", "neck", "text_prior", "aligner", "decoder",
                                        "fusion", "mask_optimizer", "pe_layer"))

    def sam_key_map(self, key: str) -> List[str]:
        """Where a tensor of an official SAM checkpoint goes (empty: not used): the image encoder and its neck,
        the dense positional encoding, the mask decoder's two-way transformer and (without MLFF) its upscaling."""
        if key.startswith("image_encoder.neck."):
            return ["neck." + key[len("image_encoder.neck."):]]
        if key.startswith("image_encoder."):
            return image_encoder_key(key, self.light)
        if key == "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix":
            return ["pe_layer.positional_encoding_gaussian_matrix"]
        if key.startswith("mask_decoder.transformer."):
            return ["decoder." + key[len("mask_decoder."):]]
        if key.startswith("mask_decoder.output_upscaling.") and self.fusion is None:
            return ["decoder." + key[len("mask_decoder."):]]
        return []

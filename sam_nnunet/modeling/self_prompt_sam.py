"""Self-Prompt-SAM (shared/papers/002, section 2 and appendix C/D) as an nnU-Net network.

Composition (each part its own module)::

    x (B x C x D x H x W; 2D: D = 1)
      -> slices (B*D) x C x H x W
      -> modality_adapter  (MAdapter: C -> 3 channels)                       [switch: modality_adapter]
      -> encoder           (SAM ViT, adapters in every block, depth pos-embed) [switches: adapter, depth_pos_embed]
           4 feature maps at evenly spaced depths
      -> prompt_generator  (MSPGenerator: image + 4 maps -> auxiliary masks at 1, 1/2, 1/4, 1/8)
                                          [switches: prompt_generator msp|conv, generator_depth_mixing]
      -> prompts per slice and class (box, EDT point, mask; no gradient)    (auto_prompts)
      -> neck(last map) -> mask_decoder per class (SAM's, adapters, depth pos-embed) -> K binary maps
      -> mc_adapter        (MC-Adapter: K binary logits -> K class logits)  [switch: mc_adapter]

Table 4 of the paper maps onto the switches, each row adding one part to the row before: S1
``prompt_generator="conv", adapter="none", depth_pos_embed=False, modality_adapter=False,
mc_adapter=False``; S2 as S1 with ``"msp"``; S3 ``adapter="vanilla"``; S4 / S5 ``"depth_before"`` /
``"depth_after"``; S6 ``"dfused"``; S7 +depth pos-embed; S8 +MAdapter; S9 +MC-Adapter. Every row
has ``generator_depth_mixing=False``.

Depth mixing, and why the ablation rows switch the generator's off. In 3D, slices of a patch
interact only through the *depth parts*: the adapters' depth MLPs (``adapter`` S4 / S5 / S6 kinds),
and the prompt generator's 3x3x3 convolutions and patch-wide instance norm
(``generator_depth_mixing``). The depth positional embedding (``depth_pos_embed``) tells a slice its
index but does not mix slices. Everything else (MAdapter, the ViT, SAM's neck, the prompts, SAM's
decoder without adapters, MC-Adapter) runs on each slice alone. The paper says how the depth
information comes in: SAM on a sequence of 2D frames is discontinuous across depth (its Fig. 1d),
and the DFusedAdapter and the depth positional embedding are added to fix that; Table 4 credits
S3 -> S6 (+1.7 %) to the DFusedAdapter's depth mixing and S6 -> S7 to the embedding. It does not
say whether its generator is 2D or 3D. If the generator mixed slices in every row, S1 - S3 would
not be the "2D frames" baseline and S3 vs S6 would compare two 3D models, so the DFusedAdapter's
contribution could not be isolated. Hence every Table 4 row uses the per-slice generator, and each
row differs from the one before in exactly the part the table names. The full model
(``SelfPromptSAMTrainer``, the network's defaults) keeps the 3D generator it always had: it is S9
plus ``generator_depth_mixing=True``, a difference the paper does not ablate and that
``SelfPromptSAMTrainer_S9`` vs ``SelfPromptSAMTrainer`` measures. Models whose plans predate the
switch build with the default (on), i.e. as they were trained.

nnU-Net integration:

* Outputs with deep supervision: ``[final, aux_full, aux_1/2, aux_1/4, aux_1/8]`` (the conv
  generator: ``[final, aux_full]``); :meth:`deep_supervision_scales` gives nnU-Net the matching
  target scales (depth is never downsampled). Without deep supervision: ``final`` only, which is
  what validation and ``nnUNetv2_predict`` use.
* ``use_sam_decoder = False`` skips prompting and SAM's decoder and returns the auxiliary mask as
  ``final``: the trainer's warm-up phase, in which only the generator's loss trains (appendix D).
* 3D patches must have the plans' depth D (the depth layers are D x 4D matrices); nnU-Net's sliding
  window always feeds patch-sized tiles and pads volumes shallower than the patch.
* H and W that are not multiples of 16 are zero-padded and the outputs cropped back.
* Pretrained weights: an official SAM / MedSAM file fills the ViT, the prompt encoder and the mask decoder. LiteMedSAM's
  ``lite_medsam.pth`` (``SAM_NNUNET_CHECKPOINT=litemedsam``; plans preset ``cpu_selfprompt_medsam``) has a TinyViT
  encoder, which the MSPGenerator cannot read (it takes four 1/16 maps at evenly spaced ViT depths): its prompt encoder
  and mask decoder start this network's, so the self-generated box, point and mask prompts feed a decoder that already
  knows how to use them, and the ViT trains from scratch. That needs SAM's 256-wide decoder (encoder preset
  ``vit_tiny_sam_decoder``, or a SAM ViT size).
* Empty classes: see :mod:`.auto_prompts`; ``empty_prompt="padding"`` uses SAM's not-a-point and
  no-mask embeddings instead of the paper's zero box and point.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from segment_anything.modeling.prompt_encoder import PromptEncoder
from torch import nn

from sam_nnunet.modeling.blocks.auto_prompts import prompts_from_masks
from sam_nnunet.modeling.weights.checkpoint import LoadReport, freeze_supplied, load_sam_checkpoint
from sam_nnunet.modeling.common import (Outputs, check_channels, fold_depth, pad_to_multiple, padded_size,
                                       trainable_by_part)
from sam_nnunet.modeling.blocks.depth_encoder import DepthAdaptedImageEncoder
from sam_nnunet.modeling.blocks.image_encoder import build_sam_neck
from sam_nnunet.modeling.blocks.modality_adapter import ModalityAdapter
from sam_nnunet.modeling.blocks.multiclass_adapter import MultiClassAdapter
from sam_nnunet.modeling.blocks.prompt_generator import ConvPromptGenerator, MSPGenerator, tokens_to_volume
from sam_nnunet.modeling.blocks.registry import get_encoder_config
from sam_nnunet.modeling.blocks.self_prompt_decoder import SelfPromptMaskDecoder

PROMPT_GENERATORS = ("msp", "conv")
EMPTY_PROMPTS = ("zeros", "padding")


def embed_prompts(prompt_encoder: PromptEncoder, points: torch.Tensor, boxes: torch.Tensor,
                  masks: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """SAM's ``PromptEncoder.forward`` for one positive point, one box and one mask per row, the same values
    written without its in-place boolean-mask updates (an ONNX trace fixes those to the traced batch).

    points: N x 2 and boxes: N x 4 in pixels (x, y); masks: N x 1 x 4h x 4w
    -> (sparse N x 3 x E: point, box corners; dense N x E x h x w).
    """
    coords = torch.cat([points.unsqueeze(1), boxes.reshape(-1, 2, 2)], dim=1) + 0.5  # shift to pixel centres
    h, w = prompt_encoder.input_image_size
    pe = prompt_encoder.pe_layer._pe_encoding(coords / coords.new_tensor([w, h]))
    kinds = torch.cat([prompt_encoder.point_embeddings[i].weight for i in (1, 2, 3)])  # positive point, corners
    # the negative-point and not-a-point embeddings take part with weight 0, as in SAM's forward (there through
    # empty boolean masks): every parameter gets a gradient, which DDP requires
    unused = prompt_encoder.point_embeddings[0].weight.sum() + prompt_encoder.not_a_point_embed.weight.sum()
    return pe + kinds + 0 * unused, prompt_encoder.mask_downscaling(masks)


class SelfPromptSAM(nn.Module):
    #: a TinyViT file (LiteMedSAM's) gives the prompt encoder and mask decoder alone (:func:`~.checkpoint.load_sam_decoder`)
    takes_sam_decoder_alone = True

    def __init__(
        self,
        *,
        num_input_channels: int,
        num_classes: int,
        img_size: Sequence[int],
        patch_depth: int = 1,
        encoder: str = "vit_b",
        prompt_generator: str = "msp",
        adapter: str = "dfused",
        depth_pos_embed: bool = True,
        modality_adapter: bool = True,
        mc_adapter: bool = True,
        empty_prompt: str = "zeros",
        generator_depth_mixing: bool = True,
        generator_channels: Optional[Sequence[int]] = None,
        deep_supervision: bool = True,
    ) -> None:
        """
        Args:
            num_input_channels: image channels from nnU-Net.
            num_classes: K, nnU-Net's segmentation heads (background included).
            img_size: (H, W) of a patch slice; padded up to a multiple of 16 internally.
            patch_depth: D, slices per 3D patch (plans' patch size[0]); 1 for 2D (depth parts off).
            encoder: name in ``registry.ENCODERS``.
            prompt_generator: ``"msp"`` (MSPGenerator) or ``"conv"`` (Table 4's S1 stacked CNNs).
            adapter: ``"dfused"``, ``"vanilla"``, ``"depth_before"``, ``"depth_after"`` or ``"none"``.
            depth_pos_embed: depth positional embeddings in encoder and decoder.
            modality_adapter: MAdapter before the encoder (else the patch embedding takes C channels).
            mc_adapter: MC-Adapter after the decoder (else the K binary logits are the class logits).
            empty_prompt: prompts of a class absent from a slice, ``"zeros"`` (paper) or ``"padding"``.
            generator_depth_mixing: 3D prompt generator (3x3x3 convolutions, instance norm over the patch);
                False runs it on each slice (Table 4's rows, see the module docstring). No effect in 2D.
            generator_channels: generator widths at full, 1/2, 1/4, 1/8 (default: decoder width / 8, 4, 2, 1).
            deep_supervision: return the list of outputs (see module docstring) instead of ``final``.
        """
        super().__init__()
        if prompt_generator not in PROMPT_GENERATORS:
            raise ValueError(f"prompt_generator must be one of {PROMPT_GENERATORS}, got {prompt_generator!r}")
        if empty_prompt not in EMPTY_PROMPTS:
            raise ValueError(f"empty_prompt must be one of {EMPTY_PROMPTS}, got {empty_prompt!r}")
        if num_classes < 2:
            raise ValueError("Self-Prompt-SAM needs background + at least one class (softmax outputs)")
        cfg = get_encoder_config(encoder)
        if cfg.patch_size != 16:
            raise ValueError(f"Self-Prompt-SAM's MSPGenerator decodes 16-pixel encoder patches (1/16 to full "
                             f"resolution in four steps, as in the paper); encoder {encoder!r} has {cfg.patch_size}-pixel "
                             f"patches. Use a 16-pixel encoder (e.g. plans preset cpu_tiny or vit_b).")
        self.encoder_name = encoder
        self.num_input_channels = num_input_channels
        self.num_classes = num_classes
        self.patch_depth = int(patch_depth)
        self.patch_size = cfg.patch_size
        self.empty_prompt = empty_prompt
        self.deep_supervision = deep_supervision
        self.use_sam_decoder = True
        padded = padded_size(img_size, cfg.patch_size)

        self.modality_adapter = ModalityAdapter(in_channels=num_input_channels) if modality_adapter else None
        self.encoder = DepthAdaptedImageEncoder(
            patch_depth=self.patch_depth, adapter=adapter, depth_pos_embed=depth_pos_embed,
            img_size=padded, patch_size=cfg.patch_size, in_chans=3 if modality_adapter else num_input_channels,
            embed_dim=cfg.embed_dim, depth=cfg.depth, num_heads=cfg.num_heads, window_size=cfg.window_size,
            global_attn_indexes=cfg.global_attn_indexes,
        )
        self.neck = build_sam_neck(cfg.embed_dim, cfg.decoder_dim)
        grid = self.encoder.grid_size
        self.prompt_encoder = PromptEncoder(embed_dim=cfg.decoder_dim, image_embedding_size=grid,
                                            input_image_size=padded, mask_in_chans=16)
        if empty_prompt == "zeros":
            # every prompt has a mask, so SAM's no-mask embedding is never used; an unused trainable
            # parameter would break DDP
            self.prompt_encoder.no_mask_embed.weight.requires_grad_(False)
        self.mask_decoder = SelfPromptMaskDecoder(
            transformer_dim=cfg.decoder_dim, transformer_depth=cfg.decoder_depth,
            transformer_mlp_dim=cfg.decoder_mlp_dim, transformer_heads=cfg.decoder_heads,
            patch_depth=self.patch_depth, adapter=adapter, depth_pos_embed=depth_pos_embed)
        dd = cfg.decoder_dim
        channels = tuple(generator_channels) if generator_channels else (dd // 8, dd // 4, dd // 2, dd)
        depth_mixing = bool(generator_depth_mixing) and self.patch_depth > 1
        if prompt_generator == "msp":
            self.prompt_generator = MSPGenerator(image_channels=num_input_channels, encoder_dim=cfg.embed_dim,
                                                 num_classes=num_classes, channels=channels,
                                                 depth_mixing=depth_mixing)
        else:
            self.prompt_generator = ConvPromptGenerator(encoder_dim=cfg.embed_dim, num_classes=num_classes,
                                                        channels=channels, depth_mixing=depth_mixing)
        self.num_aux_outputs = 4 if prompt_generator == "msp" else 1
        self.mc_adapter = MultiClassAdapter(num_classes=num_classes) if mc_adapter else None

    # ------------------------------------------------------------------ nnU-Net interface
    @property
    def num_levels(self) -> int:
        """Number of outputs with deep supervision (final + auxiliary)."""
        return 1 + self.num_aux_outputs

    def deep_supervision_scales(self, ndim: int) -> List[List[float]]:
        """Target scale per output for nnU-Net (``ndim`` = 2 or 3 spatial axes; depth stays at 1)."""
        scales = [[1.0] * ndim]
        for s in range(self.num_aux_outputs):
            scales.append(([1.0] if ndim == 3 else []) + [0.5 ** s] * 2)
        return scales

    def forward(self, x: torch.Tensor) -> Outputs:
        """x: B x C x H x W (2d) or B x C x D x H x W (3d) -> B x K x (D x) H x W logits, or the
        deep-supervision list ``[final, aux_full, aux_1/2, ...]``."""
        check_channels(self, x)
        is_2d = x.ndim == 4
        if is_2d:
            x = x.unsqueeze(2)
        B, C, D, H, W = x.shape
        if D != self.patch_depth:
            raise ValueError(f"SelfPromptSAM was built for patches of depth {self.patch_depth} (the plans' patch "
                             f"size) but got depth {D}: {tuple(x.shape)}")
        slices, (H0, W0) = pad_to_multiple(fold_depth(x)[0], self.patch_size)
        Hp, Wp = slices.shape[-2:]
        tokens = self.encoder(self.modality_adapter(slices) if self.modality_adapter is not None else slices)
        image = slices.view(B, D, C, Hp, Wp).transpose(1, 2)
        aux = self.prompt_generator(image, [tokens_to_volume(t, D) for t in tokens])
        final = self._decode(tokens[-1], aux[0]) if self.use_sam_decoder else aux[0]

        outputs = [final] + list(aux) if self.deep_supervision else [final]
        cropped = []
        for i, out in enumerate(outputs):
            scale = 1.0 if i == 0 else 0.5 ** (i - 1)
            out = out[..., : round(float(H0) * scale), : round(float(W0) * scale)]  # float(): traced sizes are tensors
            cropped.append(out.squeeze(2) if is_2d else out)
        return cropped if self.deep_supervision else cropped[0]

    # ------------------------------------------------------------------ prompting + SAM decoding
    def _decode(self, last_tokens: torch.Tensor, aux_full: torch.Tensor) -> torch.Tensor:
        """last_tokens: (B*D) x h x w x E; aux_full: B x K x D x Hp x Wp -> B x K x D x Hp x Wp logits."""
        B, K, D, Hp, Wp = aux_full.shape
        embeddings = self.neck(last_tokens.permute(0, 3, 1, 2))
        h, w = embeddings.shape[-2:]
        prompts = prompts_from_masks(aux_full.transpose(1, 2).reshape(B * D, K, Hp, Wp), mask_size=(4 * int(h), 4 * int(w)))

        def per_class(t: torch.Tensor) -> torch.Tensor:  # (B*D) x K x ... -> (B*K*D) x ... (slices innermost)
            return t.view(B, D, K, *t.shape[2:]).transpose(1, 2).reshape(B * K * D, *t.shape[2:])

        points, boxes, present = per_class(prompts.points), per_class(prompts.boxes), per_class(prompts.present)
        masks = per_class(prompts.masks).unsqueeze(1)
        # SAM's prompt encoder normalises coordinates by the size it was built for (the plans' patch);
        # another input size (e.g. a benchmark) is mapped onto that frame
        ref_h, ref_w = self.prompt_encoder.input_image_size
        xy_scale = points.new_tensor([ref_w / Wp, ref_h / Hp])
        points, boxes = points * xy_scale, boxes * xy_scale.repeat(2)
        sparse, dense = embed_prompts(self.prompt_encoder, points, boxes, masks)
        if self.empty_prompt == "padding":
            absent = ~present
            sparse = torch.where(absent.view(-1, 1, 1), self.prompt_encoder.not_a_point_embed.weight.view(1, 1, -1),
                                 sparse)
            dense = torch.where(absent.view(-1, 1, 1, 1), self.prompt_encoder.no_mask_embed.weight.view(1, -1, 1, 1),
                                dense)
        low_res = self.mask_decoder(embeddings, self.prompt_encoder.pe_layer((h, w)).unsqueeze(0), sparse, dense)
        masks_full = F.interpolate(low_res, size=(Hp, Wp), mode="bilinear", align_corners=False)
        binary = masks_full.view(B, K, D, Hp, Wp)
        return self.mc_adapter(binary) if self.mc_adapter is not None else binary

    # ------------------------------------------------------------------ pretrained SAM
    def sam_key_map(self, key: str) -> List[str]:
        """Where a tensor of an official SAM checkpoint goes (the loader drops what this network lacks:
        the IoU head and the multi-mask hypernetworks). A TinyViT file (LiteMedSAM's) gives the prompt encoder and
        mask decoder only (:func:`~.checkpoint.load_sam_decoder`)."""
        if key.startswith("image_encoder.neck."):
            return ["neck." + key[len("image_encoder.neck."):]]
        if key.startswith("image_encoder."):
            return ["encoder." + key[len("image_encoder."):]]
        if key.startswith(("prompt_encoder.", "mask_decoder.")):
            return [key]
        return []

    def load_pretrained(self, path) -> LoadReport:
        """A SAM / MedSAM ViT file, or a TinyViT file's prompt encoder and mask decoder
        (:func:`~.checkpoint.load_sam_checkpoint`, which reads ``takes_sam_decoder_alone``)."""
        return load_sam_checkpoint(self, path)

    def trainable_parts(self) -> dict:
        """Trainable parameter count per part (top-level module: encoder, neck, prompt_generator, ...)."""
        return trainable_by_part(self, part_of=lambda name: name.split(".", 1)[0])

    def freeze_pretrained(self, report: LoadReport) -> Tuple[int, int]:
        """Freeze every SAM weight the checkpoint supplied; the added blocks and SAM weights the file lacked
        (``report.not_supplied``) train (the paper keeps all of SAM and only adds blocks). With LiteMedSAM's file
        that is its prompt encoder and mask decoder (the decoder's adapters train), while the ViT, which the file
        cannot fill, trains from scratch. Returns (frozen, trainable) parameter counts of the whole network."""
        return freeze_supplied(self, report)

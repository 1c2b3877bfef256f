"""ESP-MedSAM: efficient self-prompting SAM (shared/papers/004), as an nnU-Net network.

Composition (each part its own module)::

    bags   = controller.active_bags()              f_MC, one bag per block (:mod:`.modality_controller`)
    E      = neck(encoder(x, bags))                f_LIE TinyViT (:mod:`.light_encoder`) or SAM's ViT      B x C x h x w
    p_hat  = sppg(E)                               SPPG patch logits, Eq. 4 (:mod:`.patch_prompt`)       B x K' x h/2^L x w/2^L
    D      = sppg.dense_prompt(p_hat)              DP encoder                                             B x C x h x w
    M      = decoder(E + D, alpha)                 QDMD, Eqs. 6-7 (:mod:`.modality_decoder`)             B x K x 4h x 4w

Student and teacher are the same class: ``light_encoder="tiny_vit_5m"`` (MobileSAM's TinyViT; ESP-MedSAM-S),
``"tiny_vit_litemedsam"`` (LiteMedSAM's TinyViT, a student distilled from MedSAM: ``SAM_NNUNET_CHECKPOINT=litemedsam``
with ``input_scaling="unit_range"``, plans preset ``cpu_medsam``; its embedding is at 1/4, so the masks come out at
the input's resolution; ``encoder_scale`` feeds it a downsized input, for CPU budgets) or
``light_encoder=None`` and the SAM ViT ``encoder`` (``"vit_b"``: the frozen SAM encoder whose controller bags are
the teacher's PEFT tokens; ESP-MedSAM-T). Two names, so that a plans preset that picks the ViT size (``encoder``)
leaves the student's TinyViT alone.

Table VI switches: ``light_encoder`` + ``controller`` (MMDKD's student; rows without MMDKD use SAM's ViT
without bags), ``patch_prompts`` (SPPG) and ``modality_queries`` (QDMD; off: one shared query set). With one
modality QDMD has one query set and *is* the shared decoder (same parameters and outputs), so the trainers refuse
the rows that differ by QDMD alone there. The student's size: ``"tiny_vit_5m"`` (MobileSAM's, about 11 % of the
ViT-B baseline) or ``"tiny_vit_21m"`` (the paper's ESP-MedSAM-S size, about 31 %; Table VI: 29.1 M of 90.6 M).
Others: ``modality`` (the bag and query set used: the dataset's, from the trainer), ``modalities``,
``num_tokens`` / ``hidden_ratio`` (bag sizes), ``patch_layers`` (L).

**The universal path** (``modality_codes``; shared/papers/004's setting: one model across modalities): a dataset
made of several (:mod:`sam_nnunet.datasets.universal`) carries each case's modality in its last input channel
(:mod:`.modality_channel`); ``forward`` reads it per sample, drops it, and runs the samples of each modality with
that modality's bags and query set, so a sample's bag and queries follow its modality in training, validation
and ``nnUNetv2_predict`` alike.

Outputs: output 0 is the mask logits resized bilinearly to the input size; with deep supervision and SPPG,
output 1 is the patch logits (B x K' x (D x) ceil(H/p) x ceil(W/p), p = 16 * 2^L), which the trainer's loss
compares with the max-pooled label (BCE, Eq. 5); nnU-Net gets a single target scale. The input is
zero-padded to a multiple of p (16 without SPPG); 5D input (3d_fullres) runs slice by slice.
"""
from __future__ import annotations

from typing import List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from segment_anything.modeling.prompt_encoder import PositionEmbeddingRandom
from torch import nn

from sam_nnunet.modeling.weights.checkpoint import LoadReport, freeze_supplied, load_sam_checkpoint
from sam_nnunet.modeling.common import Outputs, padded_size, slices_for_vit, trainable_by_part, unfold_depth
from sam_nnunet.modeling.blocks.image_encoder import SAMImageEncoder, build_sam_neck
from sam_nnunet.modeling.blocks.light_encoder import TinyViTEncoder, image_encoder_key, load_light_checkpoint
from sam_nnunet.modeling.litemedsam import check_encoder_input, encoder_input, encoder_stride
from sam_nnunet.modeling.blocks.modality_channel import decode_modalities
from sam_nnunet.modeling.blocks.modality_controller import ControlledSAMBlock, ModalityController, canonical_modality
from sam_nnunet.modeling.blocks.modality_decoder import QueryDecoupledModalityDecoder
from sam_nnunet.modeling.blocks.patch_prompt import SelfPatchPromptGenerator
from sam_nnunet.modeling.blocks.registry import TinyViTConfig, get_encoder_config, get_light_encoder_config

#: key prefix of the modality controller's tensors in checkpoint files (``sam_nnunet distill`` writes them)
CONTROLLER_PREFIX = "modality_controller."


class ESPMedSAM(nn.Module):
    def __init__(
        self,
        *,
        num_input_channels: int,
        num_classes: int,
        img_size: Sequence[int],
        modality: str,
        encoder: str = "vit_b",
        light_encoder: Optional[str] = "tiny_vit_5m",
        controller: bool = True,
        patch_prompts: bool = True,
        modality_queries: bool = True,
        modalities: Optional[Sequence[str]] = None,
        num_tokens: int = 8,
        hidden_ratio: float = 0.25,
        patch_layers: int = 1,
        input_scaling: str = "none",
        encoder_scale: float = 1.0,
        modality_codes: Optional[Mapping[str, float]] = None,
        deep_supervision: bool = True,
    ) -> None:
        """
        Args:
            num_input_channels: image channels from nnU-Net.
            num_classes: K, nnU-Net segmentation outputs (background + classes).
            img_size: patch size (H, W) of one slice; padded internally (see module docstring).
            modality: the dataset's imaging modality (``modality_controller.MODALITIES``).
            encoder: ``registry.ENCODERS`` name of the SAM ViT, used when ``light_encoder`` is None (teacher).
            light_encoder: ``registry.LIGHT_ENCODERS`` name of the TinyViT student, or None.
            controller / patch_prompts / modality_queries: Table VI's switches (bags, SPPG, QDMD).
            modalities: modalities that get bags and query sets (default: ``modality`` alone, what an nnU-Net
                dataset trains; a checkpoint's bags of other modalities are then reported unused).
            num_tokens / hidden_ratio: each bag's t tokens and bottleneck r = hidden_ratio * C.
            patch_layers: SPPG's L.
            input_scaling: ``"none"`` (nnU-Net's normalised input as it is) or ``"unit_range"`` (each sample and
                channel rescaled to [0, 1], what LiteMedSAM's encoder saw: :func:`~.litemedsam.scale_to_unit_range`).
            encoder_scale: s, the TinyViT sees the input resized by s (0.5: a quarter of the pixels, so about a
                quarter of the encoder's cost); the masks are brought back to the input's size. LiteMedSAM's stride-1
                stem makes its encoder ~90x a vit_tiny_p8's FLOPs per pixel; docs/benchmark_log.md measures what s = 0.5
                costs its prior (box-prompt Dice on ACDC).
            modality_codes: the universal path (several modalities in one dataset): modality -> the value of the
                modality channel, the input's last channel (:mod:`.modality_channel`). Each sample then runs with
                its own modality's bags and query set; ``modalities`` are the codes' and every one of them trains.
            deep_supervision: also return the patch logits (when SPPG is on).
        """
        super().__init__()
        cfg = get_light_encoder_config(light_encoder) if light_encoder else get_encoder_config(encoder)
        self.num_input_channels = num_input_channels  # nnU-Net's, the modality channel included
        self.num_classes = num_classes
        self.deep_supervision = deep_supervision
        self.light = isinstance(cfg, TinyViTConfig)
        check_encoder_input(input_scaling, encoder_scale, self.light)
        self.input_scaling = input_scaling
        self.encoder_scale = float(encoder_scale)
        # input pixels per SPPG patch (per embedding pixel without SPPG)
        self.patch_size = encoder_stride(cfg.patch_size, self.encoder_scale) * (2 ** patch_layers if patch_prompts else 1)
        dim = cfg.decoder_dim
        self.modality_codes = {canonical_modality(m): float(v) for m, v in modality_codes.items()} \
            if modality_codes else None
        if self.modality_codes is not None:
            modalities = tuple(self.modality_codes)
            modality = modality if canonical_modality(modality) in modalities else modalities[0]
            num_input_channels -= 1  # the encoder does not see the modality channel
            if num_input_channels < 1:
                raise ValueError("the universal path needs image channels besides the modality channel")
        modalities = tuple(modalities) if modalities else (modality,)
        if self.light:
            self.encoder = TinyViTEncoder(cfg, in_chans=num_input_channels)
            block_dims, out_dim = self.encoder.block_dims(), self.encoder.out_dim
        else:
            self.encoder = SAMImageEncoder(
                img_size=padded_size(img_size, self.patch_size), patch_size=cfg.patch_size,
                in_chans=num_input_channels, embed_dim=cfg.embed_dim, depth=cfg.depth, num_heads=cfg.num_heads,
                window_size=cfg.window_size, global_attn_indexes=cfg.global_attn_indexes,
                out_indexes=(cfg.depth - 1,), block_factory=ControlledSAMBlock)
            block_dims, out_dim = [cfg.embed_dim] * cfg.depth, cfg.embed_dim
        self.neck = build_sam_neck(out_dim, dim)
        self.controller = ModalityController(block_dims, modalities=modalities, active=modality, num_tokens=num_tokens,
                                             hidden_ratio=hidden_ratio) if controller else None
        self.sppg = SelfPatchPromptGenerator(dim=dim, num_targets=max(num_classes - 1, 1),
                                             num_layers=patch_layers) if patch_prompts else None
        self.decoder = QueryDecoupledModalityDecoder(
            dim=dim, num_masks=num_classes, active=modality, modalities=modalities, decoupled=modality_queries,
            depth=cfg.decoder_depth, mlp_dim=cfg.decoder_mlp_dim, num_heads=cfg.decoder_heads)
        self.pe_layer = PositionEmbeddingRandom(dim // 2)  # SAM's dense positional encoding, alpha
        if self.modality_codes is not None:  # every modality's bags and queries train (a batch mixes them)
            self.requires_grad_(True)

    @property
    def modality(self) -> str:
        return self.decoder.active

    def select_modality(self, modality: str, freeze_others: bool = True) -> None:
        """Run with ``modality``'s bags and query set; ``freeze_others``: the others get no gradient (False: only
        route, as the universal path does within a batch, where every modality's parameters keep training)."""
        if self.controller is not None:
            self.controller.select(modality, freeze_others)
        self.decoder.select(modality, freeze_others)

    def image_embedding(self, x: torch.Tensor, with_bags: bool = True) -> torch.Tensor:
        """E: B x C_in x H x W (multiples of 16) -> B x C x H/16 x W/16, with the active modality's bags, or with
        none (``with_bags=False``: the plain encoder, f_ViT-SAM / f_LIE of Eq. 1)."""
        bags = self.controller.active_bags() if self.controller is not None and with_bags else None
        x = encoder_input(x, self.input_scaling, self.encoder_scale)
        if self.light:
            return self.neck(self.encoder(x, bags))
        tokens = self.encoder.embed(x)
        for i, block in enumerate(self.encoder.blocks):
            tokens = block(tokens, bags[i] if bags is not None else None)
        return self.neck(tokens.permute(0, 3, 1, 2))

    def decode(self, embedding: torch.Tensor) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """E (B x C x h x w) -> (mask logits B x K x 4h x 4w, patch logits B x K' x h/2^L x w/2^L or None)."""
        patch_logits = None
        if self.sppg is not None:
            patch_logits = self.sppg(embedding)
            embedding = embedding + self.sppg.dense_prompt(patch_logits, embedding.shape[-2:])
        pe = self.pe_layer(tuple(embedding.shape[-2:])).unsqueeze(0).to(embedding.dtype)
        return self.decoder(embedding, pe), patch_logits

    def forward(self, x: torch.Tensor) -> Outputs:
        """x: B x C x H x W (2d) or B x C x D x H x W (3d, slice-wise).

        Returns B x K x (D x) H x W logits, or with deep supervision and SPPG [those, patch logits].
        """
        x, depth, (H, W) = slices_for_vit(self, x)
        if self.modality_codes is None:
            outputs = self._outputs(x, H, W)
        else:
            outputs = self._outputs_per_modality(x, H, W)
        if depth is not None:
            outputs = [unfold_depth(o, depth) for o in outputs]
        return outputs if self.deep_supervision else outputs[0]

    def _outputs(self, x: torch.Tensor, H: int, W: int) -> List[torch.Tensor]:
        """The active modality's outputs for x (B x C x H' x W', padded), cropped to H x W."""
        masks, patch_logits = self.decode(self.image_embedding(x))
        outputs = [F.interpolate(masks, size=x.shape[-2:], mode="bilinear", align_corners=False)[..., :H, :W]]
        if self.deep_supervision and patch_logits is not None:
            outputs.append(patch_logits[..., : -(-H // self.patch_size), : -(-W // self.patch_size)])
        return outputs

    def _outputs_per_modality(self, x: torch.Tensor, H: int, W: int) -> List[torch.Tensor]:
        """The universal path: each sample's modality from its last channel; the samples of one modality run
        together with its bags and query set, and the outputs go back into the batch's order."""
        names = decode_modalities(x[:, -1], self.modality_codes)
        x = x[:, :-1]
        active, order, parts = self.modality, [], []
        for modality in dict.fromkeys(names):
            index = [i for i, name in enumerate(names) if name == modality]
            self.select_modality(modality, freeze_others=False)
            parts.append(self._outputs(x[index], H, W))
            order.extend(index)
        self.select_modality(active, freeze_others=False)
        inverse = torch.argsort(torch.tensor(order, device=x.device))
        return [torch.cat([p[k] for p in parts])[inverse] for k in range(len(parts[0]))]

    def deep_supervision_scales(self, ndim: int) -> List[List[float]]:
        """One nnU-Net target, at full resolution: the patch targets are max-pooled from it by the loss."""
        return [[1.0] * ndim]

    # ------------------------------------------------------------------ checkpoints
    def load_pretrained(self, path) -> LoadReport:
        """A TinyViT file (MobileSAM layout, or ``sam_nnunet distill``'s) for the student, a SAM ViT file for the
        teacher; see :func:`~.light_encoder.load_light_checkpoint` and :func:`~.checkpoint.load_sam_checkpoint`."""
        return load_light_checkpoint(self, path) if self.light else load_sam_checkpoint(self, path)

    def freeze_pretrained(self, report: LoadReport) -> Tuple[int, int]:
        """Freeze the encoder tensors the file supplied (the distilled TinyViT, or SAM's ViT for the teacher);
        the modality bags (the teacher's PEFT tokens; the student's distilled modality knowledge), neck, SPPG and
        QDMD train. Frozen batch norms keep the file's statistics (:class:`~.light_encoder.TinyViTEncoder`)."""
        frozen, _ = freeze_supplied(self, report, prefix="encoder.")
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        return frozen, trainable

    def sam_key_map(self, key: str) -> List[str]:
        """Where a tensor of a checkpoint file goes (empty: not used): the image encoder (SAM ViT or MobileSAM
        TinyViT layout) and its neck, the controller's bags, SAM's positional encoding, two-way transformer and
        upscaling. SAM's mask tokens, hypernetworks and IoU head do not fit K classes and stay unused."""
        if key.startswith("image_encoder.neck."):
            return ["neck." + key[len("image_encoder.neck."):]]
        if key.startswith("image_encoder."):
            return image_encoder_key(key, self.light)
        if key.startswith(CONTROLLER_PREFIX) and self.controller is not None:
            return ["controller." + key[len(CONTROLLER_PREFIX):]]
        if key == "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix":
            return ["pe_layer.positional_encoding_gaussian_matrix"]
        if key.startswith(("mask_decoder.transformer.", "mask_decoder.output_upscaling.")):
            return ["decoder." + key[len("mask_decoder."):]]
        return []

    def trainable_parts(self) -> dict:
        """Trainable parameter count per part."""
        return trainable_by_part(self, ("encoder", "neck", "controller", "sppg", "decoder", "pe_layer"),
                                 part_of=lambda name: name.split(".", 1)[0])

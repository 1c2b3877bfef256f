"""ESP-MedSAM's light image encoder f_LIE (shared/papers/004, section III-B): TinyViT as MobileSAM builds it.

Built from timm's TinyViT parts (``PatchEmbed``, ``ConvLayer`` of MBConv blocks, ``PatchMerging``,
``TinyVitBlock``) in MobileSAM's arrangement, which differs from timm's classifier in two ways:

* the patch merging sits at the *end* of a stage (``layers.i.downsample``), and the last one (to stage 4)
  has stride 1, so the output stays at 1/16 of the input, SAM's embedding grid;
* ``stem_stride=1`` (LiteMedSAM's encoder, ``tiny_vit_litemedsam``): the patch embedding is two 1x1 convolutions
  of stride 1 instead of two 3x3 of stride 2, so the MBConv stage runs at full resolution and the output is at
  1/4 of the input (LiteMedSAM: 64 x 64 for 256 x 256);
* there is no classifier; SAM's neck (kept by the network, ``image_encoder.neck`` in the files) brings the
  last stage's channels to the 256-wide image embedding.

Parameter names follow MobileSAM's (``layers.{i}.blocks.{j}...``), except for timm's conv+BN naming
(``.conv`` for MobileSAM's ``.c``; ``patch_embed.conv1/2`` for ``patch_embed.seq.0/2``):
:func:`mobile_sam_key_map` translates, so ``mobile_sam.pt`` and the files ``sam_nnunet distill`` writes
(MobileSAM layout) load. Inputs of any size that is a multiple of 16 are accepted (MobileSAM's own class only
takes 1024 x 1024): the windowed attention pads each stage to its window as TinyViT does.

Every attention block takes an optional :class:`~.modality_controller.ModalityBag` (Eqs. 2-3); the MBConv
stage has no attention and gets none. Batch norms of a frozen (pretrained) part stay in eval mode while the
network trains, so their running statistics stay those of the checkpoint.
"""
from __future__ import annotations

import re
from typing import TYPE_CHECKING
from typing import List, NamedTuple, Optional, Sequence

import torch
import torch.nn.functional as F
from timm.models.tiny_vit import ConvLayer, ConvNorm, PatchEmbed, PatchMerging, TinyVitBlock
from torch import nn

from sam_nnunet.modeling.blocks.modality_controller import ModalityBag, attend_with_tokens
from sam_nnunet.modeling.blocks.registry import TinyViTConfig

if TYPE_CHECKING:
    from sam_nnunet.modeling.weights.checkpoint import LoadReport

#: LoRA targets a TinyViT block has (its MLP is timm's ``fc1``/``fc2``, not SAM's ``lin1``/``lin2``)
TINYVIT_LORA_TARGETS = ("qkv", "proj")


class _Tokens(NamedTuple):
    """Extra key and value tokens for every window's attention: t x (heads * d) and t x (heads * d_v)."""

    k_tokens: torch.Tensor
    v_tokens: torch.Tensor


class ControlledTinyViTBlock(TinyVitBlock):
    """timm's ``TinyVitBlock`` (same parameters) that also runs with a :class:`ModalityBag` (ESP-MedSAM) or with
    prompt tokens joining its attention (HSP-SAM's Q-prompts)."""

    def prompt_tokens(self, prompts: torch.Tensor) -> _Tokens:
        """Prompt tokens c x C -> their keys and values through this block's own norm and qkv projection, so that
        they join the attention as tokens of the block's input would (their own outputs are not kept)."""
        attn = self.attn
        c = prompts.shape[0]
        _, k, v = attn.qkv(attn.norm(prompts)).view(c, attn.num_heads, -1).split(
            [attn.key_dim, attn.key_dim, attn.val_dim], dim=2)
        return _Tokens(k.reshape(c, -1), v.reshape(c, -1))

    def forward(self, x: torch.Tensor, bag: Optional[ModalityBag] = None,
                prompts: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x: B x H x W x C -> B x H x W x C; prompts: c x C tokens every window also attends to. Without a bag
        and prompts exactly timm's block."""
        if bag is None and prompts is None:
            return super().forward(x)
        extra = bag
        if prompts is not None:
            own = self.prompt_tokens(prompts)
            extra = own if bag is None else _Tokens(torch.cat([bag.k_tokens, own.k_tokens.to(bag.k_tokens.dtype)]),
                                                    torch.cat([bag.v_tokens, own.v_tokens.to(bag.v_tokens.dtype)]))
        B, H, W, C = x.shape
        ws = self.window_size
        shortcut = x
        pad_b, pad_r = (-H) % ws, (-W) % ws
        if pad_b or pad_r:
            x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
        pH, pW = H + pad_b, W + pad_r
        windows = x.view(B, pH // ws, ws, pW // ws, ws, C).transpose(2, 3).reshape(-1, ws * ws, C)
        windows = self._attend(windows, extra)
        x = windows.view(B, pH // ws, pW // ws, ws, ws, C).transpose(2, 3).reshape(B, pH, pW, C)[:, :H, :W]
        x = shortcut + self.drop_path1(x)
        x = self.local_conv(x.permute(0, 3, 1, 2)).reshape(B, C, H * W).transpose(1, 2)
        x = x + self.drop_path2(self.mlp(x)) + (bag.mlp(x) if bag is not None else 0)
        return x.view(B, H, W, C)

    def _attend(self, x: torch.Tensor, bag) -> torch.Tensor:
        """timm's ``Attention.forward`` with extra tokens (a bag's, prompts'): windows N' x L x C -> N' x L x C."""
        attn = self.attn
        n, L, _ = x.shape
        q, k, v = attn.qkv(attn.norm(x)).view(n, L, attn.num_heads, -1).split(
            [attn.key_dim, attn.key_dim, attn.val_dim], dim=3)
        out = attend_with_tokens(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                 attn.get_attention_biases(x.device), bag)
        return attn.proj(out.transpose(1, 2).reshape(n, L, attn.out_dim))


class _Stage(nn.Module):
    """One attention stage: TinyViT blocks, then the patch merging to the next stage (or none)."""

    def __init__(self, blocks: Sequence[nn.Module], downsample: Optional[nn.Module]) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.downsample = downsample


class TinyViTEncoder(nn.Module):
    def __init__(self, cfg: TinyViTConfig, *, in_chans: int = 3) -> None:
        """
        Args:
            cfg: stage widths, depths, heads and windows (``registry.LIGHT_ENCODERS``).
            in_chans: image channels given by nnU-Net (a pretrained RGB stem is mapped onto them on loading).
        """
        super().__init__()
        dims, act = cfg.embed_dims, nn.GELU
        self.patch_size = cfg.patch_size
        self.embed_dims = tuple(dims)
        if cfg.patch_size != 4 * cfg.stem_stride or cfg.stem_stride not in (1, 4):
            raise ValueError(f"TinyViT stem stride {cfg.stem_stride} (1 or 4) gives patch size {4 * cfg.stem_stride}, "
                             f"not {cfg.patch_size}")
        self.patch_embed = PatchEmbed(in_chs=in_chans, out_chs=dims[0], act_layer=act)  # 1/4
        if cfg.stem_stride == 1:  # LiteMedSAM: two 1x1 convolutions, the first stage at full resolution
            self.patch_embed.stride = 1
            self.patch_embed.conv1 = ConvNorm(in_chans, dims[0] // 2, 1, 1, 0)
            self.patch_embed.conv2 = ConvNorm(dims[0] // 2, dims[0], 1, 1, 0)
        stem = ConvLayer(dim=dims[0], depth=cfg.depths[0], act_layer=act, conv_expand_ratio=cfg.mbconv_expand_ratio)
        stem.downsample = PatchMerging(dim=dims[0], out_dim=dims[1], act_layer=act)  # 1/8
        self.layers = nn.ModuleList([stem])
        for i in range(1, len(dims)):
            blocks = [ControlledTinyViTBlock(dim=dims[i], num_heads=cfg.num_heads[i], window_size=cfg.window_sizes[i],
                                             mlp_ratio=cfg.mlp_ratio, act_layer=act) for _ in range(cfg.depths[i])]
            merge = None
            if i + 1 < len(dims):
                merge = PatchMerging(dim=dims[i], out_dim=dims[i + 1], act_layer=act)  # 1/16
                if i + 2 == len(dims):
                    merge.conv2.conv.stride = (1, 1)  # MobileSAM: the last merge keeps 1/16
            self.layers.append(_Stage(blocks, merge))
        self.apply(_init_linear)

    @property
    def out_dim(self) -> int:
        return self.embed_dims[-1]

    def block_dims(self) -> List[int]:
        """Width of each attention block in order (one modality bag each)."""
        return [block.dim for block in self.attention_blocks()]

    def attention_blocks(self) -> List[nn.Module]:
        """The attention blocks in order (where LoRA and bags go; the MBConv stage has none)."""
        return [block for layer in self.layers[1:] for block in layer.blocks]

    def forward(self, x: torch.Tensor, bags: Optional[Sequence[ModalityBag]] = None) -> torch.Tensor:
        """x: B x in_chans x H x W (H, W multiples of p = ``patch_size``: 16, or 4 with a stride-1 stem); bags: one
        per attention block, or None.

        Returns B x out_dim x H/p x W/p.
        """
        return self.forward_stages(x, bags)[-1].permute(0, 3, 1, 2)

    def forward_stages(self, x: torch.Tensor, bags: Optional[Sequence[ModalityBag]] = None,
                       prompts: Optional[Sequence[Optional[torch.Tensor]]] = None) -> List[torch.Tensor]:
        """The output of each attention stage before its patch merging, channels last: B x h_i x w_i x C_i (the last
        is the encoder's output, B x H/p x W/p x out_dim). ``prompts``: per attention stage, c x C_i tokens that join
        the attention of its last block (HSP-SAM's Q-prompts), or None."""
        x = self.patch_embed(x)
        x = self.layers[0].downsample(self.layers[0].blocks(x))
        bag_iter = iter(bags) if bags is not None else None
        outputs = []
        for i, layer in enumerate(self.layers[1:]):
            x = x.permute(0, 2, 3, 1)
            for j, block in enumerate(layer.blocks):
                last = j == len(layer.blocks) - 1
                x = block(x, next(bag_iter) if bag_iter is not None else None,
                          prompts[i] if prompts is not None and last else None)
            outputs.append(x)
            if layer.downsample is not None:
                x = layer.downsample(x.permute(0, 3, 1, 2))
        return outputs

    def train(self, mode: bool = True) -> "TinyViTEncoder":
        """Batch norms whose parameters are frozen (loaded from a checkpoint) keep their statistics."""
        super().train(mode)
        if mode:
            for m in self.modules():
                if isinstance(m, nn.BatchNorm2d) and m.weight is not None and not m.weight.requires_grad:
                    m.eval()
        return self


def _init_linear(m: nn.Module) -> None:
    """timm's TinyViT initialisation of linear layers (truncated normal, std 0.02)."""
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)


_MOBILE_SAM_RENAMES = ((re.compile(r"^patch_embed\.seq\.0\."), "patch_embed.conv1."),
                       (re.compile(r"^patch_embed\.seq\.2\."), "patch_embed.conv2."),
                       (re.compile(r"\.c\.(weight|bias)$"), r".conv.\1"))


def mobile_sam_key_map(key: str) -> Optional[str]:
    """A key of MobileSAM's ``image_encoder`` (without that prefix) -> the :class:`TinyViTEncoder` key, or None
    for its classifier (``head``, ``norm_head``) and neck, which the encoder does not hold."""
    if key.startswith(("head.", "norm_head.", "neck.")):
        return None
    for pattern, repl in _MOBILE_SAM_RENAMES:
        key = pattern.sub(repl, key)
    return key


def image_encoder_key(key: str, light: bool) -> List[str]:
    """A file's ``image_encoder.*`` key (its neck excluded) -> the network's ``encoder.*`` key: a SAM ViT one to one,
    a TinyViT (``light``) through MobileSAM's names; [] for what the encoder does not hold (a TinyViT's classifier)."""
    inner = key[len("image_encoder."):]
    if light:
        inner = mobile_sam_key_map(inner)
    return ["encoder." + inner] if inner is not None else []


def build_lora_tinyvit(cfg: TinyViTConfig, *, in_chans: int, lora_rank: int, lora_targets: Sequence[str] = ("qkv",)
                       ) -> "TinyViTEncoder":
    """The TinyViT of ``cfg`` with LoRA of ``lora_rank`` (0: none) on the ``lora_targets`` of every attention block,
    as HSP-SAM and PG-SAM put LoRA on SAM's ViT; the MBConv stage has no attention and gets none."""
    from sam_nnunet.modeling.blocks.lora import apply_lora

    if lora_rank < 0:
        raise ValueError(f"lora_rank must be >= 0 (0: no LoRA, encoder fine-tuned in full), got {lora_rank}")
    unknown = sorted(set(lora_targets) - set(TINYVIT_LORA_TARGETS))
    if unknown:
        raise ValueError(f"LoRA targets {unknown} do not exist in a TinyViT block; choose from {TINYVIT_LORA_TARGETS}")
    encoder = TinyViTEncoder(cfg, in_chans=in_chans)
    if lora_rank > 0:
        apply_lora(encoder.attention_blocks(), rank=lora_rank, targets=lora_targets)
    return encoder


def is_tinyvit_trunk_key(key: str) -> bool:
    """A tensor of the TinyViT trunk (MobileSAM layout, with the ``image_encoder.`` prefix) that a file must supply
    to count as a pretrained light encoder: everything but the classifier and the neck."""
    return key.startswith("image_encoder.") and mobile_sam_key_map(key[len("image_encoder."):]) is not None


def load_light_checkpoint(model: nn.Module, path) -> "LoadReport":
    """Load a TinyViT file in MobileSAM's layout (``mobile_sam.pt``, or what ``sam_nnunet distill`` writes) into a
    network with a :class:`TinyViTEncoder` ``encoder`` and a ``sam_key_map``.

    The file's checks are the SAM loader's (:func:`~.checkpoint_files.read_sam_state_dict`: unreadable files,
    training checkpoints, SAM 2 ...); in addition a SAM ViT file is refused with where it belongs, and the whole
    TinyViT trunk must be in the file (a frozen student with random parts is not the distilled one).
    """
    from sam_nnunet.modeling.weights.checkpoint import _LORA_KEY, CheckpointError, load_mapped_state, read_sam_state_dict

    sd = read_sam_state_dict(path)
    if any(k.startswith(("image_encoder.blocks.", "image_encoder.patch_embed.proj.")) for k in sd):
        raise CheckpointError(
            f"{path} holds a SAM ViT image encoder (image_encoder.blocks.*), but this network's image encoder is "
            f"the TinyViT student. Give MobileSAM's mobile_sam.pt or a file written by `sam_nnunet distill`; a SAM "
            f"ViT checkpoint is the teacher's (ESPMedSAMTeacherTrainer, or `sam_nnunet distill`'s teacher).")
    stem = sd.get("image_encoder.patch_embed.seq.0.c.weight")
    own = model.encoder.patch_embed.conv1.conv.weight
    if stem is not None and stem.shape[-2:] != own.shape[-2:]:
        fits = "tiny_vit_litemedsam" if stem.shape[-1] == 1 else "tiny_vit_5m"
        raise CheckpointError(
            f"{path} holds a TinyViT whose patch embedding has {stem.shape[-1]}x{stem.shape[-1]} kernels, but this "
            f"network's light encoder has {own.shape[-1]}x{own.shape[-1]} ones. It fits light encoder {fits!r} "
            f"(LiteMedSAM's lite_medsam.pth: 'tiny_vit_litemedsam', e.g. plans preset cpu_medsam; MobileSAM's "
            f"mobile_sam.pt: 'tiny_vit_5m').")
    supplied = {mobile_sam_key_map(k[len("image_encoder."):]) for k in sd if is_tinyvit_trunk_key(k)}
    needed = [k for k in model.encoder.state_dict() if not _LORA_KEY.search(k)]  # LoRA factors are the network's
    absent = [k for k in needed if k not in supplied]
    if absent:
        raise CheckpointError(
            f"{path} does not hold this network's whole TinyViT image encoder (embed dims "
            f"{list(model.encoder.embed_dims)}): {len(absent)} of its {len(needed)} tensors are missing, e.g. "
            f"{absent[:4]}. MobileSAM's mobile_sam.pt fits encoder 'tiny_vit_5m', LiteMedSAM's lite_medsam.pth "
            f"'tiny_vit_litemedsam'; a file from `sam_nnunet distill` "
            f"fits the encoder it was distilled into.")
    return load_mapped_state(model, sd, model.sam_key_map, path)

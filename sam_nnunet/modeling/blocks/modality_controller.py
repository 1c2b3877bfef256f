"""ESP-MedSAM's modality controller (shared/papers/004, section III-B, Eqs. 2-3): per-modality parameter bags.

For every imaging modality n the controller holds, per encoder block, a bag Phi^n = {W_k^n, W_v^n, W_down^n,
W_up^n}:

* W_k^n, W_v^n (t x C each) are tokens concatenated to the keys and values of the block's attention (Eq. 2):
  every query also attends to the t modality tokens. They carry no position, so the relative-position bias
  of the pairs (query, token) is zero; in windowed attention every window attends to the same t tokens.
* W_down^n (C x r) and W_up^n (r x C) form a bottleneck MLP parallel to the block's MLP Phi (Eq. 3):
  E <- E + Phi(E) + GELU(E W_down) W_up. Eq. 3 is followed literally: the bottleneck reads E itself, not the
  MLP's normalised input. W_up starts at zero and the value tokens near zero, so a fresh bag starts close
  to the plain encoder (a distilled or pretrained one is not disturbed at the first step).

The same bags serve the teacher (SAM's ViT, frozen: ESP-MedSAM-T's PEFT tokens, :class:`ControlledSAMBlock`)
and the student (TinyViT, :mod:`.light_encoder`).

Which bag is used: the dataset's modality, decided once before training (:func:`resolve_modality`: a plans
switch, an ``"imaging_modality"`` entry in dataset.json, or the channel names), recorded with the model and used at
inference; never the label. Bags of the other modalities exist (a distilled checkpoint may hold them all)
but are switched off: no gradient, not in any update (DDP requires every trainable parameter to get one).

Choices where the paper gives no number: t = 8 tokens and r = C / 4 (both switches).
"""
from __future__ import annotations

import re
from typing import List, Mapping, Optional, Sequence

import torch
import torch.nn.functional as F
from segment_anything.modeling.image_encoder import Block, add_decomposed_rel_pos, window_partition, window_unpartition
from torch import nn

#: dataset.json entry naming the imaging modality
DATASET_JSON_KEY = "imaging_modality"
#: the modalities a bag can exist for (the issue's list; the paper's six plus CT and MRI)
MODALITIES = ("CT", "MRI", "endoscopy", "dermoscopy", "X-ray", "ultrasound", "microscopy", "fundus")

# channel names nnU-Net datasets use, to a modality (first match wins; case-insensitive, whole name)
_CHANNEL_PATTERNS = (
    (r"ct|.*computed.?tomograph.*|.*\bct\b.*", "CT"),
    (r"mri?|.*mri.*|t1.*|t2.*|flair|adc|dwi|pd|.*cine.*|swi|bold|.*magnetic.*", "MRI"),
    (r".*endoscop.*|.*colonoscop.*|.*gastroscop.*", "endoscopy"),
    (r".*dermoscop.*|.*dermatoscop.*", "dermoscopy"),
    (r"x.?ray|cxr|dx|cr|.*radiograph.*|.*mammogra.*", "X-ray"),
    (r"us|.*ultraso.*|.*echo.*|.*sonograph.*", "ultrasound"),
    (r".*microscop.*|.*histo.*|.*patholog.*|.*h&?e.*|.*nuclei.*", "microscopy"),
    (r".*fundus.*|.*retina.*|.*oct.*", "fundus"),
)


def canonical_modality(name: str) -> str:
    """``name`` in :data:`MODALITIES` spelling (case-insensitive), or a ValueError naming the choices."""
    for modality in MODALITIES:
        if name.lower() == modality.lower():
            return modality
    raise ValueError(f"Unknown imaging modality {name!r}; choose one of {list(MODALITIES)}")


def modality_of_channel(channel_name: str) -> Optional[str]:
    """The modality a dataset.json channel name stands for (``"CT"``, ``"cineMRI"``, ``"T2"`` ...), or None."""
    name = channel_name.strip().lower()
    for pattern, modality in _CHANNEL_PATTERNS:
        if re.fullmatch(pattern, name):
            return modality
    return None


def resolve_modality(dataset_json: Mapping, override: Optional[str] = None) -> str:
    """The dataset's imaging modality, from (first that says): ``override`` (the plans' ``"modality"`` switch),
    dataset.json's ``"imaging_modality"`` entry (written by this project's 2D converters: endoscopy, dermoscopy; not
    ``"modality"``, which nnU-Net reads as the legacy name of ``channel_names``), or its ``channel_names`` (all
    channels must agree). Never from labels. A clear error when none says."""
    if override:
        return canonical_modality(override)
    if dataset_json.get(DATASET_JSON_KEY):
        return canonical_modality(str(dataset_json[DATASET_JSON_KEY]))
    channels = [str(c) for c in dict(dataset_json.get("channel_names", {})).values()]
    found = {modality_of_channel(c) for c in channels}
    if len(found) == 1 and None not in found:
        return found.pop()
    raise ValueError(
        f"Cannot tell the imaging modality of dataset {dataset_json.get('name', '')!r} from its channel names "
        f"{channels}. Add \"{DATASET_JSON_KEY}\": \"<one of {list(MODALITIES)}>\" to its dataset.json, or "
        f"\"modality\": \"...\" to the \"sam_nnunet\" block of the plans configuration.")


class ModalityBag(nn.Module):
    """Phi^n of one block: key/value tokens (Eq. 2) and the parallel bottleneck MLP (Eq. 3)."""

    def __init__(self, dim: int, *, num_tokens: int = 8, hidden_dim: Optional[int] = None) -> None:
        """dim: C, the block's width (keys and values are C wide in both encoders); num_tokens: t; hidden_dim: r."""
        super().__init__()
        self.k_tokens = nn.Parameter(torch.randn(num_tokens, dim) * 0.02)
        self.v_tokens = nn.Parameter(torch.randn(num_tokens, dim) * 0.02)
        self.down = nn.Linear(dim, hidden_dim or max(dim // 4, 1))
        self.up = nn.Linear(self.down.out_features, dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def mlp(self, x: torch.Tensor) -> torch.Tensor:
        """Eq. 3's GELU(E W_down) W_up: ... x C -> ... x C."""
        return self.up(F.gelu(self.down(x)))


class ModalityController(nn.Module):
    """f_MC: one :class:`ModalityBag` per (modality, block); ``active`` is the one the network uses."""

    def __init__(self, block_dims: Sequence[int], *, modalities: Sequence[str] = MODALITIES, active: str,
                 num_tokens: int = 8, hidden_ratio: float = 0.25) -> None:
        """
        Args:
            block_dims: width of each encoder block, in order (one bag per block and modality).
            modalities: the modalities that get bags (all of :data:`MODALITIES` by default, so that a checkpoint
                distilled on several modalities loads whole).
            active: the dataset's modality; the only bag set that trains and runs.
            num_tokens / hidden_ratio: t and r / C of every bag.
        """
        super().__init__()
        self.modalities = tuple(canonical_modality(m) for m in modalities)
        self.bags = nn.ModuleDict({
            _key(m): nn.ModuleList(ModalityBag(d, num_tokens=num_tokens, hidden_dim=max(int(d * hidden_ratio), 1))
                                   for d in block_dims)
            for m in self.modalities})
        self.active = ""
        self.select(active)

    def select(self, modality: str, freeze_others: bool = True) -> None:
        """Make ``modality``'s bags the ones used; ``freeze_others``: the others get no gradient (and are skipped by
        the optimiser). False only routes (the universal path, where a batch mixes modalities)."""
        modality = canonical_modality(modality)
        if modality not in self.modalities:
            raise ValueError(f"No bags for modality {modality!r}; this controller has {list(self.modalities)}")
        self.active = modality
        if freeze_others:
            for name, bags in self.bags.items():
                bags.requires_grad_(name == _key(modality))

    def active_bags(self) -> List[ModalityBag]:
        """The active modality's bag of every block, in block order."""
        return list(self.bags[_key(self.active)])


def _key(modality: str) -> str:
    """ModuleDict keys cannot hold '-' or '.': X-ray -> X_ray."""
    return modality.replace("-", "_")


def attend_with_tokens(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: Optional[torch.Tensor],
                       bag: ModalityBag) -> torch.Tensor:
    """Eq. 2: softmax(Q (K ^ W_k)^T / sqrt(d)) (V ^ W_v).

    Args:
        q, k: B x heads x N x d; v: B x heads x N x d_v.
        bias: additive attention bias over the N x N image pairs (heads x N x N or B x heads x N x N), or None;
            the pairs with a modality token get none.
        bag: the tokens, t x (heads * d) and t x (heads * d_v).
    Returns B x heads x N x d_v.
    """
    B, heads, N, _ = q.shape
    t = bag.k_tokens.shape[0]
    k_tok = bag.k_tokens.to(k.dtype).view(t, heads, -1).transpose(0, 1).expand(B, -1, -1, -1)
    v_tok = bag.v_tokens.to(v.dtype).view(t, heads, -1).transpose(0, 1).expand(B, -1, -1, -1)
    k = torch.cat([k, k_tok], dim=2)
    v = torch.cat([v, v_tok], dim=2)
    if bias is not None:
        bias = F.pad(bias.to(q.dtype), (0, t))
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias)  # scale = d ** -0.5


class ControlledSAMBlock(Block):
    """segment-anything's ViT ``Block`` (same parameter names) that also runs with a :class:`ModalityBag`."""

    def __init__(self, *, index: int = 0, **block_kwargs) -> None:
        """index: position in the encoder (unused); block_kwargs: segment-anything ``Block``'s."""
        super().__init__(**block_kwargs)

    def forward(self, x: torch.Tensor, bag: Optional[ModalityBag] = None) -> torch.Tensor:
        """x: B x H x W x C -> B x H x W x C; without a bag exactly segment-anything's block."""
        if bag is None:
            return super().forward(x)
        shortcut = x
        x = self.norm1(x)
        if self.window_size > 0:
            H, W = x.shape[1], x.shape[2]
            x, pad_hw = window_partition(x, self.window_size)
        x = self._attend(x, bag)
        if self.window_size > 0:
            x = window_unpartition(x, self.window_size, pad_hw, (H, W))
        x = shortcut + x
        return x + self.mlp(self.norm2(x)) + bag.mlp(x)

    def _attend(self, x: torch.Tensor, bag: ModalityBag) -> torch.Tensor:
        """segment-anything's ``Attention.forward`` with the bag's tokens: B x H x W x C -> B x H x W x C."""
        attn = self.attn
        B, H, W, C = x.shape
        heads = attn.num_heads
        q, k, v = attn.qkv(x).reshape(B, H * W, 3, heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        bias = None
        if attn.use_rel_pos:
            q_flat = q.reshape(B * heads, H * W, -1)
            bias = add_decomposed_rel_pos(q_flat.new_zeros(B * heads, H * W, H * W), q_flat, attn.rel_pos_h,
                                          attn.rel_pos_w, (H, W), (H, W)).view(B, heads, H * W, H * W)
        out = attend_with_tokens(q, k, v, bias, bag)
        return attn.proj(out.transpose(1, 2).reshape(B, H, W, C))


"""Self-Prompt-SAM's prompts from auxiliary masks (section 2.4, appendix A).

For every slice and every class k of the auxiliary multi-class mask (the prompt generator's argmax,
one-hot encoded), three prompts for SAM's prompt encoder:

* **box**: the tight bounding box of class k's pixels, ``(x0, y0, x1, y1)`` in pixels;
* **point**: the pixel farthest from the boundary of class k's mask, i.e. the argmax of its
  Euclidean distance transform (the paper's Fig. 1b: more robust than the box centre, which can lie
  outside the mask, e.g. for the ring-shaped myocardium);
* **mask**: class k's binary mask, area-downsampled to the size of SAM's mask input (4x the token grid).

Prompts are computed without gradient (they are indices and a thresholded mask).

Choices:

* Every segmentation head gets prompts, background included (the paper's Fig. 1c shows SAM outputs
  for the background class; the MC-Adapter needs all K maps).
* Outside the image counts as boundary (the mask is padded with one background pixel before the
  distance transform): the point is central in the image as well, and a mask that fills the whole
  slice still has a well-defined point.
* A class absent from a slice (``present`` False) gets a zero box and a zero point, as the paper's
  appendix A says ("we assign the values of both a box prompt and a point prompt to zero"), and an
  all-zero mask: never the whole-image box that a naive min/max over an empty mask produces.
  :class:`~sam_nnunet.modeling.self_prompt_sam.SelfPromptSAM` can instead replace them with SAM's
  own padding embeddings (``empty_prompt="padding"``).
* Distance transform: SciPy's exact EDT on CPU; on GPU an exact batched torch version (1D nearest
  background along columns, then a brute-force min over each row, in chunks) with the same result.
  The torch version is also the one traced into an ONNX model (``sam_nnunet export-onnx``): the
  column pass is a log-step prefix maximum made of shifts and maxima (ONNX has no CumMax), and the
  SciPy path is never taken while tracing, since a tracer would record its output as a constant.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import distance_transform_edt


@dataclass
class ClassPrompts:
    """Prompts for N slices x K classes."""

    boxes: torch.Tensor  #: N x K x 4 (x0, y0, x1, y1), float pixels
    points: torch.Tensor  #: N x K x 2 (x, y), float pixels
    present: torch.Tensor  #: N x K bool: class k has pixels in slice n
    masks: torch.Tensor  #: N x K x h_m x w_m in [0, 1]


def _farthest_scipy(masks: torch.Tensor) -> torch.Tensor:
    out = torch.zeros(masks.shape[0], 2, dtype=torch.long)
    arr = masks.cpu().numpy()
    for i, m in enumerate(arr):
        if m.any():
            dist = distance_transform_edt(np.pad(m, 1))[1:-1, 1:-1]
            out[i] = torch.as_tensor(np.unravel_index(int(np.argmax(dist)), m.shape))
    return out.to(masks.device)


def _prefix_max(x: torch.Tensor, fill: int) -> torch.Tensor:
    """Inclusive running maximum along dim 1 of an M x H x W tensor (``cummax(1).values``), by log2(H)
    shifted maxima (Hillis-Steele scan): exact, and exportable to ONNX, which has no CumMax."""
    H, shift = x.shape[1], 1
    while shift < H:
        x = torch.maximum(x, F.pad(x[:, : H - shift], (0, 0, shift, 0), value=fill))
        shift *= 2
    return x


def squared_edt_torch(masks: torch.Tensor, chunk_elements: int = 1 << 25) -> torch.Tensor:
    """Exact squared Euclidean distance of every mask pixel to the nearest non-mask pixel or the image
    border: M x H x W bool -> M x H x W float (0 outside the masks).

    While tracing (ONNX export) the row pass runs unchunked: M is the dynamic batch there."""
    m = F.pad(masks, (1, 1, 1, 1), value=False)
    M, H, W = m.shape
    far = H + W
    idx = torch.arange(H, device=m.device).view(1, H, 1).expand(M, H, W)
    above = _prefix_max(torch.where(~m, idx, torch.full_like(idx, -far)), -far)
    below = -_prefix_max(torch.where(~m, -idx, torch.full_like(idx, -2 * far)).flip(1), -2 * far).flip(1)
    g2 = torch.minimum(idx - above, below - idx).float().pow(2)  # squared distance along the column
    xs = torch.arange(W, device=m.device, dtype=torch.float32)
    dx2 = (xs.view(W, 1) - xs.view(1, W)).pow(2)  # W (x) x W (x')
    if torch.jit.is_tracing():
        out = (g2.unsqueeze(2) + dx2).amin(dim=-1)
    else:
        step = max(1, chunk_elements // (H * W * W))
        out = torch.empty_like(g2)
        for s in range(0, M, step):
            out[s:s + step] = (g2[s:s + step].unsqueeze(2) + dx2).amin(dim=-1)
    return out[:, 1:-1, 1:-1] * masks


def _farthest_torch(masks: torch.Tensor) -> torch.Tensor:
    M, H, W = masks.shape
    flat = squared_edt_torch(masks).view(M, -1).argmax(dim=1)
    return torch.stack([flat // W, flat % W], dim=1)


def farthest_from_boundary(masks: torch.Tensor) -> torch.Tensor:
    """masks: M x H x W bool -> M x 2 long ``(y, x)``: the mask pixel with the largest Euclidean distance
    to the mask's boundary (first one in row-major order on ties; ``(0, 0)`` for an empty mask)."""
    if masks.ndim != 3:
        raise ValueError(f"expected M x H x W masks, got shape {tuple(masks.shape)}")
    masks = masks.bool()
    if masks.is_cuda or torch.jit.is_tracing():
        return torch.where(masks.flatten(1).any(1, keepdim=True), _farthest_torch(masks), 0)
    return _farthest_scipy(masks)


def _first_last(any_along: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """... x L bool -> (first, last) True index along L (garbage where none is True)."""
    L = any_along.shape[-1]
    a = any_along.to(torch.uint8)
    return a.argmax(-1), L - 1 - a.flip(-1).argmax(-1)


@torch.no_grad()
def prompts_from_masks(aux_logits: torch.Tensor, mask_size: Tuple[int, int]) -> ClassPrompts:
    """aux_logits: N x K x H x W (the generator's full-resolution output, per slice) -> prompts.

    ``mask_size``: (h_m, w_m) of SAM's mask input (4x the token grid; H and W must be multiples of it).
    """
    N, K, H, W = aux_logits.shape
    onehot = F.one_hot(aux_logits.detach().argmax(1), K).permute(0, 3, 1, 2).bool()  # N x K x H x W
    present = onehot.flatten(2).any(-1)
    y0, y1 = _first_last(onehot.any(-1))
    x0, x1 = _first_last(onehot.any(-2))
    boxes = torch.stack([x0, y0, x1, y1], dim=-1).float() * present.unsqueeze(-1)
    if torch.jit.is_tracing():  # ONNX export: one class at a time bounds the row pass to N x H x W x W
        yx = torch.stack([farthest_from_boundary(onehot[:, k]) for k in range(K)], dim=1)
    else:
        yx = farthest_from_boundary(onehot.flatten(0, 1)).view(N, K, 2)
    points = yx.flip(-1).float() * present.unsqueeze(-1)
    # area downsampling by a whole factor (= interpolate(mode="area")); a constant kernel keeps it exportable
    factor = (int(H) // mask_size[0], int(W) // mask_size[1])
    masks = F.avg_pool2d(onehot.float(), kernel_size=factor, stride=factor)
    return ClassPrompts(boxes=boxes, points=points, present=present, masks=masks)

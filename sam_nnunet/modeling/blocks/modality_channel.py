"""The modality of each case as an input channel: how ESP-MedSAM's universal path carries it to the network.

ESP-MedSAM selects modality bags and query sets per image (shared/papers/004, section III-A). nnU-Net gives a network
the image channels only: no case name reaches ``forward`` in training, validation or ``nnUNetv2_predict``. So the
universal dataset (:mod:`sam_nnunet.datasets.universal`) gives every case one more channel, constant over the image,
whose value codes the modality, and nnU-Net carries it like any channel: channel name ``"noNorm"`` (no
normalisation), cropped, resampled, augmented and tiled with the image. The network reads the code per sample
(:func:`decode_modalities`) and drops the channel before its encoder.

The code of the i-th modality is ``10 * 4**i``. The spacing survives nnU-Net's augmentations: multiplicative
brightness and contrast (each x0.75-1.25, so together at most x0.56-1.56, inside the factor-2 band around a code),
Gaussian noise (sigma <= 0.32, small against 10), gamma (which keeps an image's range), blur and low-resolution
simulation (constant regions stay constant). Zero padding (rotations, scaling, images smaller than the patch, the
sliding window's padding) is left out by reading only pixels above half the 99th percentile, and the median of
those is the sample's code. A value no code is near is an error that names the codes.
"""
from __future__ import annotations

import math
from typing import Dict, List, Mapping, Sequence

import torch

#: code of the first modality; the i-th is CODE_BASE * CODE_RATIO ** i
CODE_BASE = 10.0
CODE_RATIO = 4.0
#: the normalisation nnU-Net must leave the channel alone with (its channel name)
CHANNEL_NAME = "noNorm"
#: the dataset.json entry that makes a dataset universal: {"modality_codes", "sources", "case_modalities"}
UNIVERSAL_KEY = "sam_nnunet_universal"


def modality_codes(modalities: Sequence[str]) -> Dict[str, float]:
    """modality -> the value of its channel, in the given order."""
    return {m: CODE_BASE * CODE_RATIO ** i for i, m in enumerate(modalities)}


def decode_modalities(channel: torch.Tensor, codes: Mapping[str, float]) -> List[str]:
    """channel: B x H x W (the code channel of a batch, as augmented and padded) -> the modality of each sample.

    Computed where the batch is (one B-value transfer per forward, not the channel)."""
    names = list(codes)
    flat = channel.detach().flatten(1).float()
    top = torch.quantile(flat, 0.99, dim=1, keepdim=True) if flat.numel() <= 1 << 24 else flat.amax(1, keepdim=True)
    bright = torch.where((flat > 0.5 * top) & (top > 0), flat, torch.full_like(flat, float("nan")))
    values = torch.nanmedian(bright, dim=1).values.double().cpu()
    logs = torch.log(torch.tensor([float(codes[n]) for n in names], dtype=torch.float64))
    found = []
    for value in values.tolist():
        distance = (logs - math.log(value)).abs() if value == value and value > 0 else None
        if distance is None or float(distance.min()) > math.log(2.0):
            shown = 0.0 if value != value else value
            raise ValueError(f"the modality channel reads {shown:.3g}, which codes none of the modalities "
                             f"{dict(codes)}: each case needs its modality channel (`sam_nnunet modality-channel`)")
        found.append(names[int(distance.argmin())])
    return found

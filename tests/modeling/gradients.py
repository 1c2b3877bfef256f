"""What the every-parameter-gets-a-gradient tests share: a gradient that exists but is negligible next to the
others is flagged as well as a missing or all-zero one (a parameter whose effect a later operation cancels gets
gradients of that kind, and DDP's check does not catch it)."""
from typing import Iterable, List

from torch import nn


#: parameters whose gradient is zero in exact arithmetic by construction, kept for a checkpoint layout: a key
#: projection's bias adds the same q.b to every logit of a query, which the softmax cancels (SAM's attention)
DEAD_BY_DESIGN = ("k_proj.bias",)


def weak_gradients(module: nn.Module, *, ratio: float = 1e-5, exempt: Iterable[str] = ()) -> List[str]:
    """Trainable parameters of ``module`` (after a backward pass) whose gradient RMS is below ``ratio`` times the
    median gradient RMS of its trainable parameters, a missing gradient counting as 0. ``exempt``: name parts of
    parameters known to start at an exactly zero gradient (LoRA's A while B is at its zero initialisation), besides
    :data:`DEAD_BY_DESIGN`.

    The ratio: small but live gradients measured here sit at 5e-5 of the median and above (ESP-MedSAM's key tokens
    without SPPG, PG-SAM's attention-norm bias at 4e-4), cancelled ones at 4e-7 and below (a shift before a
    normalisation that removes it: the bias of PG-SAM's old Gamma_channel affine, 3e-7; the literal per-position W_s
    of Eq. 1, 5e-7; key biases, 1e-8). A cancelled *scale* keeps a gradient through the normalisation's epsilon
    (the old Gamma_channel weight: 5e-5 to 2e-4), so an affine is caught by its shift."""
    rms = {name: (p.grad.double().pow(2).mean().sqrt().item() if p.grad is not None else 0.0)
           for name, p in module.named_parameters() if p.requires_grad}
    median = sorted(rms.values())[len(rms) // 2]
    exempt = tuple(exempt) + DEAD_BY_DESIGN
    return sorted(name for name, value in rms.items()
                  if value < ratio * median and not any(part in name for part in exempt))

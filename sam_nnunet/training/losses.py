"""ESP-MedSAM's losses (shared/papers/004): Eq. 8's lambda * focal + Dice on the masks, Eq. 5's BCE on the patch map.

* Focal loss: the multi-class (softmax) form, -(1 - p_t)^gamma log p_t averaged over pixels, gamma = 2; the
  paper's masks are binary sigmoid outputs, nnU-Net's are K-way softmax outputs, for which this is the focal loss.
* Dice: nnU-Net's ``MemoryEfficientSoftDiceLoss`` on the softmax, without background, batch Dice as the plans say.
* lambda is not given in the paper; SAM's 20 : 1 (focal : Dice) is used (``focal_weight``).
* nnU-Net's ignore label is left out of both mask terms; in the patch targets it counts as no class.
"""
from __future__ import annotations

from typing import List, Optional, Union

import torch
import torch.nn.functional as F
from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss
from nnunetv2.utilities.helpers import softmax_helper_dim1
from torch import nn

from sam_nnunet.modeling.blocks.patch_prompt import patch_targets


class FocalLoss(nn.Module):
    def __init__(self, gamma: float = 2.0, ignore_label: Optional[int] = None) -> None:
        super().__init__()
        self.gamma = gamma
        self.ignore_label = ignore_label

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """logits: B x K x ...; target: B x 1 x ... labels -> mean of -(1 - p_t)^gamma log p_t over labelled pixels."""
        labels = target[:, 0].long()
        valid = None
        if self.ignore_label is not None:
            valid = labels != self.ignore_label
            labels = torch.where(valid, labels, torch.zeros_like(labels))
        log_pt = F.log_softmax(logits.float(), dim=1).gather(1, labels.unsqueeze(1))[:, 0]
        loss = -((1 - log_pt.exp()) ** self.gamma) * log_pt
        if valid is not None:
            return (loss * valid).sum() / valid.sum().clamp_min(1)
        return loss.mean()


class FocalDiceLoss(nn.Module):
    """Eq. 8: lambda * focal + Dice."""

    def __init__(self, *, focal_weight: float = 20.0, batch_dice: bool = False, ddp: bool = False,
                 ignore_label: Optional[int] = None) -> None:
        super().__init__()
        self.focal_weight = focal_weight
        self.ignore_label = ignore_label
        self.focal = FocalLoss(ignore_label=ignore_label)
        self.dice = MemoryEfficientSoftDiceLoss(apply_nonlin=softmax_helper_dim1, batch_dice=batch_dice, do_bg=False,
                                                smooth=1e-5, ddp=ddp)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """logits B x K x ...; target B x 1 x ... -> scalar."""
        mask = None
        if self.ignore_label is not None:
            mask = (target != self.ignore_label).float()
            target = torch.where(target == self.ignore_label, torch.zeros_like(target), target)
        return self.focal_weight * self.focal(logits, target) + self.dice(logits, target, loss_mask=mask)


class ESPMedSAMLoss(nn.Module):
    """The network's outputs [masks, patch logits] against nnU-Net's single full-resolution target: Eq. 8 on the
    masks plus ``patch_weight`` x Eq. 5 (BCE) on the patch map against the max-pooled label."""

    def __init__(self, mask_loss: nn.Module, *, num_classes: int, patch: int, patch_weight: float = 1.0) -> None:
        """num_classes: K (background included); patch: pixels per patch side (the network's 16 * 2^L)."""
        super().__init__()
        self.mask_loss = mask_loss
        self.num_classes = num_classes
        self.patch = patch
        self.patch_weight = patch_weight

    def forward(self, outputs: Union[torch.Tensor, List[torch.Tensor]],
                targets: Union[torch.Tensor, List[torch.Tensor]]) -> torch.Tensor:
        if isinstance(outputs, torch.Tensor):  # deep supervision off: masks only
            return self.mask_loss(outputs, targets[0] if isinstance(targets, (list, tuple)) else targets)
        target = targets[0]
        loss = self.mask_loss(outputs[0], target)
        if len(outputs) > 1:
            patch_logits = outputs[1]
            p = patch_targets(target, self.num_classes, self.patch, size=patch_logits.shape[-2:])
            loss = loss + self.patch_weight * F.binary_cross_entropy_with_logits(patch_logits.float(), p)
        return loss

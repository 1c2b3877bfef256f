"""Learning-rate schedules with nnU-Net's interface (``step(current_epoch)``, ``max_steps``), beside its poly decay."""
from __future__ import annotations

from typing import Optional

from torch.optim.lr_scheduler import _LRScheduler


class ExponentialLRScheduler(_LRScheduler):
    """lr = initial_lr * final_fraction ** (step / max_steps): exponential decay that ends at ``final_fraction`` of
    the initial rate after ``max_steps`` epochs, however many that is (the benchmark stretches ``max_steps`` to its
    budget, as it does nnU-Net's ``PolyLRScheduler``)."""

    def __init__(self, optimizer, initial_lr: float, max_steps: int, final_fraction: float = 0.01,
                 current_step: Optional[int] = None) -> None:
        if not 0 < final_fraction <= 1:
            raise ValueError(f"final_fraction must be in (0, 1], got {final_fraction}")
        self.optimizer = optimizer
        self.initial_lr = initial_lr
        self.max_steps = max_steps
        self.final_fraction = final_fraction
        self.ctr = 0
        super().__init__(optimizer, current_step if current_step is not None else -1)

    def step(self, current_step: Optional[int] = None) -> None:
        if current_step is None or current_step == -1:
            current_step = self.ctr
            self.ctr += 1
        lr = self.initial_lr * self.final_fraction ** (min(current_step, self.max_steps) / max(self.max_steps, 1))
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]

    def get_last_lr(self):
        return self._last_lr

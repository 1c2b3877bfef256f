"""What keeps a long training run from losing work: non-finite steps and checkpoint timing.

Two pieces, used by :class:`sam_nnunet.training.sam_trainer.SAMTrainerBase`:

* :class:`NonFiniteGuard` watches every optimiser step. Without AMP (CPU, or AMP off), nnU-Net's
  ``train_step`` applies whatever gradient the loss gave, so one NaN loss turns every weight into NaN
  and the run trains on garbage until the next checkpoint is refused. The guard is an optimiser
  *step pre-hook*: when any gradient is not finite it drops all gradients, which makes the step a
  no-op (PyTorch's optimisers skip parameters without gradient, weight decay and momentum included),
  exactly what AMP's grad scaler does with an overflowing step. The weights therefore stay the last
  finite ones. The trainer counts consecutive non-finite steps (non-finite loss or skipped update)
  and stops the run after ``max_consecutive`` of them: one bad batch is survived, a diverged run is
  not continued. Under DDP the gradients are all-reduced before the hook runs, so every rank skips
  the same steps; the trainer all-reduces its "bad step" flag so that every rank also stops at the
  same iteration (otherwise the others would hang in the next collective).
* :class:`SaveSchedule` decides when ``checkpoint_latest.pth`` is written: every ``every_epochs``
  epochs (nnU-Net's ``save_every``) *or* when ``every_minutes`` have passed since the last one, so a
  run of any length and any epoch duration can be resumed with ``--c`` having lost at most that much.
"""
from __future__ import annotations

import time
from typing import Optional

import torch


class NonFiniteGuard:
    """Optimiser step pre-hook that skips updates with non-finite gradients; counts bad steps in a row."""

    def __init__(self, optimizer: torch.optim.Optimizer, max_consecutive: int) -> None:
        if max_consecutive < 1:
            raise ValueError(f"max_consecutive must be at least 1, got {max_consecutive}")
        self.max_consecutive = max_consecutive
        self.consecutive = 0
        self.total = 0
        self.last_finite_step: Optional[int] = None
        self.steps = 0
        self._skipped = False
        self._handle = optimizer.register_step_pre_hook(self._pre_step)

    def _pre_step(self, optimizer: torch.optim.Optimizer, args, kwargs) -> None:
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if grads and not bool(torch.stack([torch.isfinite(g).all() for g in grads]).all()):
            for group in optimizer.param_groups:
                for p in group["params"]:
                    p.grad = None
            self._skipped = True

    def pop_skipped(self) -> bool:
        """Whether the hook skipped the step since the last call."""
        skipped, self._skipped = self._skipped, False
        return skipped

    def record(self, bad: bool) -> bool:
        """Count one training step; returns True when the run must stop (too many bad steps in a row)."""
        self.steps += 1
        if bad:
            self.consecutive += 1
            self.total += 1
        else:
            self.consecutive = 0
            self.last_finite_step = self.steps
        return self.consecutive >= self.max_consecutive

    def remove(self) -> None:
        self._handle.remove()


class SaveSchedule:
    """When to write ``checkpoint_latest.pth``: every N epochs or every M minutes, whichever comes first."""

    def __init__(self, every_epochs: int, every_minutes: Optional[float], clock=time.monotonic) -> None:
        self.every_epochs = every_epochs
        self.every_minutes = every_minutes
        self._clock = clock
        self.last_save = clock()

    def saved(self) -> None:
        self.last_save = self._clock()

    def by_epochs(self, epoch: int) -> bool:
        """nnU-Net's own rule (it writes after epoch ``epoch`` when this holds)."""
        return (epoch + 1) % self.every_epochs == 0

    def by_time(self) -> bool:
        return self.every_minutes is not None and self._clock() - self.last_save >= 60 * self.every_minutes

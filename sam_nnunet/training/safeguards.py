"""What keeps a long training run from losing work: non-finite steps, checkpoint timing, overwrite and resume guards.

:class:`RunSafeguards` is a mixin for any nnU-Net trainer (``class SafeTrainer(RunSafeguards, nnUNetTrainer)``;
every SAM trainer has it through :class:`~sam_nnunet.training.sam_trainer.SAMTrainerBase`). It overrides only hooks
that nnU-Net's own trainer variants override (``initialize``, ``train_step``, ``save_checkpoint``,
``load_checkpoint``, ``on_train_start``, ``on_epoch_end``) and reads only attributes that ``nnUNetTrainer.__init__``
sets. What it adds:

* non-finite steps are skipped and counted; a run with ``max_nonfinite_steps`` of them in a row stops with
  :class:`TrainingDiverged`, keeping the last finite weights as ``checkpoint_latest.pth`` (``--c`` repeats that
  epoch); non-finite weights are never written;
* checkpoints are written to ``<name>.partial``, synced to disk and renamed (:mod:`sam_nnunet.files`), so a run
  killed while saving resumes from its previous one (left-over ``.partial`` files are removed at the next start);
* ``checkpoint_latest.pth`` every ``save_every`` epochs (default: at least 10 times a run) or ``save_minutes``
  minutes, whichever comes first;
* a fold that holds checkpoints is never trained over without ``--c``;
* ``sam_nnunet_run.json`` records what a resumed run must agree on (:meth:`RunSafeguards.run_identity`; written
  whole at every start); a trainer that adds to it checks it in :meth:`RunSafeguards.check_resume`. ``--c`` without
  that file (or with a damaged one) is refused: the check cannot be skipped.

Its settings (``save_every``, ``save_minutes``, ``max_nonfinite_steps``) come from the class, the plans and the
environment (:mod:`sam_nnunet.training.settings`). The two pieces it is built from:

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

import glob
import json
import os
import time
from typing import Optional

import numpy as np
import torch
import torch.distributed as dist

from sam_nnunet.files import publish, write_json
from sam_nnunet.modeling.common import bare_network
from sam_nnunet.training.settings import resolve_settings

RUN_INFO_FILE = "sam_nnunet_run.json"


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


def non_finite_entries(network: torch.nn.Module) -> list:
    """Names of the floating-point entries of ``network``'s state dict (weights *and* buffers, e.g. BatchNorm's
    running statistics) that hold NaN or inf."""
    return [name for name, t in network.state_dict().items()
            if t.is_floating_point() and not bool(torch.isfinite(t).all())]


class TrainingDiverged(RuntimeError):
    """Training produced non-finite losses or weights; the message says what was kept and how to go on."""


class RunSafeguards:
    """Mixin placed before an ``nnUNetTrainer`` in the bases: the module docstring lists what it guards."""

    #: class defaults of the safeguard settings (None: nnU-Net's save_every, bounded to 10 saves a run)
    save_every: Optional[int] = None
    save_minutes: float = 15.0
    max_nonfinite_steps: int = 5

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        # nnU-Net's signature, spelled out: nnUNetTrainer.__init__ records its arguments by the names in it
        super().__init__(plans, configuration, fold, dataset_json, device)
        settings = resolve_settings(type(self), self.configuration_manager.configuration,
                                    ("save_every", "save_minutes", "max_nonfinite_steps"))
        # nnU-Net's constructor sets save_every (50), which its on_epoch_end reads
        self._save_every_given = settings["save_every"]
        self.save_every = settings["save_every"] or self.save_every
        self.save_minutes = float(settings["save_minutes"])
        self.max_nonfinite_steps = int(settings["max_nonfinite_steps"])
        self._resumed = False
        self._nonfinite: Optional[NonFiniteGuard] = None
        self._save_schedule: Optional[SaveSchedule] = None

    # -- what a resumed run must agree on
    def run_identity(self) -> dict:
        """Written to ``sam_nnunet_run.json`` at every start; extended by trainers with more to agree on."""
        return {"trainer": type(self).__name__}

    def check_resume(self, before: dict) -> None:
        """Raise if this run may not resume one that wrote ``before`` (its :meth:`run_identity`)."""

    # -- nnU-Net's hooks
    def initialize(self):
        super().initialize()
        self._nonfinite = NonFiniteGuard(self.optimizer, self.max_nonfinite_steps)

    def train_step(self, batch: dict) -> dict:
        data_bad = not bool(torch.isfinite(torch.as_tensor(batch["data"])).all())
        if data_bad:
            # refused before the forward pass: a forward in training mode would still update running statistics
            # (BatchNorm in ESP-MedSAM's TinyViT) with NaN, which no skipped update undoes
            out = {"loss": np.array(np.nan, dtype=np.float32)}
        else:
            out = super().train_step(batch)
        loss_bad = not np.all(np.isfinite(out["loss"]))
        bad = self._nonfinite.pop_skipped() or loss_bad
        if self.is_ddp:  # every rank must count the same steps, or one stops while the others wait for it
            flag = torch.tensor([float(bad)], device=self.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            bad = bool(flag.item())
        if bad:
            what = ("non-finite input data (the batch was not run)" if data_bad else
                    f"non-finite training loss {out['loss']}" if loss_bad else "non-finite gradients")
            self.print_to_log_file(f"WARNING: {what} in epoch {self.current_epoch}: this update was skipped "
                                   f"({self._nonfinite.consecutive + 1} in a row, at most {self.max_nonfinite_steps}).")
        if self._nonfinite.record(bad):
            self._stop_diverged()
        return out

    def _stop_diverged(self) -> None:
        """Too many non-finite steps in a row: keep the last finite weights as the resume point and stop."""
        guard, net = self._nonfinite, bare_network(self.network)
        latest = os.path.join(self.output_folder, "checkpoint_latest.pth")
        if not non_finite_entries(net):
            # the bad updates were skipped, so these are the weights after the last finite step; saved so that
            # --c repeats this epoch from them
            self.save_latest_resuming_at(self.current_epoch)
            kept = (f"Their updates were skipped, so the weights are the last finite ones (after step "
                    f"{guard.last_finite_step or 0} of this run); they are saved in {latest}.")
        elif os.path.isfile(latest):
            self.load_checkpoint(latest)
            kept = f"The weights were not finite; the last finite ones were restored from {latest}."
        else:
            kept = "The weights were not finite and no checkpoint_latest.pth was written yet."
        message = (f"Training stopped: {guard.consecutive} consecutive non-finite training steps in epoch "
                   f"{self.current_epoch} ({guard.total} in this run). {kept} Lower the learning rate (or disable "
                   f"AMP), check the data for NaN/inf, then resume with --c.")
        self.print_to_log_file("ERROR: " + message)
        raise TrainingDiverged(message)

    def save_latest_resuming_at(self, epoch: int) -> None:
        """``checkpoint_latest.pth`` from which ``--c`` starts at ``epoch`` (nnU-Net stores ``current_epoch + 1``, the
        next epoch, as its on_train_end does)."""
        now = self.current_epoch
        self.current_epoch = epoch - 1
        try:
            self.save_checkpoint(os.path.join(self.output_folder, "checkpoint_latest.pth"))
        finally:
            self.current_epoch = now

    def save_checkpoint(self, filename: str) -> None:
        bad = non_finite_entries(bare_network(self.network))
        if bad:
            self.print_to_log_file(f"ERROR: network weights or buffers are not finite ({len(bad)} tensors, e.g. "
                                   f"{bad[:3]}); not writing {filename}. The last good checkpoint is kept.")
            raise TrainingDiverged(f"Training diverged: non-finite weights in {bad[:3]}. Lower the learning rate or "
                                   f"disable AMP, check the data for NaN/inf; resume from the last good checkpoint "
                                   f"with --c.")
        # write next to the target and rename: a run killed while saving keeps its previous checkpoint
        partial = filename + ".partial"
        super().save_checkpoint(partial)
        if os.path.isfile(partial):  # nnU-Net writes nothing on ranks other than 0 or with checkpointing disabled
            publish(partial, filename)
        if os.path.basename(filename) == "checkpoint_latest.pth" and self._save_schedule is not None:
            self._save_schedule.saved()

    def on_epoch_end(self):
        epoch = self.current_epoch
        super().on_epoch_end()  # nnU-Net: logs, checkpoint_latest every save_every epochs, checkpoint_best
        schedule = self._save_schedule
        if epoch != self.num_epochs - 1 and not schedule.by_epochs(epoch) and schedule.by_time():
            self.save_latest_resuming_at(self.current_epoch)  # nnU-Net has moved on to the next epoch
            self.print_to_log_file(f"checkpoint_latest.pth written ({schedule.every_minutes} minutes since the last).")

    def load_checkpoint(self, filename_or_checkpoint):
        info_file = os.path.join(self.output_folder, RUN_INFO_FILE)
        if not os.path.isfile(info_file):
            raise RuntimeError(f"{info_file} is missing, so this run cannot check that it resumes the fold's first "
                               f"run (the same trainer and pretrained file). It is written when a run starts: "
                               f"restore it, or move {self.output_folder} away to train the fold anew.")
        try:
            with open(info_file) as f:
                before = json.load(f)
        except json.JSONDecodeError as e:
            raise RuntimeError(f"{info_file} is not valid JSON ({e}); it records what a resumed run must agree on. "
                               f"Restore it, or move {self.output_folder} away to train the fold anew.") from e
        self.check_resume(before)
        self._resumed = True
        super().load_checkpoint(filename_or_checkpoint)

    def on_train_start(self):
        existing = [f for f in ("checkpoint_final.pth", "checkpoint_latest.pth")
                    if os.path.isfile(os.path.join(self.output_folder, f))]
        if existing and not self._resumed:
            raise RuntimeError(f"{self.output_folder} already holds {existing}. Use --c to resume (or re-validate) "
                               f"this fold; to train it from scratch, move that folder away first.")
        super().on_train_start()
        if self._save_every_given is None:
            # nnU-Net writes checkpoint_latest.pth every 50 epochs: never, in a run of 50 epochs or fewer
            self.save_every = max(1, min(self.save_every, self.num_epochs // 10))
        self._save_schedule = SaveSchedule(self.save_every, self.save_minutes)
        self.print_to_log_file(f"checkpoint_latest.pth every {self.save_every} epoch(s) or "
                               f"{self.save_minutes} minutes, whichever comes first.")
        if self.local_rank == 0:
            write_json(os.path.join(self.output_folder, RUN_INFO_FILE), self.run_identity())
            for stale in sorted(glob.glob(os.path.join(self.output_folder, "*.pth.partial"))):
                os.remove(stale)  # a half-written checkpoint of a run killed while saving; never read
                self.print_to_log_file(f"Removed {os.path.basename(stale)} (left by a run killed while saving).")

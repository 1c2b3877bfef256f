"""Training for a budget of steps or of wall-clock time, through nnU-Net's own hooks.

nnU-Net's ``run_training()`` trains ``num_epochs`` x ``num_iterations_per_epoch`` steps with a validation epoch
after each. An equal-cost comparison trains every trainer for the same wall-clock time instead
(``benchmarks/benchmark.py``), and a test wants a few real steps. :class:`TrainingBudget` does both, as nnU-Net's own
``nnUNetTrainerBenchmark_5epochs`` does it: a mixin placed before the trainer class whose ``run_training()`` runs
nnU-Net's ``on_train_start``, then ``train_step`` on batches of ``dataloader_train`` until the budget is spent, then
``on_train_end`` (``checkpoint_final.pth``, data loaders shut down). No validation epochs are run: the harness
validates on whole volumes afterwards. On CPU, subnormal floats are flushed to zero for the run, nnUNetTrainer's too
(:mod:`sam_nnunet.training.numerics`).

The schedule follows the budget: the trainer is built for ``schedule_epochs`` epochs (1000) and, before every step,
set to the epoch that the spent fraction of the budget is (:func:`budget_epoch`), calling ``on_train_epoch_start``
when it changes. So poly decay (ESP-MedSAM's exponential decay) ends when the budget does, and a warm-up of 20 % of
the epochs (Self-Prompt-SAM) is 20 % of the run, whatever the step time turns out to be (data loading included).
``start_fraction`` starts the schedule later (0.9: its last tenth, e.g. Self-Prompt-SAM's full phase).

:func:`budgeted` makes the class: ``budgeted(HSPSAMTrainer, steps=3)``; it keeps the trainer's name, so the run
lands in the trainer's own output folder, unless ``name`` says otherwise. What the run did is in
``trainer.budget_record`` (:class:`BudgetRecord`) and in the log.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import List, Optional, Type, TypeVar

import numpy as np

from sam_nnunet.training.numerics import flush_denormal

T = TypeVar("T")
SCHEDULE_EPOCHS = 1000


def budget_epoch(spent: float, epochs: int = SCHEDULE_EPOCHS, start_fraction: float = 0.0) -> int:
    """The schedule's epoch when ``spent`` (0..1) of the budget is used: ``epochs`` equal parts of it, from
    ``start_fraction`` of the schedule on."""
    fraction = start_fraction + (1.0 - start_fraction) * min(max(spent, 0.0), 1.0)
    return min(epochs - 1, int(epochs * fraction))


@dataclass
class BudgetRecord:
    """What a budgeted run did: its steps and seconds, every step's loss, the training curve (``[seconds, mean loss
    of the last curve_every steps]``) and the schedule (``[seconds, epoch]`` at every epoch change)."""

    steps: int = 0
    seconds: float = 0.0
    losses: List[float] = field(default_factory=list)
    curve: List[List[float]] = field(default_factory=list)
    schedule: List[List[float]] = field(default_factory=list)


class TrainingBudget:
    """Mixin before an nnU-Net trainer class: ``run_training()`` trains for ``budget_steps`` steps or
    ``budget_seconds`` seconds, whichever ends first (see the module docstring)."""

    budget_steps: Optional[int] = None
    budget_seconds: Optional[float] = None
    schedule_epochs: int = SCHEDULE_EPOCHS
    start_fraction: float = 0.0
    #: steps per point of the training curve (and per progress line in the log)
    curve_every: int = 50

    def before_budget(self) -> None:
        """Called after ``on_train_start`` (network, optimiser and data loaders exist), before the budget's clock
        starts; the benchmark times its undone steps here."""

    def run_training(self):
        if self.budget_steps is None and self.budget_seconds is None:
            raise ValueError(f"{type(self).__name__}: set budget_steps or budget_seconds (sam_nnunet.training.budget)")
        # nnU-Net's constructor sets num_epochs; configure_optimizers (in on_train_start) builds the schedule on it
        self.num_epochs = self.schedule_epochs
        with flush_denormal(self.device, self.print_to_log_file):  # as the SAM trainers' own runs (numerics module)
            self._train_for_budget()

    def _train_for_budget(self) -> None:
        self.on_train_start()
        self.before_budget()
        self.budget_record = record = BudgetRecord()
        self.print_to_log_file(f"Training budget: {self.budget_steps or 'unlimited'} steps, "
                               f"{self.budget_seconds or 'unlimited'} s; the schedule's {self.schedule_epochs} epochs "
                               f"follow it from {self.start_fraction:.0%}.")
        epoch, window, start = None, [], time.perf_counter()
        while True:
            elapsed = time.perf_counter() - start
            spent = max(elapsed / self.budget_seconds if self.budget_seconds else 0.0,
                        record.steps / self.budget_steps if self.budget_steps else 0.0)
            if spent >= 1.0:
                break
            now = budget_epoch(spent, self.schedule_epochs, self.start_fraction)
            if now != epoch:  # checked every step: a step of nnU-Net's default plans takes a minute on 2 CPU cores
                epoch = self.current_epoch = now
                record.schedule.append([round(elapsed, 3), now])
                self.on_train_epoch_start()  # nnU-Net: lr_scheduler.step(current_epoch); Self-Prompt-SAM: its phase
            loss = float(np.mean(self.train_step(next(self.dataloader_train))["loss"]))
            record.losses.append(loss)
            record.steps += 1
            window.append(loss)
            if len(window) == self.curve_every:
                self._curve_point(record, window, time.perf_counter() - start)
        record.seconds = time.perf_counter() - start
        if window:
            self._curve_point(record, window, record.seconds)
        self.print_to_log_file(f"Training budget spent: {record.steps} steps in {record.seconds:.1f} s.")
        self.current_epoch += 1  # as nnU-Net's on_epoch_end leaves it after an epoch, which on_train_end expects
        self.on_train_end()

    def _curve_point(self, record: BudgetRecord, window: List[float], seconds: float) -> None:
        record.curve.append([round(seconds, 1), float(np.mean(window))])
        self.print_to_log_file(f"step {record.steps}, {seconds:.0f} s: mean training loss {record.curve[-1][1]:.4f}")
        window.clear()


def budgeted(trainer_cls: Type[T], steps: Optional[int] = None, seconds: Optional[float] = None,
             name: Optional[str] = None, **attributes) -> Type[T]:
    """``trainer_cls`` that trains for ``steps`` steps or ``seconds`` seconds (:class:`TrainingBudget`), named
    ``name`` (default: the trainer's own, so that it uses the trainer's output folder). ``attributes`` sets other
    class attributes (``start_fraction``, ``curve_every``, ``schedule_epochs``, or the trainer's own)."""
    return type(name or trainer_cls.__name__, (TrainingBudget, trainer_cls),
                {"budget_steps": steps, "budget_seconds": seconds, "__module__": trainer_cls.__module__,
                 "__doc__": f"{trainer_cls.__name__} for a budget of {steps} steps / {seconds} s.", **attributes})


def build_trainer(trainer_cls: Type[T], dataset: str, configuration: str, fold: int, plans_identifier: str,
                  device, continue_training: bool = False) -> T:
    """An instance of ``trainer_cls`` on preprocessed data, as nnU-Net's ``get_trainer_from_args`` makes one of a
    trainer it finds by name (a class made by :func:`budgeted` is found by no name)."""
    from batchgenerators.utilities.file_and_folder_operations import join, load_json
    from nnunetv2.paths import nnUNet_preprocessed
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    folder = join(nnUNet_preprocessed, maybe_convert_to_dataset_name(dataset))
    plans = load_json(join(folder, plans_identifier + ".json"))
    plans["continue_training"] = continue_training  # as get_trainer_from_args (nnU-Net 2.8 reads it from the plans)
    return trainer_cls(plans=plans, configuration=configuration, fold=fold,
                       dataset_json=load_json(join(folder, "dataset.json")), device=device)

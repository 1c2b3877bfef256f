"""The base of every SAM trainer: nnU-Net's ``nnUNetTrainer`` with what a SAM network needs.

A concrete trainer (``trainers/HSPSAMTrainer.py``) names its network class and default network
arguments; everything else lives here once:

* Architecture from plans. On construction the trainer writes its network class, its own name and the
  resolved arguments (encoder, patch size, number of prompts, ablation switches) into the
  configuration's ``architecture`` entry of its own copy of the plans (the caller's dict is never
  changed). nnU-Net saves those plans next to the checkpoints, so ``nnUNetv2_predict`` rebuilds the
  same network through :meth:`build_network_architecture`. Recorded arguments are used only by the
  trainer that recorded them (plans from an ``HSPSAMTrainer`` folder do not turn ``_noQA`` into the
  full model); otherwise defaults come from the trainer and a ``"sam_nnunet"`` block in a plans
  configuration (written by ``sam_nnunet plans``) overrides them, e.g. ``{"encoder": "vit_tiny"}``.
* Pretrained weights. ``SAM_NNUNET_CHECKPOINT=/path/sam_vit_b_01ec64.pth`` (or MedSAM; a network with its own
  file layout loads it through its ``load_pretrained``, e.g. ESP-MedSAM's TinyViT), or the name of a file a package
  ships (``litemedsam``, :mod:`sam_nnunet.modeling.pretrained_files`; also a preset's ``"checkpoint"`` training
  setting, which the environment overrides; verified by SHA-256, and recorded with the model as
  ``sam_nnunet_pretrained`` in its plans.json and in the log) is loaded and the
  network's ``freeze_pretrained`` freezes what its paper freezes (HSP-SAM: the encoder except LoRA;
  Self-Prompt-SAM: every SAM weight), limited to the tensors the file supplied. This happens in
  ``configure_optimizers``, which nnU-Net runs after building the network and *before* wrapping it in
  DDP (freezing after the wrap breaks DDP's reducer at the second step). Without a checkpoint the encoder
  is randomly initialised and *trained*, and the log says so: a frozen random encoder is useless.
* Optimiser: ``optimizer_name`` / ``base_learning_rate`` / ``base_weight_decay``; default AdamW (lr
  3e-4, weight decay 1e-2) with nnU-Net's poly decay, since nnU-Net's SGD at lr 1e-2 is known to
  diverge for ViTs trained in full; a trainer whose paper states SGD (Self-Prompt-SAM) or Adam with
  exponential decay (ESP-MedSAM: ``lr_schedule = "exponential"``) says so. All
  parameters are in the optimiser (frozen ones have no gradient and are skipped), so its state loads
  on ``--c`` whether or not the encoder is frozen.
* Training settings from the plans: a preset's ``"training"`` block (``sam_nnunet_training`` in the
  configuration) sets ``learning_rate``, ``weight_decay``, ``supervised_outputs``, ``checkpoint`` and
  ``freeze_pretrained`` (false: full fine-tuning, nothing of the pretrained file frozen) per trainer class,
  e.g. a CPU preset's from-scratch rate; logged, and saved with the model's plans.
* Loss: nnU-Net's Dice + CE (or Dice + BCE for regions), weighted ``dice_weight`` / ``ce_weight``.
* Deep supervision: the network reports the target scale of each of its outputs
  (``deep_supervision_scales``) and the trainer the loss weight of each (``deep_supervision_weights``);
  output 0 is what validation and inference use. ``supervised_outputs = "final"`` puts the loss on
  output 0 only (HSP-SAM's Eq. 3; its Table 5 rows); under DDP the other outputs keep a 1e-6 weight,
  since DDP rejects parameters that get no gradient.
* Non-finite steps (:mod:`sam_nnunet.training.safeguards`). AMP on CUDA (nnU-Net's autocast + GradScaler)
  skips overflowing updates; without AMP (CPU) an update with non-finite gradients is skipped too, so the
  weights stay finite. Each such step is logged; after ``SAM_NNUNET_MAX_NONFINITE`` (default 5) in a row
  the run stops with :class:`TrainingDiverged`, keeping the last finite weights in
  ``checkpoint_latest.pth`` (``--c`` repeats that epoch). Non-finite weights are never written.
* A finished or started fold is never silently overwritten: starting without ``--c`` where checkpoints
  exist is an error. ``--c``/``--val`` check that ``SAM_NNUNET_CHECKPOINT`` is the same *file* as in the
  first run (size + SHA-256 in ``sam_nnunet_run.json``); its path may change (another mount).
* ``SAM_NNUNET_SEED`` seeds Python, NumPy and torch before the network is built (augmentation
  workers keep their own RNGs, so runs are repeatable in initialisation, not bit for bit).
* CPU-sized runs: ``SAM_NNUNET_ITERATIONS_PER_EPOCH`` / ``SAM_NNUNET_VAL_ITERATIONS_PER_EPOCH`` override
  nnU-Net's 250 / 50 (logged); epochs come from the trainer name (``HSPSAMTrainer_5epochs`` ...).
  ``checkpoint_latest.pth`` is written every ``SAM_NNUNET_SAVE_EVERY`` epochs (default: nnU-Net's 50, but at
  least 10 times per run: every 2 epochs of 20) or every ``SAM_NNUNET_SAVE_MINUTES`` (default 15) minutes,
  whichever comes first, so any run can resume with ``--c``. Checkpoints are written to a temporary name
  and renamed, so a run killed while saving resumes from its previous checkpoint.
"""
from __future__ import annotations

import copy
import glob
import inspect
import json
import os
import random
from pydoc import locate
from typing import Dict, Optional, Tuple, Type

import numpy as np
import torch
import torch.distributed as dist
from batchgenerators.utilities.file_and_folder_operations import isfile, join
from nnunetv2.training.loss.compound_losses import DC_and_BCE_loss, DC_and_CE_loss
from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss
from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager
from torch import nn

from sam_nnunet.modeling.checkpoint import CHECKPOINT_ENV, file_fingerprint
from sam_nnunet.modeling.common import bare_network
from sam_nnunet.modeling.interface import missing_members
from sam_nnunet.modeling.pretrained_files import PRETRAINED_FILES, named_file, resolve_checkpoint
from sam_nnunet.plans import TRAINING_KEY
from sam_nnunet.training.lr_schedules import ExponentialLRScheduler
from sam_nnunet.training.numerics import flush_denormal
from sam_nnunet.training.safeguards import NonFiniteGuard, SaveSchedule

SEED_ENV = "SAM_NNUNET_SEED"
ITERATIONS_ENV = "SAM_NNUNET_ITERATIONS_PER_EPOCH"
VAL_ITERATIONS_ENV = "SAM_NNUNET_VAL_ITERATIONS_PER_EPOCH"
SAVE_EVERY_ENV = "SAM_NNUNET_SAVE_EVERY"
SAVE_MINUTES_ENV = "SAM_NNUNET_SAVE_MINUTES"
MAX_NONFINITE_ENV = "SAM_NNUNET_MAX_NONFINITE"
PLANS_OVERRIDE_KEY = "sam_nnunet"
#: key of a configuration's "architecture" entry naming the trainer that recorded its arguments
RECORDED_BY_KEY = "sam_nnunet_trainer"
RUN_INFO_FILE = "sam_nnunet_run.json"
#: configuration entry of the plans saved with a model: the named pretrained file it was trained from
PRETRAINED_KEY = "sam_nnunet_pretrained"
#: what a plans ``sam_nnunet_training`` block may set, and what each must be
TRAINING_SETTINGS = {
    "learning_rate": lambda v: isinstance(v, (int, float)) and v > 0,
    "weight_decay": lambda v: isinstance(v, (int, float)) and v >= 0,
    "supervised_outputs": lambda v: v in ("all", "final"),
    # a named pretrained file (pretrained_files.PRETRAINED_FILES), not a path: plans travel with models
    "checkpoint": lambda v: v in PRETRAINED_FILES,
    # false: full fine-tuning, every loaded tensor trains (default true: what the paper freezes stays frozen)
    "freeze_pretrained": lambda v: isinstance(v, bool),
}


def _positive_int_env(name: str) -> Optional[int]:
    value = os.environ.get(name)
    if value in (None, ""):
        return None
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _positive_float_env(name: str) -> Optional[float]:
    value = os.environ.get(name)
    if value in (None, ""):
        return None
    try:
        number = float(value)
    except ValueError:
        number = -1.0
    if not number > 0:
        raise ValueError(f"{name} must be a positive number, got {value!r}")
    return number


class SAMTrainerBase(nnUNetTrainer):
    #: dotted path of the network class built from the plans
    network_class: str = ""
    #: network arguments unless the plans' "sam_nnunet" block says otherwise
    default_network_kwargs: Dict = {}
    #: loss weights (HSP-SAM Eq. 3: alpha = 0.8)
    dice_weight: float = 0.8
    ce_weight: float = 0.2
    #: "AdamW" (ViT-friendly default), "Adam", or "SGD" (nnU-Net's: momentum 0.99, Nesterov, poly decay)
    optimizer_name: str = "AdamW"
    base_learning_rate: float = 3e-4
    base_weight_decay: float = 1e-2
    #: with AdamW / Adam: "poly" (nnU-Net's decay) or "exponential" (to 1 % of the rate at the last epoch)
    lr_schedule: str = "poly"
    #: "all": every network output is supervised (deep supervision weights); "final": output 0 only
    supervised_outputs: str = "all"
    #: None: region-based datasets (regions_class_order) train; otherwise why this method refuses them
    refuses_regions: Optional[str] = None

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        seed = os.environ.get(SEED_ENV)
        if seed not in (None, ""):
            # network initialisation and the main process' sampling; augmentation workers keep their own RNGs
            random.seed(int(seed))
            np.random.seed(int(seed))
            torch.manual_seed(int(seed))
        # our own copy: the architecture is recorded into it, and the caller may build other trainers from its dict
        super().__init__(copy.deepcopy(plans), configuration, fold, dataset_json, device)
        if seed not in (None, ""):
            self.print_to_log_file(f"{SEED_ENV}={seed}")
        self.initial_lr = self.base_learning_rate
        self.weight_decay = self.base_weight_decay
        self.plans_checkpoint: Optional[str] = None
        self.freeze_pretrained = True
        self._apply_plans_training()
        self.num_iterations_per_epoch = _positive_int_env(ITERATIONS_ENV) or self.num_iterations_per_epoch
        self.num_val_iterations_per_epoch = _positive_int_env(VAL_ITERATIONS_ENV) or self.num_val_iterations_per_epoch
        self.save_every = _positive_int_env(SAVE_EVERY_ENV) or self.save_every
        self.save_minutes = _positive_float_env(SAVE_MINUTES_ENV) or 15.0
        self.max_nonfinite_steps = _positive_int_env(MAX_NONFINITE_ENV) or 5
        # the environment overrides the plans; a name (``litemedsam``) becomes its verified file
        self.sam_checkpoint = resolve_checkpoint(os.environ.get(CHECKPOINT_ENV) or self.plans_checkpoint)
        self._fingerprint: Optional[dict] = None
        self._resumed = False
        self._nonfinite: Optional[NonFiniteGuard] = None
        self._save_schedule: Optional[SaveSchedule] = None
        if self.refuses_regions and self.label_manager.has_regions:
            raise ValueError(f"{type(self).__name__}: this dataset is region-based (regions_class_order in dataset.json) "
                             f"and {self.refuses_regions} Use HSPSAMTrainer for regions.")
        self._record_architecture()

    def _apply_plans_training(self) -> None:
        """Settings of the configuration's ``sam_nnunet_training`` block (a preset's ``"training"``) for the most
        specific class of this trainer named there: ``{"HSPSAMTrainer": {"learning_rate": 1e-3}}`` applies to
        ``HSPSAMTrainer`` and its variants, not to other methods on the same plans."""
        block = self.configuration_manager.configuration.get(TRAINING_KEY) or {}
        owner = next((c.__name__ for c in type(self).__mro__ if c.__name__ in block), None)
        if owner is None:
            return
        settings = block[owner]
        unknown = sorted(set(settings) - set(TRAINING_SETTINGS))
        if unknown:
            raise ValueError(f"plans {TRAINING_KEY}[{owner!r}]: unknown settings {unknown}; expected some of "
                             f"{sorted(TRAINING_SETTINGS)}")
        for key, check in TRAINING_SETTINGS.items():
            if key in settings and not check(settings[key]):
                raise ValueError(f"plans {TRAINING_KEY}[{owner!r}][{key!r}] = {settings[key]!r} is not valid")
        own_weights = type(self).deep_supervision_weights is not SAMTrainerBase.deep_supervision_weights
        if "supervised_outputs" in settings and own_weights:
            raise ValueError(f"plans {TRAINING_KEY}[{owner!r}]: {type(self).__name__} sets its own deep-supervision "
                             f"weights (its paper's), so 'supervised_outputs' does not apply to it")
        self.initial_lr = float(settings.get("learning_rate", self.initial_lr))
        self.weight_decay = float(settings.get("weight_decay", self.weight_decay))
        self.supervised_outputs = settings.get("supervised_outputs", self.supervised_outputs)
        self.plans_checkpoint = settings.get("checkpoint", self.plans_checkpoint)
        self.freeze_pretrained = settings.get("freeze_pretrained", self.freeze_pretrained)
        self.print_to_log_file(f"Training settings from the plans ({TRAINING_KEY}[{owner!r}]): {settings}")

    # ------------------------------------------------------------------ architecture from plans
    def _num_targets(self) -> int:
        lm = self.label_manager
        return len(lm.foreground_regions) if lm.has_regions else len(lm.foreground_labels)

    def _record_architecture(self) -> None:
        """Write this trainer's network into the (in-memory) plans that nnU-Net saves with the model."""
        kwargs = self.complete_network_kwargs(self.network_kwargs(self.configuration_manager))
        arch = {"network_class_name": self.network_class, "arch_kwargs": kwargs, "_kw_requires_import": [],
                RECORDED_BY_KEY: type(self).__name__}
        known = named_file(self.sam_checkpoint)
        for conf in (self.plans_manager.plans["configurations"][self.configuration_name],
                     self.configuration_manager.configuration):
            conf["architecture"] = arch
            conf.pop(PRETRAINED_KEY, None)
            if known is not None:  # where nnU-Net users look: the plans.json saved with the model
                conf[PRETRAINED_KEY] = {"name": known.name, "file": known.filename, "bytes": known.size,
                                        "sha256": known.sha256, "licence": known.licence, "source": known.source}

    def complete_network_kwargs(self, kwargs: dict) -> dict:
        """Arguments that need the dataset (not only the plans), added before they are recorded: the number of
        prompts (one per segmentation target) for networks that take it."""
        if "num_prompts" in inspect.signature(self._network_cls().__init__).parameters:
            kwargs.setdefault("num_prompts", self._num_targets())
        return kwargs

    @classmethod
    def network_kwargs(cls, configuration_manager: ConfigurationManager) -> dict:
        """Network arguments for a configuration: the recorded ones if this trainer recorded them (plans
        saved with a model), else trainer defaults + the configuration's "sam_nnunet" block + its patch size.

        Plans written before the trainer name was recorded (no ``RECORDED_BY_KEY``) are model folders'
        plans: their arguments are used when the network class matches, as they were then."""
        conf = configuration_manager.configuration
        arch = conf.get("architecture", {})
        if (arch.get("network_class_name") == cls.network_class
                and arch.get(RECORDED_BY_KEY, cls.__name__) == cls.__name__):
            return dict(arch["arch_kwargs"])
        network_cls = cls._network_cls()
        # what nnU-Net decides (channels, outputs, deep supervision) is not for the plans to override
        signature = set(inspect.signature(network_cls.__init__).parameters)
        accepted = signature - {"self", "num_input_channels", "num_classes", "deep_supervision", "img_size",
                                "patch_depth"}
        overrides = conf.get(PLANS_OVERRIDE_KEY, {})
        unknown = sorted(set(overrides) - accepted)
        if unknown:
            raise ValueError(f"plans '{PLANS_OVERRIDE_KEY}' block has arguments {unknown} that "
                             f"{network_cls.__name__} does not take from plans; it takes {sorted(accepted)}")
        kwargs = {**cls.default_network_kwargs, **overrides}
        patch = [int(s) for s in configuration_manager.patch_size]
        kwargs["img_size"] = patch[-2:]
        if "patch_depth" in signature:
            kwargs["patch_depth"] = patch[0] if len(patch) == 3 else 1
        return kwargs

    @classmethod
    def _network_cls(cls) -> Type[nn.Module]:
        network_cls = locate(cls.network_class)
        if network_cls is None:
            raise ImportError(f"{cls.__name__}: cannot import network class {cls.network_class!r}")
        return network_cls

    @classmethod
    def build_network_architecture(cls, plans_manager: PlansManager, configuration_manager: ConfigurationManager,
                                   num_input_channels: int, num_output_channels: int,
                                   enable_deep_supervision: bool = True) -> nn.Module:
        """Same signature as nnU-Net >= 2.6 (also called by ``nnUNetv2_predict``). The network must be a
        :class:`~sam_nnunet.modeling.interface.SAMNetwork`: the trainer uses nothing else of it."""
        network = cls._network_cls()(num_input_channels=num_input_channels, num_classes=num_output_channels,
                                     deep_supervision=enable_deep_supervision,
                                     **cls.network_kwargs(configuration_manager))
        missing = missing_members(network)
        if missing:
            raise TypeError(f"{cls.__name__}: network {cls.network_class} lacks {missing} of the SAMNetwork interface "
                            f"(sam_nnunet.modeling.interface) that the trainers use")
        return network

    def _network(self) -> nn.Module:
        """The network without DDP / torch.compile wrappers (also before nnU-Net has wrapped it)."""
        return bare_network(self.network)

    # ------------------------------------------------------------------ weights, optimiser, loss
    def initialize(self):
        super().initialize()
        net = self._network()
        total = sum(p.numel() for p in net.parameters())
        trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
        kwargs = self.configuration_manager.network_arch_init_kwargs
        self.print_to_log_file(f"{type(net).__name__} ({kwargs}): {total:,} parameters, {trainable:,} trainable. "
                               f"{self.num_iterations_per_epoch} train / {self.num_val_iterations_per_epoch} val "
                               f"iterations per epoch, {self.num_epochs} epochs, {self.optimizer_name} lr {self.initial_lr}, "
                               f"weight decay {self.weight_decay}.")

    def _load_pretrained(self) -> None:
        """Load the SAM checkpoint and freeze what it supplied, on the bare network.

        Called from :meth:`configure_optimizers`, which nnU-Net's ``initialize`` runs after building (and
        compiling) the network and *before* wrapping it in DDP: DDP records which parameters need
        gradients when it wraps, so freezing afterwards breaks its reducer at the second step.
        """
        net = self._network()
        if self.sam_checkpoint:
            known = named_file(self.sam_checkpoint)
            if known is not None:
                self.print_to_log_file(f"Pretrained weights {known.name!r}: {known.filename} ({known.size:,} bytes, "
                                       f"SHA-256 {known.sha256}, verified; {known.licence}; {known.source}).")
            report = net.load_pretrained(self.sam_checkpoint)
            self.print_to_log_file(report.format())
            if self.freeze_pretrained:
                frozen, trainable = net.freeze_pretrained(report)
                self.print_to_log_file(f"{type(net).__name__}.freeze_pretrained: {frozen:,} pretrained parameters "
                                       f"frozen, {trainable:,} trained.")
            else:
                trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
                self.print_to_log_file(f"Full fine-tuning (training setting freeze_pretrained: false): nothing of the "
                                       f"file frozen, {trainable:,} parameters trained.")
        else:
            self.print_to_log_file(self.no_checkpoint_message())

    def no_checkpoint_message(self) -> str:
        """What the log says when no checkpoint is given."""
        return (f"No SAM checkpoint ({CHECKPOINT_ENV} is not set): the image encoder is randomly initialised "
                f"and trained in full (nothing frozen). Set {CHECKPOINT_ENV}=/path/to/sam_vit_b_01ec64.pth "
                f"to fine-tune pretrained SAM with LoRA.")

    def configure_optimizers(self):
        self._load_pretrained()
        if self.optimizer_name == "SGD":
            optimizer, lr_scheduler = super().configure_optimizers()
        elif self.optimizer_name in ("AdamW", "Adam"):
            adam = torch.optim.AdamW if self.optimizer_name == "AdamW" else torch.optim.Adam
            optimizer = adam(self.network.parameters(), lr=self.initial_lr, weight_decay=self.weight_decay)
            if self.lr_schedule == "poly":
                lr_scheduler = PolyLRScheduler(optimizer, self.initial_lr, self.num_epochs)
            elif self.lr_schedule == "exponential":
                lr_scheduler = ExponentialLRScheduler(optimizer, self.initial_lr, self.num_epochs)
            else:
                raise ValueError(f"{type(self).__name__}.lr_schedule must be 'poly' or 'exponential', "
                                 f"not {self.lr_schedule!r}")
        else:
            raise ValueError(f"{type(self).__name__}.optimizer_name must be 'AdamW', 'Adam' or 'SGD', "
                             f"not {self.optimizer_name!r}")
        self._nonfinite = NonFiniteGuard(optimizer, self.max_nonfinite_steps)
        return optimizer, lr_scheduler

    def _build_loss(self):
        lm = self.label_manager
        if lm.has_regions:
            loss = DC_and_BCE_loss({}, {"batch_dice": self.configuration_manager.batch_dice, "do_bg": True,
                                        "smooth": 1e-5, "ddp": self.is_ddp},
                                   weight_ce=self.ce_weight, weight_dice=self.dice_weight,
                                   use_ignore_label=lm.ignore_label is not None,
                                   dice_class=MemoryEfficientSoftDiceLoss)
        else:
            loss = DC_and_CE_loss({"batch_dice": self.configuration_manager.batch_dice, "smooth": 1e-5,
                                   "do_bg": False, "ddp": self.is_ddp}, {},
                                  weight_ce=self.ce_weight, weight_dice=self.dice_weight,
                                  ignore_label=lm.ignore_label, dice_class=MemoryEfficientSoftDiceLoss)
        if self.enable_deep_supervision:
            weights = self.deep_supervision_weights(len(self._get_deep_supervision_scales()))
            if self.is_ddp:
                # DDP fails on parameters that get no gradient; nnU-Net's own fix is a tiny weight
                weights = np.where(weights == 0, 1e-6, weights)
            loss = DeepSupervisionWrapper(loss, weights)
        return loss

    def deep_supervision_weights(self, num_outputs: int) -> np.ndarray:
        """Loss weight per network output, the prediction first: 1, 1/2, 1/4, ... normalised to sum 1
        (nnU-Net's halving; HSP-SAM's levels), or 1, 0, 0 ... with ``supervised_outputs = "final"``
        (1, 1e-6, ... under DDP). Trainers whose paper says otherwise override this."""
        if self.supervised_outputs == "final":
            weights = np.full(num_outputs, 1e-6 if self.is_ddp else 0.0)
            weights[0] = 1.0
            return weights
        if self.supervised_outputs != "all":
            raise ValueError(f"{type(self).__name__}.supervised_outputs must be 'all' or 'final', "
                             f"not {self.supervised_outputs!r}")
        weights = np.array([1 / (2 ** i) for i in range(num_outputs)])
        return weights / weights.sum()

    def _get_deep_supervision_scales(self):
        """The target scale of each network output, as the network reports it."""
        if not self.enable_deep_supervision:
            return None
        return self._network().deep_supervision_scales(len(self.configuration_manager.patch_size))

    def set_deep_supervision_enabled(self, enabled: bool):
        self._network().deep_supervision = enabled

    # ------------------------------------------------------------------ safety: NaN, overwrite, resume
    def train_step(self, batch: dict) -> dict:
        out = super().train_step(batch)
        loss_bad = not np.all(np.isfinite(out["loss"]))
        bad = self._nonfinite.pop_skipped() or loss_bad
        if self.is_ddp:  # every rank must count the same steps, or one stops while the others wait for it
            flag = torch.tensor([float(bad)], device=self.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            bad = bool(flag.item())
        if bad:
            what = f"non-finite training loss {out['loss']}" if loss_bad else "non-finite gradients"
            self.print_to_log_file(f"WARNING: {what} in epoch {self.current_epoch}: this update was skipped "
                                   f"({self._nonfinite.consecutive + 1} in a row, at most {self.max_nonfinite_steps}).")
        if self._nonfinite.record(bad):
            self._stop_diverged()
        return out

    def _stop_diverged(self) -> None:
        """Too many non-finite steps in a row: keep the last finite weights as the resume point and stop."""
        guard, net = self._nonfinite, self._network()
        latest = join(self.output_folder, "checkpoint_latest.pth")
        if all(torch.isfinite(p).all() for p in net.parameters()):
            # the bad updates were skipped, so these are the weights after the last finite step; saved so that
            # --c repeats this epoch from them
            self._save_latest_resuming_at(self.current_epoch)
            kept = (f"Their updates were skipped, so the weights are the last finite ones (after step "
                    f"{guard.last_finite_step or 0} of this run); they are saved in {latest}.")
        elif isfile(latest):
            self.load_checkpoint(latest)
            kept = f"The weights were not finite; the last finite ones were restored from {latest}."
        else:
            kept = "The weights were not finite and no checkpoint_latest.pth was written yet."
        message = (f"Training stopped: {guard.consecutive} consecutive non-finite training steps in epoch "
                   f"{self.current_epoch} ({guard.total} in this run). {kept} Lower the learning rate (or disable "
                   f"AMP), check the data for NaN/inf, then resume with --c.")
        self.print_to_log_file("ERROR: " + message)
        raise TrainingDiverged(message)

    def _save_latest_resuming_at(self, epoch: int) -> None:
        """``checkpoint_latest.pth`` from which ``--c`` starts at ``epoch`` (nnU-Net stores ``current_epoch + 1``, the
        next epoch, as its on_train_end does)."""
        now = self.current_epoch
        self.current_epoch = epoch - 1
        try:
            self.save_checkpoint(join(self.output_folder, "checkpoint_latest.pth"))
        finally:
            self.current_epoch = now

    def save_checkpoint(self, filename: str) -> None:
        bad = [n for n, p in self._network().named_parameters() if not torch.isfinite(p).all()]
        if bad:
            self.print_to_log_file(f"ERROR: network weights are not finite ({len(bad)} tensors, e.g. {bad[:3]}); "
                                   f"not writing {filename}. The last good checkpoint is kept.")
            raise TrainingDiverged(f"Training diverged: non-finite weights in {bad[:3]}. Lower the learning rate or "
                                   f"disable AMP; resume from the last good checkpoint with --c.")
        # write next to the target and rename: a run killed while saving keeps its previous checkpoint
        partial = filename + ".partial"
        super().save_checkpoint(partial)
        if os.path.isfile(partial):
            os.replace(partial, filename)
        if os.path.basename(filename) == "checkpoint_latest.pth" and self._save_schedule is not None:
            self._save_schedule.saved()

    def on_epoch_end(self):
        epoch = self.current_epoch
        super().on_epoch_end()  # nnU-Net: logs, checkpoint_latest every save_every epochs, checkpoint_best
        schedule = self._save_schedule
        if epoch != self.num_epochs - 1 and not schedule.by_epochs(epoch) and schedule.by_time():
            self._save_latest_resuming_at(self.current_epoch)  # nnU-Net has moved on to the next epoch
            self.print_to_log_file(f"checkpoint_latest.pth written ({schedule.every_minutes} minutes since the last).")

    def _run_info(self) -> dict:
        """What a resumed run must agree on: the SAM checkpoint, identified by content (not by its path)."""
        if self._fingerprint is None:
            self._fingerprint = file_fingerprint(self.sam_checkpoint) if self.sam_checkpoint else {}
        known = named_file(self.sam_checkpoint)
        return {"sam_checkpoint": self.sam_checkpoint, "sam_checkpoint_fingerprint": self._fingerprint or None,
                "sam_checkpoint_name": known.name if known is not None else None, "trainer": self.__class__.__name__}

    def load_checkpoint(self, filename_or_checkpoint):
        info_file = join(self.output_folder, RUN_INFO_FILE)
        if isfile(info_file):
            with open(info_file) as f:
                before = json.load(f)
            now = self._run_info()
            if "sam_checkpoint_fingerprint" in before:
                same = before["sam_checkpoint_fingerprint"] == now["sam_checkpoint_fingerprint"]
            else:  # written by an older version: only the path is known
                same = before.get("sam_checkpoint") == now["sam_checkpoint"]
            if not same:
                raise RuntimeError(
                    f"This fold was trained with {CHECKPOINT_ENV}={before.get('sam_checkpoint')!r} "
                    f"({before.get('sam_checkpoint_fingerprint')}) but it is now {self.sam_checkpoint!r} "
                    f"({now['sam_checkpoint_fingerprint']}). Set it to the same file as before to resume (it decides "
                    f"which weights are frozen); the path may differ, the content may not.")
            if before.get("sam_checkpoint") != now["sam_checkpoint"]:
                self.print_to_log_file(f"{CHECKPOINT_ENV}: same file as before ({before.get('sam_checkpoint')} is now "
                                       f"{self.sam_checkpoint}).")
        self._resumed = True
        super().load_checkpoint(filename_or_checkpoint)

    def run_training(self):
        with flush_denormal(self.device, self.print_to_log_file):  # CPU: subnormals are slow (numerics module)
            super().run_training()

    def perform_actual_validation(self, save_probabilities: bool = False):
        with flush_denormal(self.device):
            super().perform_actual_validation(save_probabilities)

    def on_train_start(self):
        existing = [f for f in ("checkpoint_final.pth", "checkpoint_latest.pth")
                    if isfile(join(self.output_folder, f))]
        if existing and not self._resumed:
            raise RuntimeError(f"{self.output_folder} already holds {existing}. Use --c to resume (or re-validate) "
                               f"this fold; to train it from scratch, move that folder away first.")
        super().on_train_start()
        if _positive_int_env(SAVE_EVERY_ENV) is None:
            # nnU-Net writes checkpoint_latest.pth every 50 epochs: never, in a run of 50 epochs or fewer
            self.save_every = max(1, min(self.save_every, self.num_epochs // 10))
        self._save_schedule = SaveSchedule(self.save_every, self.save_minutes)
        self.print_to_log_file(f"checkpoint_latest.pth every {self.save_every} epoch(s) or "
                               f"{self.save_minutes} minutes, whichever comes first.")
        if self.local_rank == 0:
            with open(join(self.output_folder, RUN_INFO_FILE), "w") as f:
                json.dump(self._run_info(), f, indent=2)
            for stale in sorted(glob.glob(join(self.output_folder, "*.pth.partial"))):
                os.remove(stale)  # a half-written checkpoint of a run killed while saving; never read
                self.print_to_log_file(f"Removed {os.path.basename(stale)} (left by a run killed while saving).")


class TrainingDiverged(RuntimeError):
    """Training produced non-finite losses or weights; the message says what was kept and how to go on."""


EPOCH_VARIANTS = (1, 5, 10, 20, 50, 100, 250)


def epoch_variants(base: Type[SAMTrainerBase], epochs=EPOCH_VARIANTS) -> Tuple[Type[SAMTrainerBase], ...]:
    """``base`` with each epoch count of ``epochs`` (``<base>_1epoch``, ``<base>_5epochs``, ...), in that order, for a
    trainer module to bind to names that say the same (nnU-Net finds trainers by attribute name; a test checks that
    every name is its class's)."""
    return tuple(with_num_epochs(base, n) for n in epochs)


def with_network_kwargs(base: Type[SAMTrainerBase], name: str, doc: str, attributes: Optional[dict] = None,
                        **switches) -> Type[SAMTrainerBase]:
    """``base`` whose network takes ``switches`` over the base's ``default_network_kwargs``: an ablation row, named
    ``name``. ``attributes`` sets other class attributes of the row (e.g. ``supervised_outputs``)."""
    kwargs = {**base.default_network_kwargs, **switches}
    return type(name, (base,), {"default_network_kwargs": kwargs, "__module__": base.__module__, "__doc__": doc,
                                **(attributes or {})})


def with_num_epochs(base: Type[SAMTrainerBase], num_epochs: int) -> Type[SAMTrainerBase]:
    """``base`` with another epoch count, named like nnU-Net's ``nnUNetTrainer_5epochs``."""
    suffix = "1epoch" if num_epochs == 1 else f"{num_epochs}epochs"

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        base.__init__(self, plans, configuration, fold, dataset_json, device)
        self.num_epochs = num_epochs

    return type(f"{base.__name__}_{suffix}", (base,),
                {"__init__": __init__, "__module__": base.__module__,
                 "__doc__": f"{base.__name__} trained for {num_epochs} epoch(s)."})

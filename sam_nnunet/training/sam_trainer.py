"""The base of every SAM trainer: nnU-Net's ``nnUNetTrainer`` with what a SAM network needs.

A concrete trainer (``trainers/HSPSAMTrainer.py``) names its network class and default network arguments, and
where its paper says so its optimiser, schedule, loss weights or deep-supervision weights. The base is put together
from parts that each read alone:

* :mod:`sam_nnunet.training.settings`: every run setting (learning rate, weight decay, supervised outputs, the
  pretrained checkpoint, freezing, seed, iteration counts, checkpoint timing), one precedence: class < plans <
  environment; the log lists those the plans or the environment set.
* :mod:`sam_nnunet.training.network_from_plans`: the network class and arguments, recorded in the plans that
  ``nnUNetv2_predict`` rebuilds the network from.
* :mod:`sam_nnunet.training.pretrained`: the pretrained file, loaded and frozen as the paper does, recorded with the
  model and checked on resume.
* :mod:`sam_nnunet.training.safeguards`: non-finite steps, atomic and timed checkpoints, no overwritten folds (a
  mixin that suits a plain ``nnUNetTrainer`` too).
* :mod:`sam_nnunet.training.variants`: epoch-count and ablation variants, bound to names in the trainer modules.

What stays here:

* Optimiser: ``optimizer_name`` / learning rate / weight decay; default AdamW (lr 3e-4, weight decay 1e-2) with
  nnU-Net's poly decay, since nnU-Net's SGD at lr 1e-2 is known to diverge for ViTs trained in full; a trainer whose
  paper states SGD (Self-Prompt-SAM) or Adam with exponential decay (ESP-MedSAM: ``lr_schedule = "exponential"``)
  says so. All parameters are in the optimiser (frozen ones have no gradient and are skipped), so its state loads on
  ``--c`` whether or not the encoder is frozen.
* Loss: nnU-Net's Dice + CE (or Dice + BCE for regions), weighted ``dice_weight`` / ``ce_weight``.
* Deep supervision: the network reports the target scale of each of its outputs (``deep_supervision_scales``) and
  the trainer the loss weight of each (``deep_supervision_weights``); output 0 is what validation and inference use.
  ``supervised_outputs = "final"`` puts the loss on output 0 only (HSP-SAM's Eq. 3; its Table 5 rows); under DDP the
  other outputs keep a 1e-6 weight, since DDP rejects parameters that get no gradient.
* CPU numerics: subnormal floats are flushed to zero for the span of a run or a validation
  (:mod:`sam_nnunet.training.numerics`), not for the process.
"""
from __future__ import annotations

import copy
import random
from typing import Optional

import numpy as np
import torch
from nnunetv2.training.loss.compound_losses import DC_and_BCE_loss, DC_and_CE_loss
from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss
from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from sam_nnunet.modeling.weights.pretrained_files import resolve_checkpoint
from sam_nnunet.plans import TRAINING_KEY
from sam_nnunet.training.lr_schedules import ExponentialLRScheduler
from sam_nnunet.training.network_from_plans import NetworkFromPlans
from sam_nnunet.training.numerics import flush_denormal
from sam_nnunet.training.pretrained import PretrainedWeights
from sam_nnunet.training.safeguards import RunSafeguards
from sam_nnunet.training.settings import SEED_ENV, resolve_settings

#: the settings this base resolves (the safeguards resolve their own)
TRAINING_SETTINGS = ("learning_rate", "weight_decay", "supervised_outputs", "checkpoint", "freeze_pretrained",
                     "iterations_per_epoch", "val_iterations_per_epoch")


class SAMTrainerBase(PretrainedWeights, RunSafeguards, NetworkFromPlans, nnUNetTrainer):
    #: loss weights (HSP-SAM Eq. 3: alpha = 0.8)
    dice_weight: float = 0.8
    ce_weight: float = 0.2
    #: "AdamW" (ViT-friendly default), "Adam", or "SGD" (nnU-Net's: momentum 0.99, Nesterov, poly decay)
    optimizer_name: str = "AdamW"
    #: class defaults of the settings learning_rate and weight_decay (nnU-Net keeps them as initial_lr, weight_decay)
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
        seed = resolve_settings(type(self), None, ("seed",))["seed"]
        if seed is not None:
            # network initialisation and the main process' sampling; augmentation workers keep their own RNGs
            random.seed(seed)
            np.random.seed(seed)
            torch.manual_seed(seed)
        # our own copy: the architecture is recorded into it, and the caller may build other trainers from its dict
        super().__init__(copy.deepcopy(plans), configuration, fold, dataset_json, device)
        if seed is not None:
            self.print_to_log_file(f"{SEED_ENV}={seed}")
        self.settings = resolve_settings(type(self), self.configuration_manager.configuration, TRAINING_SETTINGS)
        if "supervised_outputs" in self.settings.given() and self._own_deep_supervision_weights():
            raise ValueError(f"plans {TRAINING_KEY}: {type(self).__name__} sets its own deep-supervision "
                             f"weights (its paper's), so 'supervised_outputs' does not apply to it")
        given = self.settings.given()
        if given:
            self.print_to_log_file("Settings from the plans and the environment: " + ", ".join(
                f"{k}={v!r} ({self.settings.sources[k]})" for k, v in given.items()))
        # nnU-Net's constructor sets these attributes; its configure_optimizers and run_training read them
        self.initial_lr = float(self.settings["learning_rate"])
        self.weight_decay = float(self.settings["weight_decay"])
        self.num_iterations_per_epoch = self.settings["iterations_per_epoch"] or self.num_iterations_per_epoch
        self.num_val_iterations_per_epoch = (self.settings["val_iterations_per_epoch"]
                                             or self.num_val_iterations_per_epoch)
        self.supervised_outputs = self.settings["supervised_outputs"]
        self.freeze_pretrained = self.settings["freeze_pretrained"]
        # a name (``litemedsam``) becomes its verified file
        self.sam_checkpoint = resolve_checkpoint(self.settings["checkpoint"])
        if self.refuses_regions and self.label_manager.has_regions:
            raise ValueError(f"{type(self).__name__}: this dataset is region-based (regions_class_order in dataset.json) "
                             f"and {self.refuses_regions} Use HSPSAMTrainer for regions.")
        self._record_architecture()
        self._record_pretrained()

    @classmethod
    def _own_deep_supervision_weights(cls) -> bool:
        return cls.deep_supervision_weights is not SAMTrainerBase.deep_supervision_weights

    # ------------------------------------------------------------------ optimiser, loss, deep supervision
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

    def run_training(self):
        with flush_denormal(self.device, self.print_to_log_file):  # CPU: subnormals are slow (numerics module)
            super().run_training()

    def perform_actual_validation(self, save_probabilities: bool = False):
        with flush_denormal(self.device):
            super().perform_actual_validation(save_probabilities)

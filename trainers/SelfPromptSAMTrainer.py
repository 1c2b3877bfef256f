"""Self-Prompt-SAM trainers (shared/papers/002): ``nnUNetv2_train DATASET 3d_fullres FOLD -tr SelfPromptSAMTrainer``.

Works for ``3d_fullres`` (the paper's setting: the D slices of a patch go through SAM together and
the DFusedAdapters mix them) and ``2d`` (D = 1: the depth parts are off). The recipe is the paper's
appendix D, which is nnU-Net's own:

* SGD, lr 0.01, momentum 0.99 (Nesterov, as nnU-Net), weight decay 3e-5, poly decay; 1000 epochs x
  250 iterations by default (``_250epochs`` etc. shorten it).
* Loss: Dice + CE summed. Deep supervision on the MSPGenerator's outputs with weights halving per
  resolution, normalised to 1 (Eq. 3).
* Warm-up: the first 20 % of the epochs (200 of 1000) train only the generator's deep-supervision
  loss; then the final (MC-Adapter) output's loss is added: L = L_final + L_generator. The ratio is
  kept for other epoch counts (``_250epochs``: 50 warm-up epochs) and the phase follows
  ``current_epoch``, so ``--c`` resumes in the right one. During warm-up SAM's prompting and decoder
  are skipped (they would get no gradient) and validation scores the auxiliary mask; under DDP they
  run with a 1e-6 weight instead, since DDP rejects parameters without gradient.

Caveat from the project's experience: nnU-Net's SGD at lr 0.01 is known to diverge for ViTs trained
in full. The paper fine-tunes adapters of a frozen pretrained SAM; without a checkpoint the whole
encoder trains. ``SelfPromptSAMTrainer_AdamW`` (AdamW lr 3e-4, as HSPSAMTrainer) is the fallback.

Best checkpoint. nnU-Net writes ``checkpoint_best.pth`` when its EMA pseudo Dice (``ema_fg_dice``,
0.9 * previous + 0.1 * this epoch's validation Dice) beats ``_best_ema``. During warm-up validation
scores the auxiliary mask, not the model that is trained afterwards, so when the full phase starts
(epoch ``warmup_epochs``) both restart: ``_best_ema`` is cleared, so the first full-phase epoch always
becomes the new best, and that epoch's EMA is its own Dice (no warm-up epochs in the average). On
``--c`` into the full phase, ``_best_ema`` is taken from ``checkpoint_best.pth`` if that file holds a
full-phase epoch, and cleared if it holds a warm-up epoch (runs started before this rule), so a
warm-up best is never kept as the final one.

Ablations of Table 4 by name: ``SelfPromptSAMTrainer_S1`` ... ``_S9``, or with the same switches in
a plans' ``"sam_nnunet"`` block (``prompt_generator``, ``adapter``, ``depth_pos_embed``,
``modality_adapter``, ``mc_adapter``, ``generator_depth_mixing``). Each row adds one part to the
row before, and every row runs the prompt generator per slice (``generator_depth_mixing=False``):
otherwise the generator's 3x3x3 convolutions would mix slices in every row, and S3 (vanilla
adapter) vs S6 (DFusedAdapter) could not isolate the depth mixing the table credits to the
DFusedAdapter (reasoning in :mod:`sam_nnunet.modeling.self_prompt_sam`). ``SelfPromptSAMTrainer``
itself (the full model) keeps the 3D generator: it is S9 + generator depth mixing, so S8 -> S9
isolates the MC-Adapter and S9 -> ``SelfPromptSAMTrainer`` the generator's depth mixing.
"""
import os

import numpy as np
import torch
from batchgenerators.utilities.file_and_folder_operations import join

from sam_nnunet.training.sam_trainer import SAMTrainerBase, epoch_variants, with_num_epochs


class SelfPromptSAMTrainer(SAMTrainerBase):
    network_class = "sam_nnunet.modeling.self_prompt_sam.SelfPromptSAM"
    default_network_kwargs = {"encoder": "vit_b", "prompt_generator": "msp", "adapter": "dfused",
                              "depth_pos_embed": True, "modality_adapter": True, "mc_adapter": True,
                              "generator_depth_mixing": True}
    optimizer_name = "SGD"
    base_learning_rate = 1e-2
    base_weight_decay = 3e-5
    dice_weight = 1.0
    ce_weight = 1.0
    #: share of the epochs that train only the prompt generator (200 of 1000 in the paper)
    warmup_fraction = 0.2

    refuses_regions = "Self-Prompt-SAM predicts one class per pixel (softmax, MC-Adapter)."

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self._warmup_applied = None

    @property
    def warmup_epochs(self) -> int:
        return int(round(self.num_epochs * self.warmup_fraction))

    def in_warmup(self) -> bool:
        return self.current_epoch < self.warmup_epochs

    def deep_supervision_weights(self, num_outputs: int) -> np.ndarray:
        """[final, generator full, 1/2, 1/4, 1/8]: generator weights halve per resolution and sum to 1;
        the final output weighs 1, or 0 during warm-up."""
        generator = np.array([1 / (2 ** i) for i in range(num_outputs - 1)])
        return np.concatenate([[0.0 if self.in_warmup() else 1.0], generator / generator.sum()])

    def _apply_phase(self) -> None:
        warmup = self.in_warmup()
        if warmup == self._warmup_applied:
            return
        starting = self._warmup_applied is None  # first epoch of this process: a new run or a --c resume
        self._warmup_applied = warmup
        self.loss = self._build_loss()
        self._network().use_sam_decoder = not warmup or self.is_ddp
        if warmup:
            self.print_to_log_file(f"Warm-up ({self.warmup_epochs} of {self.num_epochs} epochs): only the MSPGenerator's "
                                   f"deep-supervision loss trains; validation scores the auxiliary mask.")
            return
        self.print_to_log_file(f"Epoch {self.current_epoch}: full loss (MC-Adapter output + MSPGenerator deep "
                               f"supervision).")
        if self.warmup_epochs > 0:
            self._restart_best_for_full_phase(resumed=starting and self.current_epoch > self.warmup_epochs)

    def _restart_best_for_full_phase(self, resumed: bool) -> None:
        """``_best_ema`` of the full phase: cleared when it starts (warm-up scores were the auxiliary mask's), or on a
        resume further in, the EMA of ``checkpoint_best.pth`` if that file holds a full-phase epoch."""
        previous = self._best_ema
        best_epoch, best_ema = self._checkpoint_best_epoch_and_ema() if resumed else (None, None)
        if best_epoch is not None and best_epoch >= self.warmup_epochs:
            self._best_ema = best_ema
            return
        self._best_ema = None
        if resumed:
            where = "none" if best_epoch is None else f"epoch {best_epoch}, a warm-up epoch"
            self.print_to_log_file(f"Resumed in the full phase with no full-phase checkpoint_best.pth ({where}; best "
                                   f"EMA pseudo Dice was {previous}): the next epoch becomes the new best.")
        else:
            self.print_to_log_file(f"Best EMA pseudo Dice reset (was {previous}, scored on the warm-up's auxiliary "
                                   f"mask): the EMA restarts at this epoch's Dice, which becomes the new best.")

    def _checkpoint_best_epoch_and_ema(self):
        """(epoch, EMA pseudo Dice) that ``checkpoint_best.pth`` was written at, or (None, None) without one."""
        path = join(self.output_folder, "checkpoint_best.pth")
        if not os.path.isfile(path):
            return None, None
        checkpoint = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
        return checkpoint["current_epoch"] - 1, checkpoint["_best_ema"]  # nnU-Net stores "next epoch"

    def on_train_epoch_start(self):
        self._apply_phase()
        super().on_train_epoch_start()

    def on_validation_epoch_end(self, val_outputs):
        super().on_validation_epoch_end(val_outputs)
        if 0 < self.warmup_epochs == self.current_epoch:
            self._restart_ema()

    def _restart_ema(self) -> None:
        """The first full-phase epoch's EMA pseudo Dice is its own Dice: no warm-up epoch enters the full phase's EMA,
        from which nnU-Net picks checkpoint_best.pth."""
        epoch, dice = self.current_epoch, self.logger.get_value("mean_fg_dice", step=-1)
        history = getattr(self.logger, "local_logger", self.logger).my_fantastic_logging
        history["ema_fg_dice"][epoch] = dice
        for other in getattr(self.logger, "loggers", []):  # e.g. W&B: the value it was sent before is replaced
            other.log("ema_fg_dice", dice, epoch)

    def on_train_end(self):
        self._network().use_sam_decoder = True  # the final validation and inference use the full model
        super().on_train_end()


class SelfPromptSAMTrainer_AdamW(SelfPromptSAMTrainer):
    """AdamW lr 3e-4, weight decay 1e-2: for encoders trained in full (no checkpoint)."""
    optimizer_name = "AdamW"
    base_learning_rate = 3e-4
    base_weight_decay = 1e-2


def _ablation(name: str, **switches) -> type:
    kwargs = {**SelfPromptSAMTrainer.default_network_kwargs, **switches}
    return type(name, (SelfPromptSAMTrainer,), {"default_network_kwargs": kwargs, "__module__": __name__,
                                                "__doc__": f"Table 4 {name.rsplit('_', 1)[1]}: {switches}"})


# Table 4: each row adds one part to the row before; none mixes slices in the generator (module docstring)
_S1 = dict(prompt_generator="conv", adapter="none", depth_pos_embed=False, modality_adapter=False, mc_adapter=False,
           generator_depth_mixing=False)
_S2 = dict(_S1, prompt_generator="msp")
_S6 = dict(_S2, adapter="dfused")
SelfPromptSAMTrainer_S1 = _ablation("SelfPromptSAMTrainer_S1", **_S1)
SelfPromptSAMTrainer_S2 = _ablation("SelfPromptSAMTrainer_S2", **_S2)
SelfPromptSAMTrainer_S3 = _ablation("SelfPromptSAMTrainer_S3", **dict(_S2, adapter="vanilla"))
SelfPromptSAMTrainer_S4 = _ablation("SelfPromptSAMTrainer_S4", **dict(_S2, adapter="depth_before"))
SelfPromptSAMTrainer_S5 = _ablation("SelfPromptSAMTrainer_S5", **dict(_S2, adapter="depth_after"))
SelfPromptSAMTrainer_S6 = _ablation("SelfPromptSAMTrainer_S6", **_S6)
SelfPromptSAMTrainer_S7 = _ablation("SelfPromptSAMTrainer_S7", **dict(_S6, depth_pos_embed=True))
SelfPromptSAMTrainer_S8 = _ablation("SelfPromptSAMTrainer_S8", **dict(_S6, depth_pos_embed=True, modality_adapter=True))
SelfPromptSAMTrainer_S9 = _ablation("SelfPromptSAMTrainer_S9", generator_depth_mixing=False)

# SelfPromptSAMTrainer_1epoch, _5epochs, _10epochs, _20epochs, _50epochs, _100epochs, _250epochs
globals().update(epoch_variants(SelfPromptSAMTrainer))
SelfPromptSAMTrainer_AdamW_20epochs = with_num_epochs(SelfPromptSAMTrainer_AdamW, 20)
SelfPromptSAMTrainer_AdamW_50epochs = with_num_epochs(SelfPromptSAMTrainer_AdamW, 50)

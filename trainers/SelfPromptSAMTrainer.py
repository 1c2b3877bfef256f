"""Self-Prompt-SAM trainers (shared/papers/002): ``nnUNetv2_train DATASET 3d_fullres FOLD -tr SelfPromptSAMTrainer``.

Works for ``3d_fullres`` (the paper's setting: the D slices of a patch go through SAM together and the
DFusedAdapters mix them) and ``2d`` (D = 1: the depth parts are off). The recipe is the paper's appendix D, which
is nnU-Net's own (SGD lr 0.01, Dice + CE, deep supervision on the MSPGenerator's outputs), with a warm-up: the
first 20 % of the epochs train only the generator's deep-supervision loss, then the final (MC-Adapter) output's
loss is added. The phase follows ``current_epoch``, so ``--c`` resumes in the right one. During warm-up SAM's
prompting and decoder are skipped (they would get no gradient) and validation scores the auxiliary mask; under DDP
they run with a 1e-6 weight instead, since DDP rejects parameters without gradient.

Best checkpoint. nnU-Net writes ``checkpoint_best.pth`` when its EMA pseudo Dice (``ema_fg_dice``,
0.9 * previous + 0.1 * this epoch's validation Dice) beats ``_best_ema``. During warm-up validation
scores the auxiliary mask, not the model that is trained afterwards, so when the full phase starts
(epoch ``warmup_epochs``) both restart: ``_best_ema`` is cleared, so the first full-phase epoch always
becomes the new best, and that epoch's EMA is its own Dice (no warm-up epochs in the average). On
``--c`` into the full phase, ``_best_ema`` is taken from ``checkpoint_best.pth`` if that file holds a
full-phase epoch, and cleared if it holds a warm-up epoch (runs started before this rule), so a
warm-up best is never kept as the final one.

Table 4's rows (``SelfPromptSAMTrainer_S1`` ... ``_S9``), ``_AdamW`` (for a ViT trained in full without a
checkpoint) and the epoch variants are named below. Every Table 4 row runs the prompt generator per slice
(``generator_depth_mixing=False``), so that S3 (vanilla adapter) against S6 (DFusedAdapter) isolates the depth
mixing the table credits to the DFusedAdapter (reasoning in :mod:`sam_nnunet.modeling.self_prompt_sam`). The
recipe, the table and the switches are in docs/trainers/self_prompt_sam.md.
"""
import numpy as np
import torch

from sam_nnunet.training.sam_trainer import SAMTrainerBase
from sam_nnunet.training.variants import epoch_variants, with_network_kwargs, with_num_epochs


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
        """``_best_ema`` of the full phase: cleared when it starts (warm-up scores were the auxiliary mask's); on a
        resume further in, the best EMA logged in the full phase so far (nnU-Net writes ``checkpoint_latest.pth``
        before its best check, so the ``_best_ema`` it restores can be a warm-up one or none). Read from the logger's
        history, which the checkpoint carries: a full phase whose first EMA was not restarted (a run started before
        this rule) may have left a warm-up epoch in ``checkpoint_best.pth``, so then the next epoch becomes the best."""
        # _best_ema: nnU-Net's own best-checkpoint criterion (set in its constructor, saved in and restored from its
        # checkpoints), written here because the paper's two phases score different outputs; nnU-Net has no hook
        # for a new criterion
        previous = self._best_ema
        if resumed:
            start, end = self.warmup_epochs, self.current_epoch
            ema = self.logger.get_value("ema_fg_dice", step=None)[start:end]
            restarted = bool(ema) and ema[0] == self.logger.get_value("mean_fg_dice", step=start)
            if restarted:
                self._best_ema = max(ema)
                return
            self._best_ema = None
            self.print_to_log_file(f"Resumed in the full phase of a run whose EMA pseudo Dice was not restarted at "
                                   f"epoch {start} (best EMA was {previous}, possibly a warm-up epoch's): the next "
                                   f"epoch becomes the new best.")
            return
        self._best_ema = None
        self.print_to_log_file(f"Best EMA pseudo Dice reset (was {previous}, scored on the warm-up's auxiliary "
                               f"mask): the EMA restarts at this epoch's Dice, which becomes the new best.")

    def on_train_epoch_start(self):
        self._apply_phase()
        super().on_train_epoch_start()

    def on_validation_epoch_end(self, val_outputs):
        super().on_validation_epoch_end(val_outputs)
        if 0 < self.warmup_epochs == self.current_epoch:
            self._restart_ema()

    def _restart_ema(self) -> None:
        """The first full-phase epoch's EMA pseudo Dice is its own Dice: no warm-up epoch enters the full phase's EMA,
        from which nnU-Net picks checkpoint_best.pth. Logged again for this epoch through nnU-Net's logger (which
        prints that it replaces a value), so every logger it holds (e.g. W&B) gets the restarted value."""
        epoch, dice = self.current_epoch, self.logger.get_value("mean_fg_dice", step=-1)
        self.print_to_log_file(f"EMA pseudo Dice restarted at this epoch's Dice ({np.round(dice, decimals=4)}).")
        self.logger.log("ema_fg_dice", dice, epoch)

    def on_train_end(self):
        self._network().use_sam_decoder = True  # the final validation and inference use the full model
        super().on_train_end()


class SelfPromptSAMTrainer_AdamW(SelfPromptSAMTrainer):
    """AdamW lr 3e-4, weight decay 1e-2: for encoders trained in full (no checkpoint)."""
    optimizer_name = "AdamW"
    base_learning_rate = 3e-4
    base_weight_decay = 1e-2


def _ablation(name: str, **switches) -> type:
    return with_network_kwargs(SelfPromptSAMTrainer, name, f"Table 4 {name.rsplit('_', 1)[1]}: {switches}", **switches)


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

(SelfPromptSAMTrainer_1epoch, SelfPromptSAMTrainer_5epochs, SelfPromptSAMTrainer_10epochs,
 SelfPromptSAMTrainer_20epochs, SelfPromptSAMTrainer_50epochs, SelfPromptSAMTrainer_100epochs,
 SelfPromptSAMTrainer_250epochs) = epoch_variants(SelfPromptSAMTrainer)
SelfPromptSAMTrainer_AdamW_20epochs = with_num_epochs(SelfPromptSAMTrainer_AdamW, 20)
SelfPromptSAMTrainer_AdamW_50epochs = with_num_epochs(SelfPromptSAMTrainer_AdamW, 50)

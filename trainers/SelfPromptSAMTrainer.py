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

Ablations of Table 4 by name: ``SelfPromptSAMTrainer_S1`` ... ``_S8`` (S9 is the full model), or
with the same switches in a plans' ``"sam_nnunet"`` block (``prompt_generator``, ``adapter``,
``depth_pos_embed``, ``modality_adapter``, ``mc_adapter``).
"""
import numpy as np
import torch

from sam_nnunet.training.sam_trainer import SAMTrainerBase, epoch_variants, with_num_epochs


class SelfPromptSAMTrainer(SAMTrainerBase):
    network_class = "sam_nnunet.modeling.self_prompt_sam.SelfPromptSAM"
    default_network_kwargs = {"encoder": "vit_b", "prompt_generator": "msp", "adapter": "dfused",
                              "depth_pos_embed": True, "modality_adapter": True, "mc_adapter": True}
    optimizer_name = "SGD"
    base_learning_rate = 1e-2
    base_weight_decay = 3e-5
    dice_weight = 1.0
    ce_weight = 1.0
    #: share of the epochs that train only the prompt generator (200 of 1000 in the paper)
    warmup_fraction = 0.2

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        if self.label_manager.has_regions:
            raise ValueError("Self-Prompt-SAM predicts one class per pixel (softmax, MC-Adapter); this dataset is "
                             "region-based (regions_class_order in dataset.json). Use HSPSAMTrainer for regions.")
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
        self._warmup_applied = warmup
        self.loss = self._build_loss()
        self._network().use_sam_decoder = not warmup or self.is_ddp
        if warmup:
            self.print_to_log_file(f"Warm-up ({self.warmup_epochs} of {self.num_epochs} epochs): only the MSPGenerator's "
                                   f"deep-supervision loss trains; validation scores the auxiliary mask.")
        else:
            self.print_to_log_file(f"Epoch {self.current_epoch}: full loss (MC-Adapter output + MSPGenerator deep "
                                   f"supervision).")

    def on_train_epoch_start(self):
        self._apply_phase()
        super().on_train_epoch_start()

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


_S2 = dict(adapter="none", depth_pos_embed=False, modality_adapter=False, mc_adapter=False)
SelfPromptSAMTrainer_S1 = _ablation("SelfPromptSAMTrainer_S1", prompt_generator="conv", **_S2)
SelfPromptSAMTrainer_S2 = _ablation("SelfPromptSAMTrainer_S2", **_S2)
SelfPromptSAMTrainer_S3 = _ablation("SelfPromptSAMTrainer_S3", **{**_S2, "adapter": "vanilla"})
SelfPromptSAMTrainer_S4 = _ablation("SelfPromptSAMTrainer_S4", **{**_S2, "adapter": "depth_before"})
SelfPromptSAMTrainer_S5 = _ablation("SelfPromptSAMTrainer_S5", **{**_S2, "adapter": "depth_after"})
SelfPromptSAMTrainer_S6 = _ablation("SelfPromptSAMTrainer_S6", **{**_S2, "adapter": "dfused"})
SelfPromptSAMTrainer_S7 = _ablation("SelfPromptSAMTrainer_S7", adapter="dfused", modality_adapter=False,
                                    mc_adapter=False)
SelfPromptSAMTrainer_S8 = _ablation("SelfPromptSAMTrainer_S8", mc_adapter=False)

# SelfPromptSAMTrainer_1epoch, _5epochs, _10epochs, _20epochs, _50epochs, _100epochs, _250epochs
globals().update(epoch_variants(SelfPromptSAMTrainer))
SelfPromptSAMTrainer_AdamW_20epochs = with_num_epochs(SelfPromptSAMTrainer_AdamW, 20)
SelfPromptSAMTrainer_AdamW_50epochs = with_num_epochs(SelfPromptSAMTrainer_AdamW, 50)

"""PG-SAM trainers (shared/papers/003): ``nnUNetv2_train DATASET 2d FOLD -tr PGSAMTrainer``.

Network: :mod:`sam_nnunet.modeling.pg_sam` (LoRA SAM encoder, FGMPA, MLFF, IMO). The trainer adds the paper's
recipe (AdamW, Eq. 8's loss on both outputs) and the text prior: the class descriptions
(:func:`sam_nnunet.modeling.blocks.text_prior.class_texts`) are recorded in the plans saved with the model, encoded once in
:meth:`initialize` by the packaged all-MiniLM-L6-v2 (extra ``[text]``) and stored in the network's weights, so
prediction needs no text encoder. Table 2 rows (``PGSAMTrainer_Baseline``, ``_FGMPA``, ``_FGMPA_MLFF``) and the
other switches are named below. The recipe, the table and the switches are in docs/trainers/pg_sam.md.
"""
import os

import numpy as np

from sam_nnunet.modeling.blocks.text_prior import TEXT_ENCODER, TEXT_FOLDER, class_texts, encode_texts
from sam_nnunet.training.sam_trainer import SAMTrainerBase
from sam_nnunet.training.variants import epoch_variants, with_network_kwargs


class PGSAMTrainer(SAMTrainerBase):
    network_class = "sam_nnunet.modeling.pg_sam.PGSAM"
    default_network_kwargs = {"encoder": "vit_b", "lora_rank": 4, "aligner": True, "fusion": True,
                              "mask_optimizer": True, "text_prior": "text", "text_projection": "isometry",
                              "aligner_weighting": "channel",
                              "optimizer_iterations": 3, "optimizer_update": "sigmoid"}
    base_weight_decay = 0.1
    dice_weight = 0.8
    ce_weight = 0.2

    refuses_regions = ("PG-SAM predicts one class per pixel (softmax over the mask tokens; IMO's refined masks leave "
                       "as log-probabilities).")

    def complete_network_kwargs(self, kwargs: dict) -> dict:
        """The class descriptions, resolved from the dataset once and recorded with the model (a list, in output
        order); a ``class_texts`` mapping from the plans' block overrides single labels."""
        kwargs = super().complete_network_kwargs(kwargs)
        texts = kwargs.get("class_texts")
        if kwargs.get("aligner", True) and kwargs.get("text_prior") == "text" and not isinstance(texts, list):
            base = self.preprocessed_dataset_folder_base
            folder = os.path.join(base, TEXT_FOLDER) if base is not None else None
            kwargs["class_texts"] = list(class_texts(self.dataset_json, self._num_targets(), folder, texts).values())
        return kwargs

    def initialize(self):
        super().initialize()
        prior = self._network().text_prior
        if prior is None or prior.mode != "text":
            self.print_to_log_file(f"PG-SAM text prior: {'off (no FGMPA)' if prior is None else prior.mode}.")
            return
        texts = self.configuration_manager.network_arch_init_kwargs["class_texts"]
        prior.set_text_embeddings(encode_texts(texts).to(prior.text_embeddings.device))
        self.print_to_log_file(f"PG-SAM text prior: {len(texts)} class descriptions encoded by {TEXT_ENCODER}:")
        for text in texts:
            self.print_to_log_file(f"  {text}")

    def deep_supervision_weights(self, num_outputs: int) -> np.ndarray:
        """Eq. 8: the high- and the low-resolution loss, summed with weight 1 each."""
        return np.ones(num_outputs)


def _variant(name: str, row: str, **switches) -> type:
    return with_network_kwargs(PGSAMTrainer, name, f"{row}: {switches}", **switches)


PGSAMTrainer_Baseline = _variant("PGSAMTrainer_Baseline", "Table 2 row I", aligner=False, fusion=False,
                                 mask_optimizer=False)
PGSAMTrainer_FGMPA = _variant("PGSAMTrainer_FGMPA", "Table 2 row II", fusion=False, mask_optimizer=False)
PGSAMTrainer_FGMPA_MLFF = _variant("PGSAMTrainer_FGMPA_MLFF", "Table 2 row III", mask_optimizer=False)
PGSAMTrainer_LearnedClasses = _variant("PGSAMTrainer_LearnedClasses", "text ablation", text_prior="learned")
PGSAMTrainer_NoText = _variant("PGSAMTrainer_NoText", "text ablation", text_prior="none")
PGSAMTrainer_TrainableTextProjection = _variant("PGSAMTrainer_TrainableTextProjection", "text ablation",
                                                text_projection="trainable")
PGSAMTrainer_SpatialWeights = _variant("PGSAMTrainer_SpatialWeights", "literal Eq. 1", aligner_weighting="spatial")
PGSAMTrainer_SignedUpdate = _variant("PGSAMTrainer_SignedUpdate", "IMO update", optimizer_update="signed")

(PGSAMTrainer_1epoch, PGSAMTrainer_5epochs, PGSAMTrainer_10epochs, PGSAMTrainer_20epochs, PGSAMTrainer_50epochs,
 PGSAMTrainer_100epochs, PGSAMTrainer_250epochs) = epoch_variants(PGSAMTrainer)

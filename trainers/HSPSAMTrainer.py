"""nnU-Net trainers for HSP-SAM (see ``sam_nnunet.modeling.hsp_sam`` for the network).

``nnUNetv2_train DATASET 2d FOLD -tr HSPSAMTrainer`` once ``nnUNet_extTrainer`` points at this folder
(``eval "$(sam_nnunet env)"``). Variants:

* ``HSPSAMTrainer_{1epoch,5epochs,10epochs,20epochs,50epochs,100epochs,250epochs}``: shorter schedules;
* ``HSPSAMTrainer_noDS``: loss on the final output only, exactly the paper's Eq. 3;
* ``HSPSAMTrainer_noQA`` / ``_noHierarchy`` / ``_noSkip``: the paper's ablations (Table 5).
"""
import numpy as np

from sam_nnunet.training.sam_trainer import SAMTrainerBase, epoch_variants


class HSPSAMTrainer(SAMTrainerBase):
    network_class = "sam_nnunet.modeling.hsp_sam.HSPSAM"
    default_network_kwargs = {"encoder": "vit_b", "lora_rank": 32, "qa_prompts": True, "hierarchical": True,
                              "skip_connections": True}


class HSPSAMTrainer_noDS(HSPSAMTrainer):
    """Loss on level 1 only (the paper's Eq. 3). The deeper levels still run (they feed level 1) but
    get weight 0, so the network and its outputs stay those of HSPSAMTrainer."""

    def deep_supervision_weights(self, num_outputs: int) -> np.ndarray:
        return np.eye(num_outputs)[0]


class HSPSAMTrainer_noQA(HSPSAMTrainer):
    default_network_kwargs = {**HSPSAMTrainer.default_network_kwargs, "qa_prompts": False}


class HSPSAMTrainer_noHierarchy(HSPSAMTrainer):
    default_network_kwargs = {**HSPSAMTrainer.default_network_kwargs, "hierarchical": False,
                              "skip_connections": False}


class HSPSAMTrainer_noSkip(HSPSAMTrainer):
    default_network_kwargs = {**HSPSAMTrainer.default_network_kwargs, "skip_connections": False}


# HSPSAMTrainer_1epoch, _5epochs, _10epochs, _20epochs, _50epochs, _100epochs, _250epochs
globals().update(epoch_variants(HSPSAMTrainer))

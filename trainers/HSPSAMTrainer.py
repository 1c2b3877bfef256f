"""nnU-Net trainers for HSP-SAM (network: :mod:`sam_nnunet.modeling.hsp_sam`).

``nnUNetv2_train DATASET 2d FOLD -tr HSPSAMTrainer`` once ``nnUNet_extTrainer`` points at this folder
(``eval "$(sam_nnunet env)"``). ``HSPSAMTrainer`` is the paper's model (Ablation_3) with deep supervision on every
level's output; the Table 5 rows (``HSPSAMTrainer_FtSAM``, ``_Ablation1`` ... ``_Ablation5``, loss on the final
output only), ``_QInput`` and the epoch variants are named below. The recipe, the table and the switches are in
docs/trainers/hsp_sam.md.
"""
from sam_nnunet.training.sam_trainer import SAMTrainerBase
from sam_nnunet.training.variants import epoch_variants, with_network_kwargs


class HSPSAMTrainer(SAMTrainerBase):
    network_class = "sam_nnunet.modeling.hsp_sam.HSPSAM"
    default_network_kwargs = {"encoder": "vit_b", "lora_rank": 32, "qa_prompts": True, "hierarchical": True,
                              "skip_connections": True}


def _table5_row(name: str, row: str, **switches) -> type:
    return with_network_kwargs(HSPSAMTrainer, name, f"Table 5 {row}: {switches or 'all modules'}; loss on the final "
                               f"output.", attributes={"supervised_outputs": "final"}, **switches)


_LORA_ONLY = dict(qa_prompts=False, hierarchical=False, skip_connections=False)
HSPSAMTrainer_FtSAM = _table5_row("HSPSAMTrainer_FtSAM", "Ft-SAM", **_LORA_ONLY, lora_rank=0)
HSPSAMTrainer_Ablation1 = _table5_row("HSPSAMTrainer_Ablation1", "Ablation_1", **{**_LORA_ONLY, "qa_prompts": True})
HSPSAMTrainer_Ablation2 = _table5_row("HSPSAMTrainer_Ablation2", "Ablation_2", skip_connections=False)
HSPSAMTrainer_Ablation3 = _table5_row("HSPSAMTrainer_Ablation3", "Ablation_3")
HSPSAMTrainer_Ablation4 = _table5_row("HSPSAMTrainer_Ablation4", "Ablation_4", qa_prompts=False, skip_connections=False)
HSPSAMTrainer_Ablation5 = _table5_row("HSPSAMTrainer_Ablation5", "Ablation_5", qa_prompts=False)


class HSPSAMTrainer_noDS(HSPSAMTrainer_Ablation3):
    """Earlier name of Ablation_3 (loss on level 1 only, exactly the paper's Eq. 3)."""


class HSPSAMTrainer_noQA(HSPSAMTrainer_Ablation5):
    """Earlier name of Ablation_5."""


class HSPSAMTrainer_noHierarchy(HSPSAMTrainer_Ablation1):
    """Earlier name of Ablation_1."""


class HSPSAMTrainer_noSkip(HSPSAMTrainer_Ablation2):
    """Earlier name of Ablation_2."""


HSPSAMTrainer_QInput = with_network_kwargs(HSPSAMTrainer, "HSPSAMTrainer_QInput", "Q-prompts joined to the encoder's "
                                           "input tokens (section 3.3's literal reading).", q_prompts_at="input")

(HSPSAMTrainer_1epoch, HSPSAMTrainer_5epochs, HSPSAMTrainer_10epochs, HSPSAMTrainer_20epochs, HSPSAMTrainer_50epochs,
 HSPSAMTrainer_100epochs, HSPSAMTrainer_250epochs) = epoch_variants(HSPSAMTrainer)

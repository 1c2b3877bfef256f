"""nnU-Net trainers for HSP-SAM (see ``sam_nnunet.modeling.hsp_sam`` for the network).

``nnUNetv2_train DATASET 2d FOLD -tr HSPSAMTrainer`` once ``nnUNet_extTrainer`` points at this folder
(``eval "$(sam_nnunet env)"``). ``HSPSAMTrainer`` is the paper's model (Ablation_3) with deep supervision
on every level's output (weights 1, 1/2, 1/4 ..., nnU-Net's halving). Variants:

* ``HSPSAMTrainer_{1epoch,5epochs,10epochs,20epochs,50epochs,100epochs,250epochs}``: shorter schedules;
* the rows of the paper's ablation table (Table 5), one trainer each::

      row          trainer                    Q&A  hierarchy  skip  encoder
      Ft-SAM       HSPSAMTrainer_FtSAM         -       -        -    fine-tuned in full (no LoRA)
      Ablation_1   HSPSAMTrainer_Ablation1     x       -        -    LoRA
      Ablation_2   HSPSAMTrainer_Ablation2     x       x        -    LoRA
      Ablation_3   HSPSAMTrainer_Ablation3     x       x        x    LoRA   (the paper's model)
      Ablation_4   HSPSAMTrainer_Ablation4     -       x        -    LoRA
      Ablation_5   HSPSAMTrainer_Ablation5     -       x        x    LoRA

  All rows put the loss on the final output only (Eq. 3; ``supervised_outputs = "final"``): rows with
  the hierarchy have N outputs and rows without it one, so deep supervision would change two things
  at once. A row differs from another only in its table switches.
* ``HSPSAMTrainer_noDS`` / ``_noQA`` / ``_noHierarchy`` / ``_noSkip``: earlier names of Ablation_3 / 5 / 1 /
  2 (same networks and, now, the same final-output loss), kept so that their runs still predict.
* ``HSPSAMTrainer_QInput``: Q-prompts joined to the encoder input instead of their global block
  (``q_prompts_at="input"``, the other reading of section 3.3).

A pretrained medical prior: the plans preset ``cpu_hsp_medsam`` (``SAM_NNUNET_CHECKPOINT=litemedsam``) builds the
network on LiteMedSAM's TinyViT (``light_encoder``), frozen with LoRA, as the paper uses a frozen SAM ViT; where
HSP-SAM's ViT-specific parts go in a TinyViT is in the network's docstring.
"""
from sam_nnunet.training.sam_trainer import SAMTrainerBase, epoch_variants


class HSPSAMTrainer(SAMTrainerBase):
    network_class = "sam_nnunet.modeling.hsp_sam.HSPSAM"
    default_network_kwargs = {"encoder": "vit_b", "lora_rank": 32, "qa_prompts": True, "hierarchical": True,
                              "skip_connections": True}


def _table5_row(name: str, row: str, **switches) -> type:
    kwargs = {**HSPSAMTrainer.default_network_kwargs, **switches}
    return type(name, (HSPSAMTrainer,), {"default_network_kwargs": kwargs, "supervised_outputs": "final",
                                         "__module__": __name__,
                                         "__doc__": f"Table 5 {row}: {switches or 'all modules'}; loss on the final output."})


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


class HSPSAMTrainer_QInput(HSPSAMTrainer):
    default_network_kwargs = {**HSPSAMTrainer.default_network_kwargs, "q_prompts_at": "input"}


# HSPSAMTrainer_1epoch, _5epochs, _10epochs, _20epochs, _50epochs, _100epochs, _250epochs
globals().update(epoch_variants(HSPSAMTrainer))

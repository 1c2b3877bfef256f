"""ESP-MedSAM trainers (shared/papers/004): ``nnUNetv2_train DATASET 2d FOLD -tr ESPMedSAMTrainer``.

Network: :mod:`sam_nnunet.modeling.esp_medsam` (TinyViT + modality controller, SPPG, QDMD). Recipe, section
IV-A-2: Adam, lr 1e-4, exponential decay (the rate is not given: here it falls to 1 % at the last epoch);
loss lambda * focal + Dice on the masks (Eq. 8; lambda = 20, SAM's ratio, as the paper gives none) plus the
SPPG's BCE on the patch map (Eq. 5, weight 1) (:mod:`sam_nnunet.training.losses`).

* ``ESPMedSAMTrainer``: the student, ESP-MedSAM-S: MobileSAM's TinyViT (``tiny_vit_5m``). Its weights come from
  ``SAM_NNUNET_CHECKPOINT``: a file written by ``sam_nnunet distill`` (MMDKD from a teacher) or MobileSAM's
  ``mobile_sam.pt``; the TinyViT it supplies is frozen (batch norms keep their statistics), the modality bags,
  neck, SPPG and QDMD train. Without a file the student trains from scratch, and the log says so.
  ``SAM_NNUNET_CHECKPOINT=litemedsam`` (or the plans preset ``cpu_medsam``, which names it) is LiteMedSAM, a TinyViT
  distilled from MedSAM: the paper's setting with a medical teacher (``light_encoder: tiny_vit_litemedsam``).
* ``ESPMedSAMTeacherTrainer``: ESP-MedSAM-T: SAM's ViT-B (``SAM_NNUNET_CHECKPOINT=sam_vit_b_01ec64.pth``,
  frozen) whose modality bags are the PEFT tokens and MLPs, with SPPG and QDMD. A trained teacher fold is a
  teacher for ``sam_nnunet distill``.
* The modality (which bag and query set run) is the dataset's: the plans' ``"modality"`` switch, dataset.json's
  ``"imaging_modality"`` or its channel names (:func:`~sam_nnunet.modeling.modality_controller.resolve_modality`),
  recorded with the model. Never the label; there is no per-image choice of the best mask.
* 2d is the paper's setting; ``3d_fullres`` runs slice by slice. Region-based datasets are refused.

Table VI rows by name (or the switches ``light_encoder``, ``controller``, ``patch_prompts``, ``modality_queries``
in a plans' ``"sam_nnunet"`` block; ``encoder`` names the SAM ViT of the rows without MMDKD and of the teacher,
so the CPU preset's ``vit_tiny`` applies to them and not to the student)::

    row   trainer                           MMDKD  SPPG  QDMD
    1     ESPMedSAMTrainer_Baseline           -      -     -     SAM ViT-B + SAM decoder
    2     ESPMedSAMTrainer_MMDKD              x      -     -
    3     ESPMedSAMTrainer_SPPG               -      x     -
    4     ESPMedSAMTrainer_QDMD               -      -     x
    5     ESPMedSAMTrainer_MMDKD_SPPG         x      x     -
    6     ESPMedSAMTrainer_MMDKD_QDMD         x      -     x
    7     ESPMedSAMTrainer_SPPG_QDMD          -      x     x
    8     ESPMedSAMTrainer                    x      x     x     the paper's model

Rows with MMDKD are the TinyViT student with its modality bags (distilled with ``sam_nnunet distill``); rows
without are SAM's ViT-B without bags (frozen when a SAM checkpoint is given, i.e. the fine-tuned-decoder
baseline). Epoch variants: ``ESPMedSAMTrainer_{1epoch,5epochs,...,250epochs}``.
"""
from sam_nnunet.modeling.checkpoint import CHECKPOINT_ENV
from sam_nnunet.modeling.modality_controller import resolve_modality
from sam_nnunet.training.losses import ESPMedSAMLoss, FocalDiceLoss
from sam_nnunet.training.sam_trainer import SAMTrainerBase, epoch_variants


class ESPMedSAMTrainer(SAMTrainerBase):
    network_class = "sam_nnunet.modeling.esp_medsam.ESPMedSAM"
    default_network_kwargs = {"encoder": "vit_b", "light_encoder": "tiny_vit_5m", "controller": True, "patch_prompts": True,
                              "modality_queries": True, "num_tokens": 8, "hidden_ratio": 0.25, "patch_layers": 1}
    optimizer_name = "Adam"
    base_learning_rate = 1e-4
    base_weight_decay = 0.0
    lr_schedule = "exponential"
    #: Eq. 8's lambda (focal) and the weight of Eq. 5's patch BCE
    focal_weight = 20.0
    patch_weight = 1.0

    refuses_regions = "ESP-MedSAM predicts one class per pixel (softmax over its mask queries)."

    def complete_network_kwargs(self, kwargs: dict) -> dict:
        """The dataset's imaging modality, resolved once (plans switch, dataset.json) and recorded with the model."""
        kwargs = super().complete_network_kwargs(kwargs)
        kwargs["modality"] = resolve_modality(self.dataset_json, kwargs.get("modality"))
        return kwargs

    def initialize(self):
        super().initialize()
        net = self._network()
        self.print_to_log_file(f"ESP-MedSAM: modality {net.modality!r} (bags: "
                               f"{'on' if net.controller is not None else 'off'}, SPPG: "
                               f"{'on' if net.sppg is not None else 'off'}, query sets: {list(net.decoder.queries)}).")

    def no_checkpoint_message(self) -> str:
        if self._network().light:
            return (f"No checkpoint ({CHECKPOINT_ENV} is not set): the TinyViT student is randomly initialised and "
                    f"trained from scratch with its modality bags (no distillation). Distil one with `sam_nnunet "
                    f"distill` (or give MobileSAM's mobile_sam.pt) and set {CHECKPOINT_ENV} to it, or start from "
                    f"LiteMedSAM's medical prior: plans preset cpu_medsam ({CHECKPOINT_ENV}=litemedsam).")
        return super().no_checkpoint_message()

    def _build_loss(self):
        lm = self.label_manager
        mask_loss = FocalDiceLoss(focal_weight=self.focal_weight, batch_dice=self.configuration_manager.batch_dice,
                                  ddp=self.is_ddp, ignore_label=lm.ignore_label)
        net = self._network()
        return ESPMedSAMLoss(mask_loss, num_classes=lm.num_segmentation_heads, patch=net.patch_size,
                             patch_weight=self.patch_weight)


class ESPMedSAMTeacherTrainer(ESPMedSAMTrainer):
    """ESP-MedSAM-T: SAM's ViT-B (frozen with a checkpoint) + modality bags (PEFT) + SPPG + QDMD."""

    default_network_kwargs = {**ESPMedSAMTrainer.default_network_kwargs, "light_encoder": None}


def _row(name: str, row: int, mmdkd: bool, sppg: bool, qdmd: bool) -> type:
    switches = {"light_encoder": "tiny_vit_5m" if mmdkd else None, "controller": mmdkd, "patch_prompts": sppg,
                "modality_queries": qdmd}
    kwargs = {**ESPMedSAMTrainer.default_network_kwargs, **switches}
    return type(name, (ESPMedSAMTrainer,), {"default_network_kwargs": kwargs, "__module__": __name__,
                                            "__doc__": f"Table VI row {row}: {switches}"})


ESPMedSAMTrainer_Baseline = _row("ESPMedSAMTrainer_Baseline", 1, False, False, False)
ESPMedSAMTrainer_MMDKD = _row("ESPMedSAMTrainer_MMDKD", 2, True, False, False)
ESPMedSAMTrainer_SPPG = _row("ESPMedSAMTrainer_SPPG", 3, False, True, False)
ESPMedSAMTrainer_QDMD = _row("ESPMedSAMTrainer_QDMD", 4, False, False, True)
ESPMedSAMTrainer_MMDKD_SPPG = _row("ESPMedSAMTrainer_MMDKD_SPPG", 5, True, True, False)
ESPMedSAMTrainer_MMDKD_QDMD = _row("ESPMedSAMTrainer_MMDKD_QDMD", 6, True, False, True)
ESPMedSAMTrainer_SPPG_QDMD = _row("ESPMedSAMTrainer_SPPG_QDMD", 7, False, True, True)

# ESPMedSAMTrainer_1epoch, _5epochs, ..., _250epochs; ESPMedSAMTeacherTrainer_1epoch, ...
globals().update(epoch_variants(ESPMedSAMTrainer))
globals().update(epoch_variants(ESPMedSAMTeacherTrainer))

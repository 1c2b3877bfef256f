"""ESP-MedSAM trainers (shared/papers/004): ``nnUNetv2_train DATASET 2d FOLD -tr ESPMedSAMTrainer``.

Network: :mod:`sam_nnunet.modeling.esp_medsam` (TinyViT + modality controller, SPPG, QDMD); losses:
:mod:`sam_nnunet.training.losses`. ``ESPMedSAMTrainer`` is the student (ESP-MedSAM-S), whose TinyViT comes from
``SAM_NNUNET_CHECKPOINT`` (a ``sam_nnunet distill`` file, MobileSAM's ``mobile_sam.pt`` or ``litemedsam``) and is
frozen; ``ESPMedSAMTeacherTrainer`` is the teacher (ESP-MedSAM-T, SAM's ViT with the bags as PEFT). The modality is
the dataset's (:func:`~sam_nnunet.modeling.blocks.modality_controller.resolve_modality`), recorded with the model. The
Table VI rows are named below. The recipe, the table and the switches are in docs/trainers/esp_medsam.md.
"""
from sam_nnunet.modeling.weights.checkpoint import CHECKPOINT_ENV
from sam_nnunet.modeling.blocks.modality_channel import CHANNEL_NAME, UNIVERSAL_KEY
from sam_nnunet.modeling.blocks.modality_controller import resolve_modality
from sam_nnunet.training.losses import ESPMedSAMLoss, FocalDiceLoss
from sam_nnunet.training.sam_trainer import SAMTrainerBase
from sam_nnunet.training.variants import epoch_variants, with_network_kwargs


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
    #: Table VI's rows with MMDKD: the student and its bags must come from `sam_nnunet distill`
    requires_distilled_student: bool = False
    #: the Table VI row this one equals when only one modality has a query set (QDMD's sets are then one, the
    #: shared decoder): such a row is refused rather than trained as a duplicate
    twin_with_one_modality: str = ""

    def complete_network_kwargs(self, kwargs: dict) -> dict:
        """The dataset's imaging modality, resolved once (plans switch, dataset.json) and recorded with the model; for
        a universal dataset (several modalities, :mod:`sam_nnunet.datasets.universal`) the code of each, read per
        sample from its modality channel."""
        kwargs = super().complete_network_kwargs(kwargs)
        universal = self.dataset_json.get(UNIVERSAL_KEY)
        if universal:
            codes = dict(universal["modality_codes"])
            channel = len(self.dataset_json["channel_names"]) - 1
            if str(self.dataset_json["channel_names"].get(str(channel))) != CHANNEL_NAME:
                raise ValueError(f"dataset.json's {UNIVERSAL_KEY} needs the modality channel last, named "
                                 f"{CHANNEL_NAME!r}; its channel_names are {self.dataset_json['channel_names']}")
            kwargs.update(modality_codes=codes, modalities=list(codes),
                          modality=kwargs.get("modality") or list(codes)[0])
        kwargs["modality"] = resolve_modality(self.dataset_json, kwargs.get("modality"))
        modalities = set(kwargs.get("modalities") or [kwargs["modality"]])
        if self.twin_with_one_modality and len(modalities) == 1:
            raise ValueError(f"{type(self).__name__} differs from {self.twin_with_one_modality} only by QDMD's "
                             f"per-modality query sets, and this training has one modality ({kwargs['modality']}): "
                             f"with one query set QDMD is the shared decoder, so this row would train "
                             f"{self.twin_with_one_modality} again. Train {self.twin_with_one_modality}, or this row "
                             f"with several modalities (\"modalities\" in the plans' \"sam_nnunet\" block).")
        return kwargs

    def initialize(self):
        super().initialize()
        net = self._network()
        self.print_to_log_file(f"ESP-MedSAM: modality {net.modality!r} (bags: "
                               f"{'on' if net.controller is not None else 'off'}, SPPG: "
                               f"{'on' if net.sppg is not None else 'off'}, query sets: {list(net.decoder.queries)}).")
        if net.modality_codes is not None:
            if self.is_ddp:
                raise RuntimeError("ESP-MedSAM's universal path runs a batch's modalities separately, so a batch "
                                   "of one modality leaves the others' bags without gradient, which DDP refuses: "
                                   "train it on one GPU")
            self.print_to_log_file(f"Universal path: each sample's bags and query set from its modality channel "
                                   f"(codes {net.modality_codes}).")
        if net.decoder.decoupled and len(net.decoder.queries) == 1:
            self.print_to_log_file("QDMD with one modality: its single query set is the shared decoder's (Table VI's "
                                   "rows with and without QDMD are the same network here).")

    def _load_pretrained(self) -> None:
        if self.requires_distilled_student:
            from sam_nnunet.distill import check_distilled_student

            record = check_distilled_student(self.sam_checkpoint, self._network().modality, type(self).__name__)
            self.print_to_log_file(f"MMDKD: {self.sam_checkpoint} was distilled by `sam_nnunet distill` "
                                   f"({record['steps']} + {record['modality_steps']} steps; bags of "
                                   f"{record['bag_modalities']}).")
        super()._load_pretrained()

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


def _row(name: str, row: int, mmdkd: bool, sppg: bool, qdmd: bool, twin: str = "") -> type:
    switches = {"light_encoder": "tiny_vit_5m" if mmdkd else None, "controller": mmdkd, "patch_prompts": sppg,
                "modality_queries": qdmd}
    return with_network_kwargs(ESPMedSAMTrainer, name, f"Table VI row {row}: {switches}",
                               {"requires_distilled_student": mmdkd, "twin_with_one_modality": twin}, **switches)


ESPMedSAMTrainer_Baseline = _row("ESPMedSAMTrainer_Baseline", 1, False, False, False)
ESPMedSAMTrainer_MMDKD = _row("ESPMedSAMTrainer_MMDKD", 2, True, False, False)
ESPMedSAMTrainer_SPPG = _row("ESPMedSAMTrainer_SPPG", 3, False, True, False)
ESPMedSAMTrainer_QDMD = _row("ESPMedSAMTrainer_QDMD", 4, False, False, True, twin="ESPMedSAMTrainer_Baseline")
ESPMedSAMTrainer_MMDKD_SPPG = _row("ESPMedSAMTrainer_MMDKD_SPPG", 5, True, True, False)
ESPMedSAMTrainer_MMDKD_QDMD = _row("ESPMedSAMTrainer_MMDKD_QDMD", 6, True, False, True, twin="ESPMedSAMTrainer_MMDKD")
ESPMedSAMTrainer_SPPG_QDMD = _row("ESPMedSAMTrainer_SPPG_QDMD", 7, False, True, True, twin="ESPMedSAMTrainer_SPPG")

(ESPMedSAMTrainer_1epoch, ESPMedSAMTrainer_5epochs, ESPMedSAMTrainer_10epochs, ESPMedSAMTrainer_20epochs,
 ESPMedSAMTrainer_50epochs, ESPMedSAMTrainer_100epochs, ESPMedSAMTrainer_250epochs) = epoch_variants(ESPMedSAMTrainer)
(ESPMedSAMTeacherTrainer_1epoch, ESPMedSAMTeacherTrainer_5epochs, ESPMedSAMTeacherTrainer_10epochs,
 ESPMedSAMTeacherTrainer_20epochs, ESPMedSAMTeacherTrainer_50epochs, ESPMedSAMTeacherTrainer_100epochs,
 ESPMedSAMTeacherTrainer_250epochs) = epoch_variants(ESPMedSAMTeacherTrainer)

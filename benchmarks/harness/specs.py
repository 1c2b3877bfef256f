"""What a harness run compares: the datasets, the default rows, and how a row is named."""
from __future__ import annotations

from pathlib import Path
from typing import Tuple


REPO = Path(__file__).resolve().parents[2]


PLANS = "nnUNetPlans_SAMcpu"


PRETRAINED = "+pretrained"


DATASETS = {  # --dataset: nnU-Net id and name, label names, what the split is
    "acdc": {"id": 27, "name": "Dataset027_ACDC", "labels": {"1": "RV", "2": "MLV", "3": "LVC"},
             "split": "fold 0 of splits_final.json (patient-grouped, sam_nnunet convert-acdc)"},
    "kvasir": {"id": 311, "name": "Dataset311_KvasirSEG", "labels": {"1": "polyp"},
               "split": "fold 0 of splits_final.json (nnU-Net's random 5-fold split of the images)"},
    # ESP-MedSAM's universal path: ACDC (slices) and Kvasir-SEG merged (sam_nnunet merge-universal); a source's cases
    # start with its name, its labels are its own (``--train-source``: the per-dataset model on the same data)
    "universal": {"id": 400, "name": "Dataset400_Universal",
                  "labels": {"1": "RV", "2": "MLV", "3": "LVC", "4": "polyp"},
                  "split": "fold 0 of splits_final.json (merge-universal: ACDC's patient-grouped folds, nnU-Net's for "
                           "Kvasir-SEG; ACDC volumes as 2D slices)",
                  "sources": {"ACDC": ["1", "2", "3"], "KvasirSEG": ["4"]}},
}


TRAINERS = ["nnUNetTrainer", "HSPSAMTrainer", "SelfPromptSAMTrainer", "PGSAMTrainer", "ESPMedSAMTrainer"]


ACCURACY = {"budget_min": 60.0, "patients": 80, "val_cases": 0,  # --accuracy
            "trainers": ["nnUNetTrainer@nnUNetPlans", "nnUNetTrainer", "HSPSAMTrainer@nnUNetPlans_SAMcpu_p8",
                         "SelfPromptSAMTrainer", "SelfPromptSAMTrainer:3d_fullres"]}


def parse_trainer(spec: str) -> Tuple[str, str, str, bool]:
    """``NAME[@PLANS][:CONFIG][+pretrained]`` -> (trainer class, plans identifier, configuration, pretrained);
    defaults: plans ``PLANS``, configuration ``2d``."""
    pretrained = spec.endswith(PRETRAINED)
    name = spec[: -len(PRETRAINED)] if pretrained else spec
    name, _, configuration = name.partition(":")
    trainer_class, _, plans = name.partition("@")
    return trainer_class, plans or PLANS, configuration or "2d", pretrained

"""sam_nnunet: SAM-based segmentation networks as nnU-Net v2 trainers."""
import os

__version__ = "0.1.0"


def trainers_folder() -> str:
    """The folder to put in ``nnUNet_extTrainer`` (the installed ``trainers/``)."""
    from sam_nnunet import trainers

    return os.path.dirname(os.path.abspath(trainers.__file__))

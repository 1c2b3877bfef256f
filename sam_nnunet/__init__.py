"""sam_nnunet: SAM-based segmentation networks as nnU-Net v2 trainers."""
import os
from pathlib import Path
from typing import Dict, Optional, Union

__version__ = "0.1.0"

#: nnU-Net's data folders, as its environment variables name them
NNUNET_FOLDERS = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")


def trainers_folder() -> str:
    """The folder to put in ``nnUNet_extTrainer`` (the installed ``trainers/``)."""
    from sam_nnunet import trainers

    return os.path.dirname(os.path.abspath(trainers.__file__))


def nnunet_env(root: Optional[Union[str, Path]] = None, **folders: Union[str, Path]) -> Dict[str, str]:
    """The variables nnU-Net's commands need to run the project's trainers: ``nnUNet_extTrainer`` (this install's
    ``trainers/``) and nnU-Net's data folders, each given by its variable's name (``nnUNet_raw=...``) or else
    ``root/<variable>``; without either it is left out. Paths are made absolute."""
    unknown = sorted(set(folders) - set(NNUNET_FOLDERS))
    if unknown:
        raise ValueError(f"nnunet_env: {unknown} are not nnU-Net folders; expected some of {list(NNUNET_FOLDERS)}")
    env = {"nnUNet_extTrainer": trainers_folder()}
    for var in NNUNET_FOLDERS:
        folder = folders.get(var) or (Path(root) / var if root is not None else None)
        if folder is not None:
            env[var] = str(Path(folder).resolve())
    return env


def predict(image, model, **options):
    """The mask of one image by a shared model: :func:`sam_nnunet.sharing.predict.predict` (its manual)."""
    from sam_nnunet.sharing.predict import predict as run

    return run(image, model, **options)


def load_model(model, **options):
    """A model loaded once for many :func:`predict` calls: :func:`sam_nnunet.sharing.model.load_model`."""
    from sam_nnunet.sharing.model import load_model as load

    return load(model, **options)

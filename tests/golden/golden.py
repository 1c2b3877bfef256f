"""The golden model's files and the one way its cases are predicted (shared by the test and make_golden.py)."""
import os
from pathlib import Path
from typing import Dict

HERE = Path(__file__).resolve().parent
MODEL = HERE / "model"
MODEL_FOLDER = MODEL / "Dataset027_ACDC" / "HSPSAMTrainer_20epochs__nnUNetPlans_SAMcpu__2d"
REFERENCE = HERE / "reference"
ACDC = Path(os.environ.get("SAM_NNUNET_ACDC", HERE.parents[2] / "shared" / "data" / "ACDC"))
#: sam_nnunet demo --patients 20 --holdout 2 holds out the last 2 of the first 20 patients (sorted)
TRAINED_ON, HELD_OUT = 20, 2


def held_out_cases(acdc: Path) -> Dict[str, Path]:
    """case name -> shipped image file, for the patients the golden model never saw."""
    patients = sorted(p for p in (acdc / "training").iterdir() if p.is_dir())[:TRAINED_ON][-HELD_OUT:]
    return {f.name[: -len(".nii.gz")]: f for p in patients
            for f in sorted(p.glob(f"{p.name}_frame??.nii.gz"))}


def predict(image: Path, out: Path) -> None:
    """Predict one shipped volume on the CPU with nnU-Net's predictor (no mirroring) and write the mask."""
    import torch
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    from sam_nnunet import trainers_folder

    os.environ.setdefault("nnUNet_extTrainer", trainers_folder())
    predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=False,
                                perform_everything_on_device=False, device=torch.device("cpu"), allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(MODEL_FOLDER), use_folds=(0,))
    data, props = SimpleITKIO().read_images([str(image)])
    seg = predictor.predict_single_npy_array(data, props, None, None, False)
    SimpleITKIO().write_seg(seg, str(out), props)

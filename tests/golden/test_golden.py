"""Golden outputs in nnU-Net's style: a small committed model must reproduce its committed masks on shipped
ACDC volumes (Dice > 0.99 per class), so that a numerics change in torch, nnU-Net's preprocessing or sliding
window, or this project's networks is caught. After an intended change: ``python tests/golden/make_golden.py``.
"""
import numpy as np
import SimpleITK as sitk
from golden import ACDC, MODEL_FOLDER, REFERENCE, held_out_cases, predict


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def test_golden_model_reproduces_its_reference_masks(tmp_path):
    cases = held_out_cases(ACDC)
    assert len(cases) == 4 and sorted(cases) == sorted(p.name[: -len(".nii.gz")] for p in REFERENCE.glob("*.nii.gz"))
    assert (MODEL_FOLDER / "fold_0" / "checkpoint_final.pth").stat().st_size < 5 * 2 ** 20
    for case, image in cases.items():
        predict(image, tmp_path / f"{case}.nii.gz")
        ref_img, pred_img = sitk.ReadImage(str(REFERENCE / f"{case}.nii.gz")), sitk.ReadImage(str(tmp_path / f"{case}.nii.gz"))
        assert pred_img.GetSize() == sitk.ReadImage(str(image)).GetSize()
        ref, pred = sitk.GetArrayFromImage(ref_img), sitk.GetArrayFromImage(pred_img)
        for label in (1, 2, 3):  # every class is in every reference mask: the comparison is not of empty masks
            assert (ref == label).sum() > 100, (case, label)
            assert dice(ref == label, pred == label) > 0.99, (case, label, dice(ref == label, pred == label))


def test_golden_model_on_onnx_runtime_reproduces_its_reference_masks(tmp_path):
    """The same cases through sam_nnunet's ONNX export and nnU-Net's sliding window on ONNX Runtime."""
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    from sam_nnunet.export.onnx_model import export_onnx, read_export
    from sam_nnunet.export.onnx_predictor import make_predictor

    model = export_onnx(MODEL_FOLDER, tmp_path / "onnx", [0], verbose=False)
    assert read_export(model)["folds"]["0"]["epoch"] == 20
    predictor = make_predictor(model, use_mirroring=False, allow_tqdm=False)  # as golden.predict
    for case, image in held_out_cases(ACDC).items():
        data, props = SimpleITKIO().read_images([str(image)])
        pred = predictor.predict_single_npy_array(data, props, None, None, False)
        ref = sitk.GetArrayFromImage(sitk.ReadImage(str(REFERENCE / f"{case}.nii.gz")))
        assert pred.shape == ref.shape
        for label in (1, 2, 3):
            assert (ref == label).sum() > 100, (case, label)
            assert dice(ref == label, pred == label) > 0.99, (case, label, dice(ref == label, pred == label))

"""``sam_nnunet predict`` and ``sam_nnunet.predict`` with the golden model on shipped ACDC volumes it never saw:
files with any names, masks with the input's geometry, predictions.json, postprocessing, ensembles, the API."""
import json
import shutil

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from scipy import ndimage

import sam_nnunet
from sam_nnunet.cli import main as cli
from sam_nnunet.sharing.model import Model, locate_model
from sam_nnunet.sharing.trust import trusted_predictor
from tests.golden.golden import MODEL_FOLDER as GOLDEN
from tests.sharing.test_trust import hostile_checkpoint


def predict_cli(*args):
    return cli(["predict", "--disable-progress-bar", *map(str, args)])


def assert_geometry(mask: sitk.Image, image: sitk.Image):
    assert mask.GetSize() == image.GetSize()
    np.testing.assert_allclose(mask.GetSpacing(), image.GetSpacing(), atol=1e-5)
    np.testing.assert_allclose(mask.GetOrigin(), image.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(mask.GetDirection(), image.GetDirection(), atol=1e-5)


def test_one_file_gives_a_mask_with_its_geometry_and_class_volumes(model_copy, crop_file, tmp_path, capsys):
    assert predict_cli("-i", crop_file, "-o", tmp_path / "out", "-m", model_copy, "--fast") == 0
    mask = sitk.ReadImage(str(tmp_path / "out" / crop_file.name))
    assert_geometry(mask, sitk.ReadImage(str(crop_file)))
    labels = sitk.GetArrayFromImage(mask)
    assert set(np.unique(labels)) == {0, 1, 2, 3}
    record = json.loads((tmp_path / "out" / "predictions.json").read_text())
    (row,) = record["cases"]
    assert row["case"] == "patient023_frame01" and row["shape"] == list(labels.shape)
    voxel_ml = float(np.prod(mask.GetSpacing())) / 1000
    assert row["spacing_mm"] == pytest.approx(list(reversed(mask.GetSpacing())))
    for name, value in (("RV", 1), ("MLV", 2), ("LVC", 3)):
        assert row["classes"][name]["voxels"] == int((labels == value).sum()) > 0
        assert row["classes"][name]["volume_ml"] == pytest.approx((labels == value).sum() * voxel_ml)
    assert record["folds"] == [[0]] and record["postprocessing"] == []
    assert "LVC" in capsys.readouterr().out


def test_a_folder_of_files_with_any_names(model_copy, crop_file, tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    image = sitk.ReadImage(str(crop_file))
    sitk.WriteImage(image, str(inputs / "scan-A.nii.gz"))
    sitk.WriteImage(image, str(inputs / "second.nrrd"))
    (inputs / "notes.txt").write_text("not an image")
    assert predict_cli("-i", inputs, "-o", tmp_path / "out", "-m", model_copy, "--fast") == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["predictions.json", "scan-A.nii.gz",
                                                                    "second.nrrd"]
    nifti = sitk.ReadImage(str(tmp_path / "out" / "scan-A.nii.gz"))
    nrrd = sitk.ReadImage(str(tmp_path / "out" / "second.nrrd"))
    assert_geometry(nrrd, image)
    assert set(np.unique(sitk.GetArrayFromImage(nrrd))) == {0, 1, 2, 3}
    np.testing.assert_array_equal(sitk.GetArrayFromImage(nrrd), sitk.GetArrayFromImage(nifti))  # the same pixels


@pytest.mark.bad_input("predict", cases=3)
def test_existing_results_hostile_models_and_bad_images_stop_the_run(model_copy, crop_file, tmp_path, capsys):
    out = tmp_path / "out"
    assert predict_cli("-i", crop_file, "-o", out, "-m", model_copy, "--fast") == 0
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert predict_cli("-i", crop_file, "-o", out, "-m", model_copy, "--fast") == 2
    assert "already exist" in capsys.readouterr().err
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before

    marker = tmp_path / "ran"
    hostile_checkpoint(model_copy / "fold_0" / "checkpoint_final.pth", marker)
    assert predict_cli("-i", crop_file, "-o", tmp_path / "out2", "-m", model_copy) == 2
    assert "posix.system" in capsys.readouterr().err and not marker.exists()
    assert not (tmp_path / "out2").exists()

    nan = sitk.Cast(sitk.ReadImage(str(crop_file)), sitk.sitkFloat32)
    array = sitk.GetArrayFromImage(nan)
    array[1, 5, 5] = np.nan
    bad = sitk.GetImageFromArray(array)
    bad.CopyInformation(nan)
    sitk.WriteImage(bad, str(tmp_path / "nan.nii.gz"))
    assert predict_cli("-i", tmp_path / "nan.nii.gz", "-o", tmp_path / "out3", "-m", GOLDEN) == 2
    assert "NaN or infinite" in capsys.readouterr().err and not (tmp_path / "out3").exists()


def test_the_api_equals_the_command_and_loads_the_model_once(model_copy, crop_file, tmp_path, monkeypatch):
    assert predict_cli("-i", crop_file, "-o", tmp_path / "out", "-m", model_copy, "--fast") == 0
    expected = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "out" / crop_file.name)))
    built = []
    import sam_nnunet.sharing.model as model_module
    monkeypatch.setattr(model_module.Model, "__init__", _counting(model_module.Model.__init__, built))
    mask = sam_nnunet.predict(crop_file, model_copy, fast=True)
    assert isinstance(mask, sitk.Image)
    assert_geometry(mask, sitk.ReadImage(str(crop_file)))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(mask), expected)
    array, geometry = sam_nnunet.predict(sitk.ReadImage(str(crop_file)), model_copy, fast=True, as_array=True)
    np.testing.assert_array_equal(array, expected)
    assert geometry["spacing"] == pytest.approx(mask.GetSpacing())
    assert len(built) == 1  # the second call reused the loaded model
    model = sam_nnunet.load_model(model_copy, fast=True)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sam_nnunet.predict(crop_file, model)), expected)


def _counting(init, calls):
    def wrapper(self, *args, **kwargs):
        calls.append(1)
        init(self, *args, **kwargs)
    return wrapper


def largest_component_only(mask: np.ndarray, label: int) -> np.ndarray:
    """Independent of nnU-Net: voxels of ``label`` outside its largest 3D component set to 0 (full connectivity:
    faces, edges and corners, as nnU-Net's acvl_utils labels components)."""
    components, n = ndimage.label(mask == label, structure=np.ones((3, 3, 3)))
    sizes = ndimage.sum(np.ones_like(mask), components, range(1, n + 1))
    out = mask.copy()
    out[(components > 0) & (components != 1 + int(np.argmax(sizes)))] = 0
    return out


def write_postprocessing(folder, labels_or_regions):
    """nnU-Net's postprocessing.json (what determine_postprocessing writes) choosing to keep the largest component."""
    folder.mkdir(parents=True)
    (folder / "postprocessing.json").write_text(json.dumps({
        "postprocessing_fns": ["remove_all_but_largest_component_from_segmentation"],
        "postprocessing_kwargs": [{"labels_or_regions": labels_or_regions}]}))


def test_the_models_postprocessing_is_applied(model_copy, held_out_volume, tmp_path):
    assert predict_cli("-i", held_out_volume, "-o", tmp_path / "raw", "-m", model_copy, "--fast") == 0
    raw = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "raw" / held_out_volume.name)))
    assert ndimage.label(raw == 2)[1] > 1  # the 20-epoch model leaves stray MLV islands on a full volume
    write_postprocessing(model_copy / "crossval_results_folds_0", 2)
    assert predict_cli("-i", held_out_volume, "-o", tmp_path / "pp", "-m", model_copy, "--fast") == 0
    post = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "pp" / held_out_volume.name)))
    np.testing.assert_array_equal(post, largest_component_only(raw, 2))
    assert (post != raw).any() and ((post != raw) <= (raw == 2)).all()
    record = json.loads((tmp_path / "pp" / "predictions.json").read_text())
    assert "remove_all_but_largest_component_from_segmentation" in record["postprocessing"][0]
    assert predict_cli("-i", held_out_volume, "-o", tmp_path / "off", "-m", model_copy, "--fast",
                       "--no-postprocessing") == 0
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "off" / held_out_volume.name))),
                                  raw)


@pytest.mark.bad_input("predict")
def test_a_postprocessing_function_that_is_not_nnunets_is_refused(model_copy, crop_file, tmp_path, capsys):
    write_postprocessing(model_copy / "crossval_results_folds_0", 2)
    pp = model_copy / "crossval_results_folds_0" / "postprocessing.json"
    pp.write_text(pp.read_text().replace("remove_all_but_largest_component_from_segmentation", "system"))
    assert predict_cli("-i", crop_file, "-o", tmp_path / "out", "-m", model_copy) == 2
    assert "['system'] is not nnU-Net's" in capsys.readouterr().err


def test_an_ensemble_averages_its_members_probabilities(model_copy, crop_file, tmp_path):
    """A dataset folder whose inference_information.json (nnU-Net's format) selects two models."""
    dataset = model_copy.parent
    other = dataset / model_copy.name.replace("nnUNetPlans_SAMcpu", "nnUNetPlans_SAMcpuB")
    shutil.copytree(model_copy, other)
    checkpoint = torch.load(other / "fold_0" / "checkpoint_final.pth", weights_only=True)
    generator = torch.Generator().manual_seed(0)
    for key, value in checkpoint["network_weights"].items():
        if key.endswith("weight") and value.is_floating_point():
            value.add_(0.2 * value.std(unbiased=False).nan_to_num() * torch.randn(value.shape, generator=generator))
    torch.save(checkpoint, other / "fold_0" / "checkpoint_final.pth")
    members = [{"configuration": "2d", "trainer": m.name.split("__")[0], "plans_identifier": m.name.split("__")[1]}
               for m in (model_copy, other)]
    (dataset / "inference_information.json").write_text(json.dumps({"best_model_or_ensemble": {
        "selected_model_or_models": members,
        "postprocessing_file": f"/elsewhere/nnUNet_results/{dataset.name}/ensembles/ensemble___a___b___0/"
                               f"postprocessing.pkl"}}))
    files = locate_model(dataset.parent)
    assert files.members == (model_copy, other) and files.postprocessing is None

    assert predict_cli("-i", crop_file, "-o", tmp_path / "out", "-m", dataset, "--fast") == 0
    ensemble = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "out" / crop_file.name)))
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    data, props = SimpleITKIO().read_images([str(crop_file)])
    probabilities, masks = [], []
    for member in (model_copy, other):
        seg, probs = trusted_predictor(member, use_mirroring=False).predict_single_npy_array(data, props, None, None,
                                                                                           True)
        masks.append(seg)
        probabilities.append(probs)
    expected = np.argmax(np.mean(probabilities, axis=0), axis=0)
    np.testing.assert_array_equal(ensemble, expected)
    assert (masks[0] != masks[1]).any() and (ensemble != masks[1]).any()


def test_the_challenge_entrypoint_runs_the_same_postprocessing(model_copy, crop_file, tmp_path):
    from sam_nnunet.submission import main as entrypoint

    write_postprocessing(model_copy / "crossval_results_folds_0", [1, 2, 3])
    inputs = tmp_path / "in"
    inputs.mkdir()
    shutil.copy(crop_file, inputs / crop_file.name)
    assert entrypoint(["--model", str(model_copy), "--input", str(inputs), "--output", str(tmp_path / "gc"),
                       "--no-mirroring"]) == 0
    assert predict_cli("-i", inputs, "-o", tmp_path / "cli", "-m", model_copy, "--fast") == 0
    ours = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "cli" / crop_file.name)))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "gc" / crop_file.name))),
                                  ours)
    assert ndimage.label(ours > 0, structure=np.ones((3, 3, 3)))[1] == 1  # the foreground kept as one component


def test_a_model_is_found_in_a_results_folder_an_export_folder_or_a_dataset_folder(model_copy):
    for given in (model_copy, model_copy.parent, model_copy.parent.parent):
        files = locate_model(given)
        assert files.members == (model_copy,) and files.given == given
    second = model_copy.parent / "nnUNetTrainer__nnUNetPlans__2d"
    shutil.copytree(model_copy, second)
    with pytest.raises(ValueError, match="holds 2 model folders"):
        locate_model(model_copy.parent)


def test_fast_uses_one_fold_without_mirroring(model_copy):
    model = Model(locate_model(model_copy), fast=True, device="cpu")
    assert model.folds == [[0]] and not model.mirroring and model.predictors[0].use_mirroring is False

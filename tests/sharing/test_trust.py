"""Loading someone else's model runs none of their code: weights-only checkpoints with an allow-list, vetted plans."""
import collections
import json
import os

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from sam_nnunet.sharing.trust import UntrustedModelError, check_plans, load_checkpoint, trusted_predictor
from tests.golden.golden import MODEL_FOLDER


class RunsACommand:
    """Unpickled, this calls ``os.system``: what a hostile checkpoint would do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def hostile_checkpoint(path, marker):
    """An nnU-Net-shaped checkpoint whose pickle runs ``touch marker`` when loaded unsafely."""
    torch.save({"network_weights": collections.OrderedDict(w=torch.zeros(1)), "trainer_name": "nnUNetTrainer",
                "init_args": {"configuration": "2d"}, "payload": RunsACommand(marker)}, path)
    return path


@pytest.mark.bad_input("model files")
def test_a_checkpoint_that_would_run_a_command_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "ran"
    path = hostile_checkpoint(tmp_path / "checkpoint_final.pth", marker)
    torch.load(path, weights_only=False)  # the file is what it claims: an unsafe load runs the command
    assert marker.exists()
    marker.unlink()
    with pytest.raises(UntrustedModelError, match=r"posix\.system|os\.system") as error:
        load_checkpoint(path)
    assert "was not loaded" in str(error.value)
    assert not marker.exists()


def test_what_nnunet_checkpoints_hold_loads(tmp_path):
    """Tensors, torch.device and the numpy scalars and arrays nnU-Net versions keep in their training log."""
    saved = {"network_weights": collections.OrderedDict(w=torch.arange(3.0)), "current_epoch": 7,
             "logging": {"mean_fg_dice": [np.float64(0.5), np.float32(0.25)], "ema": np.array([1.0, 2.0])},
             "init_args": {"device": torch.device("cpu"), "fold": 0}, "inference_allowed_mirroring_axes": (0, 1)}
    torch.save(saved, tmp_path / "c.pth")
    loaded = load_checkpoint(tmp_path / "c.pth")
    assert torch.equal(loaded["network_weights"]["w"], saved["network_weights"]["w"])
    assert loaded["logging"]["mean_fg_dice"] == [0.5, 0.25]
    np.testing.assert_array_equal(loaded["logging"]["ema"], [1.0, 2.0])
    assert loaded["init_args"]["device"] == torch.device("cpu")
    assert loaded["inference_allowed_mirroring_axes"] == (0, 1)


def test_the_golden_models_checkpoint_loads_weights_only():
    checkpoint = load_checkpoint(MODEL_FOLDER / "fold_0" / "checkpoint_final.pth")
    assert checkpoint["trainer_name"] == "HSPSAMTrainer_20epochs" and checkpoint["network_weights"]


@pytest.mark.bad_input("model files", cases=2)
def test_plans_may_name_network_classes_of_known_packages_only():
    plans = json.loads((MODEL_FOLDER / "plans.json").read_text())
    check_plans(plans)  # the project's own network
    hostile = json.loads(json.dumps(plans))
    hostile["configurations"]["2d"]["architecture"]["network_class_name"] = "os.system"
    with pytest.raises(UntrustedModelError, match=r"'2d' names \['os.system'\]"):
        check_plans(hostile)
    hostile = json.loads(json.dumps(plans))
    arch = hostile["configurations"]["2d"]["architecture"]
    arch["arch_kwargs"]["conv_op"] = "subprocess.Popen"
    arch["_kw_requires_import"] = ["conv_op"]
    with pytest.raises(UntrustedModelError, match="subprocess.Popen"):
        check_plans(hostile)


def test_trusted_predictor_equals_nnunets_own_initialisation(crop_file):
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    ours = trusted_predictor(MODEL_FOLDER, None, use_mirroring=False)
    theirs = nnUNetPredictor(use_mirroring=False, perform_everything_on_device=False, device=torch.device("cpu"),
                             allow_tqdm=False)
    theirs.initialize_from_trained_model_folder(str(MODEL_FOLDER), use_folds=(0,))
    assert ours.trainer_name == theirs.trainer_name and ours.allowed_mirroring_axes == theirs.allowed_mirroring_axes
    assert type(ours.network) is type(theirs.network)
    for a, b in zip(ours.list_of_parameters[0].values(), theirs.list_of_parameters[0].values()):
        assert torch.equal(a, b)
    data, props = SimpleITKIO().read_images([str(crop_file)])
    seg_ours = ours.predict_single_npy_array(data, props, None, None, False)
    seg_theirs = theirs.predict_single_npy_array(data, props, None, None, False)
    assert seg_ours.shape == sitk.GetArrayFromImage(sitk.ReadImage(str(crop_file))).shape
    assert set(np.unique(seg_ours)) == {0, 1, 2, 3}
    np.testing.assert_array_equal(seg_ours, seg_theirs)


def test_on_a_torch_without_the_allow_list_helpers_the_refusal_still_names_the_global(tmp_path, monkeypatch):
    """torch 2.4 (add_safe_globals only, no safe_globals context, no get_unsafe_globals_in_checkpoint), as in some
    base images: the file is still refused, named by reading its pickle without running it."""
    monkeypatch.delattr(torch.serialization, "safe_globals")
    monkeypatch.delattr(torch.serialization, "get_unsafe_globals_in_checkpoint")
    added = []
    monkeypatch.setattr(torch.serialization, "add_safe_globals", added.extend)
    marker = tmp_path / "ran"
    with pytest.raises(UntrustedModelError, match=r"posix\.system"):
        load_checkpoint(hostile_checkpoint(tmp_path / "c.pth", marker))
    assert not marker.exists() and added  # the allow-list was handed to torch

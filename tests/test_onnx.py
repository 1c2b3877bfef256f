"""ONNX export (sam_nnunet export-onnx) and nnU-Net prediction on ONNX Runtime (sam_nnunet predict-onnx).

Folds here are built by the trainers themselves (``initialize()``) and saved with ``save_checkpoint``; their
weights are moved off the initialisation by seeded noise, so that zero-initialised parts (LoRA's B, adapters'
up-projections) are exercised too. What is checked is that the two backends compute the same function, for
every trainer of the project, on real preprocessed ACDC tiles; the trained golden model is checked on full
shipped volumes in tests/golden.
"""
import importlib.util
import inspect
import os
import subprocess
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import SimpleITK as sitk
import torch
from nnunetv2.run.run_training import get_trainer_from_args
from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class

from sam_nnunet import trainers_folder
from sam_nnunet.cli import main as cli
from sam_nnunet.export.model import save_fold
from sam_nnunet.export.onnx_model import (INPUT_NAME, METADATA_FILE, OnnxExportError, export_network, export_onnx,
                                    has_discrete_prompts, read_export)
from sam_nnunet.export.onnx_predictor import make_predictor
from sam_nnunet.training.sam_trainer import SAMTrainerBase

CPU = torch.device("cpu")
PLANS = "nnUNetPlans_SAMcpu"
#: largest |ONNX Runtime - torch| logit difference, relative to the largest |logit| of that output. Both compute
#: in float32 with sums in other orders. Measured here: about 1e-6 for the 2d SAM networks and trained folds, 1e-4
#: for nnU-Net's U-Net (ONNX Runtime's one-pass InstanceNormalization); a wrong graph (a frozen batch, a constant
#: prompt) is off by O(1).
RTOL = 1e-3
#: 3d Self-Prompt-SAM (perturbed fold): up to 1.6e-3. Its parts, each exported alone, match to 1e-6 (ViT blocks,
#: adapters) and 5e-5 to 1e-4 (MAdapter, patch embedding) on the same inputs; the whole encoder to 1e-3.
RTOL_SELF_PROMPT_3D = 5e-3


def sam_trainer_names():
    """Every SAM trainer class of the project except the schedule-length variants (same networks)."""
    names = []
    for module in ("HSPSAMTrainer", "SelfPromptSAMTrainer", "PGSAMTrainer", "ESPMedSAMTrainer"):
        spec = importlib.util.spec_from_file_location(f"_onnx_{module}", f"{trainers_folder()}/{module}.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        # Table VI's QDMD twins are refused on one modality: their networks are their twins' (tested equal)
        names += [n for n, c in vars(mod).items() if inspect.isclass(c) and issubclass(c, SAMTrainerBase)
                  and c is not SAMTrainerBase and "epoch" not in n and not getattr(c, "twin_with_one_modality", "")]
    return sorted(set(names))


def make_fold(trainer_name: str, configuration: str, fold: int = 0, seed: int = 0):
    """A finished fold in $nnUNet_results as training leaves it: plans.json, dataset.json, checkpoint_final.pth."""
    t = get_trainer_from_args("27", configuration, fold, trainer_name, PLANS, device=CPU)
    # what is exported is the row's network; the MMDKD rows' demand for a distilled file is tested with the trainer
    t.requires_distilled_student = False
    torch.manual_seed(seed)
    t.initialize()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in t.network.parameters():  # 20 % of the tensor's spread; zero-initialised tensors get 0.02
            spread = float(p.std()) if p.numel() > 1 and float(p.std()) > 0 else 0.1
            p.add_(0.2 * spread * torch.randn(p.shape, generator=generator))
    return save_fold(t), t


def real_tiles(trainer, n: int = 2) -> torch.Tensor:
    """n patch-sized tiles of preprocessed ACDC cases (zero-padded as nnU-Net's sliding window pads)."""
    folder = os.path.join(os.environ["nnUNet_preprocessed"], "Dataset027_ACDC",
                          trainer.configuration_manager.data_identifier)
    dataset = infer_dataset_class(folder)(folder)
    patch = list(trainer.configuration_manager.patch_size)
    tiles = []
    for key in sorted(dataset.identifiers)[:n]:
        data = np.asarray(dataset.load_case(key)[0])  # C x D x H x W
        if len(patch) == 2:
            data = data[:, data.shape[1] // 2]
        tile = np.zeros((data.shape[0], *patch), dtype=np.float32)
        region = tuple(slice(0, min(a, b)) for a, b in zip(data.shape[1:], patch))
        tile[(slice(None),) + region] = data[(slice(None),) + region]
        tiles.append(tile)
    return torch.from_numpy(np.stack(tiles))


def assert_backends_agree(network, tiles, path, rtol=RTOL):
    """ONNX Runtime gives torch's logits, at a batch size other than the traced one."""
    network.eval()
    prompted = has_discrete_prompts(network)
    if prompted:  # also export the auxiliary outputs (see below)
        network.deep_supervision = True
    export_network(network, tiles[:1], path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [d for d in session.get_inputs()[0].shape[1:]] == list(tiles.shape[1:])  # patch-sized, batch dynamic
    outs = session.run(None, {INPUT_NAME: tiles.numpy()})  # batch 2, traced at batch 1
    with torch.no_grad():
        refs = network(tiles)
        if prompted:
            # Self-Prompt-SAM prompts its SAM decoder from the argmax of the auxiliary mask: a last-bit difference
            # can flip an auxiliary pixel and so move a prompt. The auxiliary outputs are compared as they are;
            # the final output against torch's decoder prompted from ONNX Runtime's auxiliary mask. (That the
            # prompt step itself is exact: tests/modeling/test_auto_prompts.py.)
            refs[0] = decode_from(network, tiles, torch.from_numpy(outs[1]))
        else:
            refs, outs = [refs], outs[:1]
    for ref, out in zip(refs, outs):
        ref = ref.numpy()
        assert out.shape == ref.shape
        scale = np.abs(ref).max()
        assert ref.std() > 1e-3 * scale > 0  # logits that vary over the tile, not a constant
        np.testing.assert_allclose(out, ref, rtol=0, atol=rtol * scale)


def decode_from(network, x, aux_full):
    """Self-Prompt-SAM's final logits for input x (patch-sized) with the given full-resolution auxiliary mask."""
    from sam_nnunet.modeling.common import fold_depth

    is_2d = x.ndim == 4
    slices = fold_depth(x.unsqueeze(2) if is_2d else x)[0]
    adapter = network.modality_adapter
    tokens = network.encoder(adapter(slices) if adapter is not None else slices)
    final = network._decode(tokens[-1], aux_full.unsqueeze(2) if is_2d else aux_full)
    return final.squeeze(2) if is_2d else final


@pytest.mark.parametrize("trainer_name", ["nnUNetTrainer"] + sam_trainer_names())
def test_onnx_logits_match_torch_for_every_trainer_2d(acdc_env, tmp_path, trainer_name):
    _, trainer = make_fold(trainer_name, "2d")
    trainer.set_deep_supervision_enabled(False)
    assert_backends_agree(trainer.network, real_tiles(trainer), tmp_path / "model.onnx")


@pytest.mark.parametrize("trainer_name", ["nnUNetTrainer", "HSPSAMTrainer", "SelfPromptSAMTrainer", "PGSAMTrainer",
                                          "ESPMedSAMTrainer"])
def test_onnx_logits_match_torch_3d_fullres(acdc_env, tmp_path, trainer_name):
    _, trainer = make_fold(trainer_name, "3d_fullres")
    trainer.set_deep_supervision_enabled(False)
    rtol = RTOL_SELF_PROMPT_3D if trainer_name == "SelfPromptSAMTrainer" else RTOL
    assert_backends_agree(trainer.network, real_tiles(trainer), tmp_path / "model.onnx", rtol)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 1.0 if a.sum() + b.sum() == 0 else 2 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def test_cli_export_then_predict_onnx_matches_nnunetv2_predict(acdc_env, tmp_path):
    """HSP-SAM, two folds (ensemble), mirroring on: the two commands write the same masks."""
    for fold in (0, 1):
        make_fold("HSPSAMTrainer", "2d", fold=fold, seed=fold)
    out = tmp_path / "onnx"
    assert cli(["export-onnx", "-d", "27", "-c", "2d", "-tr", "HSPSAMTrainer", "-p", PLANS, "-f", "0", "1",
                "-o", str(out)]) == 0
    model = out / "Dataset027_ACDC" / f"HSPSAMTrainer__{PLANS}__2d"
    meta = read_export(model)
    assert meta["trainer"] == "HSPSAMTrainer" and meta["configuration"] == "2d" and meta["opset"] >= 17
    assert meta["input_shape"] == ["batch", 1, 128, 128] and meta["output_channels"] == 4
    assert meta["inference_allowed_mirroring_axes"] == [0, 1]
    assert {"sam_nnunet", "nnunetv2", "torch", "onnxruntime"} <= set(meta["versions"])
    assert sorted(meta["folds"]) == ["0", "1"]
    assert sorted(p.name for p in model.iterdir()) == ["dataset.json", "fold_0", "fold_1", METADATA_FILE, "plans.json"]

    images = Path(os.environ["nnUNet_raw"]) / "Dataset027_ACDC" / "imagesTs"
    env = dict(os.environ)
    common = ["-i", str(images), "-npp", "1", "-nps", "1", "--disable_progress_bar"]
    torch_run = subprocess.run(["nnUNetv2_predict", *common, "-o", str(tmp_path / "torch"), "-d", "27", "-c", "2d",
                                "-tr", "HSPSAMTrainer", "-p", PLANS, "-f", "0", "1", "-device", "cpu"],
                               env=env, capture_output=True, text=True)
    assert torch_run.returncode == 0, torch_run.stderr[-2000:]
    onnx_run = subprocess.run(["sam_nnunet", "predict-onnx", *common, "-o", str(tmp_path / "ort"), "-m", str(model)],
                              env=env, capture_output=True, text=True)
    assert onnx_run.returncode == 0, onnx_run.stderr[-2000:]
    assert "Predicting patient" in onnx_run.stdout  # nnU-Net's own progress lines

    cases = sorted(p.name for p in (tmp_path / "torch").glob("*.nii.gz"))
    assert len(cases) == 2 and cases == sorted(p.name for p in (tmp_path / "ort").glob("*.nii.gz"))
    for name in cases:
        a, b = (sitk.ReadImage(str(tmp_path / d / name)) for d in ("torch", "ort"))
        assert a.GetSize() == b.GetSize() and a.GetSpacing() == b.GetSpacing() and a.GetOrigin() == b.GetOrigin()
        a, b = sitk.GetArrayFromImage(a), sitk.GetArrayFromImage(b)
        assert len(np.unique(a)) > 1  # the masks are not empty
        for label in (1, 2, 3):
            assert dice(a == label, b == label) > 0.99, (name, label)


def test_fold_ensemble_and_mirroring_go_through_each_session(acdc_env, tmp_path):
    """nnU-Net's fold loop activates each fold's session; mirroring calls the network once per flip."""
    for fold in (0, 1):
        make_fold("HSPSAMTrainer", "2d", fold=fold, seed=fold)
    model = export_onnx(Path(os.environ["nnUNet_results"]) / "Dataset027_ACDC" / f"HSPSAMTrainer__{PLANS}__2d",
                        tmp_path / "onnx", [0, 1], verbose=False)
    predictor = make_predictor(model, allow_tqdm=False)
    calls = []
    forward = type(predictor.network).forward

    def counting(self, x):
        calls.append(self.fold)
        return forward(self, x)

    type(predictor.network).forward = counting
    try:
        image = torch.randn(1, 1, 128, 128)
        predictor.predict_logits_from_preprocessed_data(image)
    finally:
        type(predictor.network).forward = forward
    assert calls == ["0"] * 4 + ["1"] * 4  # one tile, 1 + 3 mirrorings (axes 0, 1), per fold
    one = make_predictor(model, ["1"], use_mirroring=False, allow_tqdm=False)
    assert [p["onnx_fold"] for p in one.list_of_parameters] == ["1"]


def test_export_refuses_unfinished_fold_and_existing_output(acdc_env, tmp_path, capsys):
    folder, trainer = make_fold("HSPSAMTrainer", "2d")
    os.replace(folder / "fold_0" / "checkpoint_final.pth", folder / "fold_0" / "checkpoint_latest.pth")
    args = ["export-onnx", "-d", "27", "-c", "2d", "-tr", "HSPSAMTrainer", "-p", PLANS, "-f", "0", "-o",
            str(tmp_path / "onnx")]
    assert cli(args) == 2
    err = capsys.readouterr().err
    assert "checkpoint_final.pth" in err and "not finished training" in err and "fold_0" in err
    assert not (tmp_path / "onnx" / "Dataset027_ACDC" / folder.name).exists()

    os.replace(folder / "fold_0" / "checkpoint_latest.pth", folder / "fold_0" / "checkpoint_final.pth")
    assert cli(args) == 0
    exported = tmp_path / "onnx" / "Dataset027_ACDC" / folder.name / "fold_0" / "model.onnx"
    before = exported.stat().st_mtime_ns
    assert cli(args) == 2
    assert "already exists" in capsys.readouterr().err and exported.stat().st_mtime_ns == before


def test_predict_onnx_refuses_a_torch_model_folder_and_unexported_folds(acdc_env, tmp_path):
    folder, _ = make_fold("HSPSAMTrainer", "2d")
    with pytest.raises(FileNotFoundError, match="export-onnx"):
        make_predictor(folder)
    model = export_onnx(folder, tmp_path / "onnx", [0], verbose=False)
    with pytest.raises(FileNotFoundError, match=r"folds \['3'\] were not exported"):
        make_predictor(model, [3])


def test_unexportable_operator_is_named():
    class RunningMax(torch.nn.Module):
        def forward(self, x):
            return x.cummax(dim=1).values

    with pytest.raises(OnnxExportError, match="aten::cummax"):
        export_network(RunningMax(), torch.randn(1, 3, 8), Path(os.devnull))


@pytest.mark.integration  # the trained models are fixtures looked up by name (conftest cannot see them)
@pytest.mark.parametrize("model, trainer_name", [("esp_litemedsam_model", "ESPMedSAMTrainer"),
                                                 ("hsp_litemedsam_model", "HSPSAMTrainer"),
                                                 ("pg_litemedsam_model", "PGSAMTrainer")])
def test_onnx_logits_match_torch_for_networks_trained_on_litemedsams_prior(model, trainer_name, request, acdc_env,
                                                                           tmp_path):
    """The prior's parts that only the LiteMedSAM presets use (unit-range input scaling, the half-size encoder input,
    the stride-1 TinyViT stem; HSP-SAM's Q-prompts in windowed attention, LoRA on TinyViT blocks) export: each trained
    fold's network on ONNX Runtime gives torch's logits."""
    folder, _ = request.getfixturevalue(model)
    trainer = get_trainer_from_args("27", "2d", 0, trainer_name, folder.name.split("__")[1], device=CPU)
    trainer.initialize()
    weights = torch.load(folder / "fold_0" / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    trainer.network.load_state_dict(weights["network_weights"])
    net = trainer.network
    assert net.input_scaling == "unit_range" and net.encoder_scale == 0.5 and net.encoder.patch_embed.stride == 1
    trainer.set_deep_supervision_enabled(False)
    assert_backends_agree(net, real_tiles(trainer), tmp_path / "model.onnx")

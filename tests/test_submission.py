"""The challenge entrypoint (the script the Docker image runs), on two tiny models trained on real data.

* a volume model: HSP-SAM trained on ACDC crops (``trained_model`` in conftest), fed held-out crops;
* an RGB model: HSP-SAM trained here on real Kvasir-SEG pairs (``kvasir_model``), fed held-out Kvasir JPEGs.

Runs that should succeed go through a subprocess, as the container runs them; bad inputs call ``main`` in-process
(they stop before the model's weights are loaded) and each asserts exit code 2, the reason, that nothing was
written and that the inputs are unchanged.
"""
import hashlib
import json
import os
import shutil
import subprocess
import sys
import weakref
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from sam_nnunet import NNUNET_FOLDERS, submission, trainers_folder
from sam_nnunet.submission import NaturalImages, SubmissionError, VolumeImages, grand_challenge_cases, main
from sam_nnunet.submission.image_checks import read_header

KVASIR = Path(os.environ.get("SAM_NNUNET_KVASIR", Path(__file__).resolve().parents[1].parent / "shared" / "data"
                             / "Kvasir-SEG"))
KVASIR_TRAINING_PAIRS = 6  # nnU-Net's 5-fold split needs at least 5 cases
UUID_A, UUID_B = "2f8e0c1a-5b9d-4c3e-8a71-0d6f4e2b9c10", "9a41d7e2-3c58-4f06-b1e9-7c2d5a8f3e64"


def run_entrypoint(*args, env=None):
    env = {k: v for k, v in (env or os.environ).items() if k != "nnUNet_extTrainer"}  # it must find our trainers
    return subprocess.run([sys.executable, "-m", "sam_nnunet.submission", *args], capture_output=True, text=True,
                          env=env)


def checksums(folder):
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def files_under(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def assert_same_geometry(seg, img):
    assert seg.GetSize() == img.GetSize()
    np.testing.assert_allclose(seg.GetSpacing(), img.GetSpacing(), atol=1e-5)
    np.testing.assert_allclose(seg.GetOrigin(), img.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(seg.GetDirection(), img.GetDirection(), atol=1e-5)


def write(image, path, compress=False):
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path), compress)
    return path


def truncate(path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


# ------------------------------------------------------------------------------------------- models and inputs
def nnunet_env(root, command_env):
    """(os.environ for nnU-Net's commands with its folders under ``root``, created, and the settings of conftest's
    training fixtures; the folders). ``command_env``: conftest's, from the fixture ``nnunet_command_env``."""
    paths = {name: root / name for name in NNUNET_FOLDERS}
    for p in paths.values():
        p.mkdir(parents=True)
    return command_env(paths, SAM_NNUNET_ITERATIONS_PER_EPOCH=2, SAM_NNUNET_VAL_ITERATIONS_PER_EPOCH=1,
                       SAM_NNUNET_SEED=0), paths


def train_tiny_2d_model(root, convert_cmd, dataset_id, command_env):
    """Convert, plan and preprocess (2d), derive the cpu_tiny SAM plans and train HSPSAMTrainer_1epoch (2
    iterations) on fold 0: the steps of conftest's ``acdc_preprocessed`` + ``trained_model``. Returns the
    trained-model folder."""
    env, paths = nnunet_env(root, command_env)
    d = str(dataset_id)
    for cmd in (convert_cmd,
                ["nnUNetv2_plan_and_preprocess", "-d", d, "-c", "2d", "-np", "1"],
                ["sam_nnunet", "plans", "-d", d, "--preset", "cpu_tiny"],
                ["nnUNetv2_train", d, "2d", "0", "-tr", "HSPSAMTrainer_1epoch", "-p", "nnUNetPlans_SAMcpu",
                 "-device", "cpu"]):
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    (model,) = paths["nnUNet_results"].glob(f"Dataset{dataset_id:03d}_*/HSPSAMTrainer_1epoch__nnUNetPlans_SAMcpu__2d")
    return model


def kvasir_jpegs():
    if not (KVASIR / "images").is_dir():
        pytest.fail(f"the shipped Kvasir-SEG data is missing at {KVASIR} (set SAM_NNUNET_KVASIR to its folder)")
    return sorted((KVASIR / "images").glob("*.jpg"))


@pytest.fixture(scope="session")
def kvasir_model(tmp_path_factory, nnunet_command_env):
    """An RGB (NaturalImage2DIO) model: the first real Kvasir-SEG pairs, downscaled 4x so that planning and
    validation stay quick, converted with ``sam_nnunet convert-kvasir`` and trained like ``trained_model``."""
    root = tmp_path_factory.mktemp("kvasir")
    source = root / "Kvasir-SEG"
    for sub in ("images", "masks"):
        (source / sub).mkdir(parents=True)
    for jpeg in kvasir_jpegs()[:KVASIR_TRAINING_PAIRS]:
        with Image.open(jpeg) as im:
            size = (im.width // 4, im.height // 4)
            im.resize(size, Image.BILINEAR).save(source / "images" / jpeg.name, quality=95)
        with Image.open(KVASIR / "masks" / jpeg.name) as mask:
            binary = Image.fromarray(((np.asarray(mask.convert("L")) > 127) * 255).astype(np.uint8))
            binary.resize(size, Image.NEAREST).save(source / "masks" / jpeg.name, quality=100)
    return train_tiny_2d_model(root, ["sam_nnunet", "convert-kvasir", "-i", str(source), "-d", "311"], 311,
                               nnunet_command_env)


@pytest.fixture(scope="session")
def kvasir_photo():
    """A real Kvasir-SEG JPEG the RGB model was not trained on, unchanged."""
    return kvasir_jpegs()[KVASIR_TRAINING_PAIRS]


@pytest.fixture
def volume_model(trained_model):
    return trained_model[0]


@pytest.fixture
def two_channel_model(trained_model, tmp_path):
    """The volume model's plans with a dataset.json that declares two channels, and no weights: only for checks
    that stop a run before the model is loaded (without the check, loading fails with another error)."""
    folder = tmp_path / "two_channel_model"
    folder.mkdir()
    shutil.copy(trained_model[0] / "plans.json", folder)
    dataset = json.loads((trained_model[0] / "dataset.json").read_text())
    dataset["channel_names"] = {"0": "cine", "1": "cine-copy"}
    (folder / "dataset.json").write_text(json.dumps(dataset))
    return folder


@pytest.fixture
def held_out_crops(acdc_preprocessed):
    """The held-out ACDC crops (real cine MRI, 96 x 96 x 3) as SimpleITK images."""
    files = sorted((acdc_preprocessed["nnUNet_raw"] / "Dataset027_ACDC" / "imagesTs").glob("*.nii.gz"))
    return [sitk.ReadImage(str(f)) for f in files]


@pytest.fixture
def inputs(held_out_crops, tmp_path):
    """The held-out ACDC crops as .nii.gz, .nii and .mha files (flat layout)."""
    folder = tmp_path / "input"
    write(held_out_crops[0], folder / "caseA.nii.gz")
    write(held_out_crops[0], folder / "caseB.nii")
    write(held_out_crops[1], folder / "caseC.mha")
    return folder


@pytest.fixture
def exported_model(trained_model, tmp_path):
    """The trained model as the image ships it: ``sam_nnunet export-model`` (weights, plans, dataset.json)."""
    model_dir, env = trained_model
    proc = subprocess.run(["sam_nnunet", "export-model", "-d", "27", "-c", "2d", "-tr", "HSPSAMTrainer_1epoch",
                           "-p", "nnUNetPlans_SAMcpu", "-f", "0", "-o", str(tmp_path / "model")],
                          env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return tmp_path / "model"


@pytest.fixture
def in_process(monkeypatch):
    """For calls of ``main``/``predict_folder`` in this process: what they change globally is put back."""
    import torch

    monkeypatch.setenv("nnUNet_extTrainer", trainers_folder())
    for var in ("SAM_NNUNET_INPUT_SLUGS", "SAM_NNUNET_OUTPUT_SLUG", "SAM_NNUNET_MODEL"):
        monkeypatch.delenv(var, raising=False)
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def call_main(capsys, *args):
    rc = main([*args, "--device", "cpu", "--no-mirroring"])
    out, err = capsys.readouterr()
    return rc, out, err


# ------------------------------------------------------------------------------------------- runs that succeed
def test_flat_layout_predicts_nifti_and_mha_with_input_geometry(exported_model, inputs, tmp_path):
    before = checksums(inputs)
    out = tmp_path / "output"
    proc = run_entrypoint("--model", str(exported_model), "--input", str(inputs), "--output", str(out),
                          "--folds", "0", "--device", "cpu", "--no-mirroring")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "(flat layout)" in proc.stdout and "[3/3] caseC -> caseC.mha" in proc.stdout
    assert files_under(out) == ["caseA.nii.gz", "caseB.nii", "caseC.mha"]  # and no temporary file left
    for name in ("caseA.nii.gz", "caseB.nii", "caseC.mha"):
        seg = sitk.ReadImage(str(out / name))
        assert_same_geometry(seg, sitk.ReadImage(str(inputs / name)))
        assert set(np.unique(sitk.GetArrayFromImage(seg)).tolist()) <= {0, 1, 2, 3}
    assert checksums(inputs) == before


def test_grand_challenge_layout_with_slugs_from_the_environment(exported_model, held_out_crops, tmp_path):
    """input/images/<slug>/<uuid>.mha|.tif -> output/images/<output slug>/<uuid>.mha, slugs set at build time."""
    inp = tmp_path / "input"
    write(held_out_crops[0], inp / "images" / "cine-mri" / f"{UUID_A}.mha")
    write(held_out_crops[1], inp / "images" / "cine-mri" / f"{UUID_B}.tif")
    (inp / "images" / "patient-age").mkdir()  # another interface of the job: the env var picks the image
    (inp / "inputs.json").write_text("[]")
    before = checksums(inp)
    out = tmp_path / "output"
    env = dict(os.environ, SAM_NNUNET_INPUT_SLUGS="cine-mri", SAM_NNUNET_OUTPUT_SLUG="cardiac-segmentation")
    proc = run_entrypoint("--model", str(exported_model), "--input", str(inp), "--output", str(out), "--folds", "0",
                          "--device", "cpu", "--no-mirroring", env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "(grand-challenge layout)" in proc.stdout
    assert f"[2/2] {UUID_B} -> images/cardiac-segmentation/{UUID_B}.mha" in proc.stdout
    assert files_under(out) == [f"images/cardiac-segmentation/{u}.mha" for u in (UUID_A, UUID_B)]
    for name, source in ((UUID_A, f"{UUID_A}.mha"), (UUID_B, f"{UUID_B}.tif")):
        seg = sitk.ReadImage(str(out / "images" / "cardiac-segmentation" / f"{name}.mha"))
        assert_same_geometry(seg, sitk.ReadImage(str(inp / "images" / "cine-mri" / source)))
        assert set(np.unique(sitk.GetArrayFromImage(seg)).tolist()) <= {0, 1, 2, 3}
    assert checksums(inp) == before


def test_rgb_model_predicts_jpeg_and_png_in_the_flat_layout(kvasir_model, kvasir_photo, tmp_path):
    inp = tmp_path / "input"
    inp.mkdir()
    shutil.copy(kvasir_photo, inp / "polyp.jpg")
    with Image.open(kvasir_photo) as im:
        im.save(inp / "polyp_png.png")  # the same pixels, lossless
        im.convert("RGBA").save(inp / "polyp_rgba.png")  # and with an alpha channel, which is dropped
        size = im.size
    before = checksums(inp)
    out = tmp_path / "output"
    proc = run_entrypoint("--model", str(kvasir_model), "--input", str(inp), "--output", str(out), "--folds", "0",
                          "--device", "cpu", "--no-mirroring")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "note: polyp_rgba.png is RGBA, converted to RGB" in proc.stdout
    assert files_under(out) == ["polyp.png", "polyp_png.png", "polyp_rgba.png"]
    masks = {}
    for name in files_under(out):
        with Image.open(out / name) as mask:
            assert mask.format == "PNG" and mask.mode == "L" and mask.size == size
            masks[name] = np.asarray(mask)
    labels = np.unique(masks["polyp.png"]).tolist()
    assert labels == [0, 1]  # this model marks part of this image as polyp, so the comparisons below mean something
    np.testing.assert_array_equal(masks["polyp_png.png"], masks["polyp.png"])
    np.testing.assert_array_equal(masks["polyp_rgba.png"], masks["polyp.png"])
    assert checksums(inp) == before


def test_the_predict_command_takes_a_photo_for_an_rgb_model(kvasir_model, kvasir_photo, tmp_path, in_process):
    """``sam_nnunet predict`` on the same model and photo: the entrypoint's mask, and pixel counts (no spacing)."""
    from sam_nnunet.cli import main as cli

    inp = tmp_path / "input"
    inp.mkdir()
    shutil.copy(kvasir_photo, inp / "polyp.jpg")
    assert main(["--model", str(kvasir_model), "--input", str(inp), "--output", str(tmp_path / "gc"), "--folds", "0",
                 "--device", "cpu", "--no-mirroring"]) == 0
    assert cli(["predict", "-i", str(inp / "polyp.jpg"), "-o", str(tmp_path / "out"), "-m", str(kvasir_model),
                "--fast", "--device", "cpu", "--disable-progress-bar"]) == 0
    with Image.open(tmp_path / "out" / "polyp.png") as mask, Image.open(tmp_path / "gc" / "polyp.png") as expected:
        labels = np.asarray(mask)
        np.testing.assert_array_equal(labels, np.asarray(expected))
    (row,) = json.loads((tmp_path / "out" / "predictions.json").read_text())["cases"]
    assert row["spacing_mm"] is None and row["classes"]["polyp"] == {"label": 1, "voxels": int((labels == 1).sum())}


def test_rgb_model_in_the_grand_challenge_layout_writes_mha_with_the_input_geometry(kvasir_model, kvasir_photo,
                                                                                     tmp_path, in_process, capsys):
    with Image.open(kvasir_photo) as im:
        rgb = sitk.GetImageFromArray(np.asarray(im), isVector=True)  # how grand-challenge stores an RGB image
    rgb.SetSpacing((0.25, 0.3))
    rgb.SetOrigin((12.5, -4.0))
    inp = tmp_path / "input"
    write(rgb, inp / "images" / "colonoscopy-image" / f"{UUID_A}.mha", compress=True)
    before = checksums(inp)
    out = tmp_path / "output"
    rc, stdout, err = call_main(capsys, "--model", str(kvasir_model), "--input", str(inp), "--output", str(out),
                                "--folds", "0")
    assert rc == 0, err
    assert files_under(out) == [f"images/segmentation/{UUID_A}.mha"]  # the default output slug
    seg = sitk.ReadImage(str(out / "images" / "segmentation" / f"{UUID_A}.mha"))
    assert seg.GetDimension() == 2 and seg.GetNumberOfComponentsPerPixel() == 1
    assert_same_geometry(seg, rgb)
    assert set(np.unique(sitk.GetArrayFromImage(seg)).tolist()) <= {0, 1}
    assert checksums(inp) == before


def test_cases_are_all_checked_first_then_predicted_one_at_a_time(volume_model, held_out_crops, tmp_path,
                                                                  monkeypatch, in_process):
    """Validation reads every case once and lets go of it; the predict pass reads a case only after the previous
    one is predicted and released, so at most one case is in memory."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    inp = tmp_path / "input"
    for name, crop in zip("abc", held_out_crops * 2):
        write(crop, inp / f"{name}.nii.gz")
    events, arrays = [], {}
    read, predict = VolumeImages.read, nnUNetPredictor.predict_single_npy_array

    def counting_read(self, files):
        held = sorted(name for name, ref in arrays.items() if ref() is not None)
        events.append(("read", files[0].name[0], held))
        data, properties = read(self, files)
        arrays[files[0].name[0]] = weakref.ref(data)
        return data, properties

    def counting_predict(self, data, *args):
        events.append(("predict", next(n for n, ref in arrays.items() if ref() is data), []))
        return predict(self, data, *args)

    monkeypatch.setattr(VolumeImages, "read", counting_read)
    monkeypatch.setattr(nnUNetPredictor, "predict_single_npy_array", counting_predict)
    written = submission.predict_folder(volume_model, inp, tmp_path / "output", [0], mirroring=False, device="cpu")
    assert [(kind, name) for kind, name, _ in events] == [
        ("read", "a"), ("read", "b"), ("read", "c"),  # the validation pass
        ("read", "a"), ("predict", "a"), ("read", "b"), ("predict", "b"), ("read", "c"), ("predict", "c")]
    assert all(held == [] for _, _, held in events), events  # no earlier case's image is alive at a read
    assert [p.name for p in written] == ["a.nii.gz", "b.nii.gz", "c.nii.gz"]


@pytest.mark.faults
def test_masks_are_written_under_a_temporary_name_and_renamed(volume_model, inputs, tmp_path, monkeypatch,
                                                              in_process):
    out = tmp_path / "output"
    targets = []
    real_write = VolumeImages.write

    def recording_write(self, seg, properties, path):
        targets.append(path)
        real_write(self, seg, properties, path)

    monkeypatch.setattr(VolumeImages, "write", recording_write)
    submission.predict_folder(volume_model, inputs, out, [0], mirroring=False, device="cpu")
    pid = os.getpid()
    assert targets == [out / f".caseA.partial-{pid}.nii.gz", out / f".caseB.partial-{pid}.nii",
                       out / f".caseC.partial-{pid}.mha"]
    assert files_under(out) == ["caseA.nii.gz", "caseB.nii", "caseC.mha"]


@pytest.mark.faults
@pytest.mark.bad_input("submission")
def test_existing_masks_are_kept_unless_overwrite(volume_model, inputs, tmp_path, in_process, capsys):
    out = tmp_path / "output"
    out.mkdir()
    (out / "caseB.nii").write_bytes(b"a mask from an earlier run")
    before_in, before_out = checksums(inputs), checksums(out)
    args = ("--model", str(volume_model), "--input", str(inputs), "--output", str(out), "--folds", "0")
    rc, _, err = call_main(capsys, *args)
    assert rc == 2 and f"1 mask(s) already exist in {out.resolve()}: caseB.nii; pass --overwrite" in err
    assert checksums(out) == before_out and checksums(inputs) == before_in  # nothing else written either

    rc, stdout, err = call_main(capsys, *args, "--overwrite")
    assert rc == 0, err
    assert files_under(out) == ["caseA.nii.gz", "caseB.nii", "caseC.mha"]
    assert_same_geometry(sitk.ReadImage(str(out / "caseB.nii")), sitk.ReadImage(str(inputs / "caseB.nii")))
    assert checksums(inputs) == before_in


# ------------------------------------------------------------------------------------------- bad inputs
def cut_nii_gz(folder, m):
    write(m.crop, folder / "a.nii.gz")
    truncate(write(m.crop, folder / "z.nii.gz"))


def cut_nii(folder, m):
    write(m.crop, folder / "a.nii")
    truncate(write(m.crop, folder / "z.nii"), keep=0.9)


def cut_mha(folder, m):
    write(m.crop, folder / "a.mha")
    truncate(write(m.crop, folder / "z.mha"))


def cut_compressed_mha(folder, m):
    write(m.crop, folder / "a.mha", compress=True)
    truncate(write(m.crop, folder / "z.mha", compress=True), keep=0.8)


def cut_tif(folder, m):
    write(m.crop, folder / "images" / "cine-mri" / "a.mha")
    truncate(write(m.crop, folder / "images" / "cine-mri" / "z.tif"))


def with_value(value, extension=".mha"):
    def build(folder, m):
        write(m.crop, folder / f"a{extension}")
        array = sitk.GetArrayFromImage(m.crop).astype(np.float32)
        array[1, 40, 50] = value
        bad = sitk.GetImageFromArray(array)
        bad.CopyInformation(m.crop)
        write(bad, folder / f"z{extension}")
    return build


def dangling_link(folder, m):
    write(m.crop, folder / "a.nii.gz")
    (folder / "z.nii.gz").symlink_to(folder / "gone.nii.gz")


def link_loop(folder, m):
    write(m.crop, folder / "a.nii.gz")
    (folder / "z.nii.gz").symlink_to(folder / "z.nii.gz")


def folder_named_like_an_image(folder, m):
    write(m.crop, folder / "a.nii.gz")
    (folder / "z.nii.gz").mkdir()


def two_components(folder, m):
    write(m.crop, folder / "a.mha")
    write(sitk.Compose(m.crop, m.crop), folder / "z.mha")


def channels_on_two_grids(folder, m):
    write(m.crop, folder / "a_0000.mha")
    write(m.crop, folder / "a_0001.mha")
    write(m.crop, folder / "z_0000.mha")
    shifted = sitk.Image(m.crop)
    shifted.SetSpacing([s * 2 for s in m.crop.GetSpacing()])
    write(shifted, folder / "z_0001.mha")


def two_slugs_for_one_channel(folder, m):
    write(m.crop, folder / "images" / "ct" / "a.mha")
    write(m.crop, folder / "images" / "mr" / "a.mha")
    return ["--input-slug", "ct", "--input-slug", "mr"]


def unknown_slug(folder, m):
    write(m.crop, folder / "images" / "ct" / "a.mha")
    return ["--input-slug", "mri"]


def ambiguous_slug(folder, m):
    write(m.crop, folder / "images" / "ct" / "a.mha")
    write(m.crop, folder / "images" / "mr" / "a.mha")


def unpaired_slugs(folder, m):
    write(m.crop, folder / "images" / "t1" / "a.mha")
    write(m.crop, folder / "images" / "t1" / "b.mha")
    write(m.crop, folder / "images" / "t2" / "a.mha")
    return ["--input-slug", "t1", "--input-slug", "t2"]


def one_name_twice(folder, m):
    write(m.crop, folder / "images" / "ct" / f"{UUID_A}.mha")
    write(m.crop, folder / "images" / "ct" / f"{UUID_A}.tif")


def cut_jpeg(folder, m):
    shutil.copy(m.photo, folder / "a.jpg")
    truncate(Path(shutil.copy(m.photo, folder / "z.jpg")))


def cut_png(folder, m):
    with Image.open(m.photo) as im:
        im.save(folder / "a.png")
        im.save(folder / "z.png")
    truncate(folder / "z.png")


def sixteen_bit_png(folder, m):
    shutil.copy(m.photo, folder / "a.jpg")
    Image.fromarray(np.full((40, 50), 1000, np.uint16)).save(folder / "z.png")


def volume_for_rgb_model(folder, m):
    with Image.open(m.photo) as im:
        write(sitk.GetImageFromArray(np.asarray(im), isVector=True), folder / "images" / "rgb" / "a.mha")
    write(sitk.Cast(m.crop, sitk.sitkUInt8), folder / "images" / "rgb" / "z.mha")


BAD_INPUTS = [
    pytest.param("volume_model", cut_nii_gz, "z.nii.gz is truncated: its compressed data stop before the end of the "
                 "stream", id="half-truncated-nii.gz"),
    pytest.param("volume_model", cut_nii, "z.nii is truncated: its header promises", id="truncated-nii"),
    pytest.param("volume_model", cut_mha, "z.mha is truncated: its header promises", id="truncated-mha"),
    pytest.param("volume_model", cut_compressed_mha, "z.mha is truncated: its compressed data stop",
                 id="truncated-compressed-mha"),
    pytest.param("volume_model", cut_tif, "z.tif is truncated or corrupt", id="truncated-tif"),
    pytest.param("volume_model", with_value(np.nan), "z.mha holds NaN or infinite values", id="nan"),
    pytest.param("volume_model", with_value(np.inf), "z.mha holds NaN or infinite values", id="inf"),
    # SimpleITK reads NIfTI's NaN and inf as 0: the check must not rely on the array the model reads
    pytest.param("volume_model", with_value(np.nan, ".nii.gz"), "z.nii.gz holds NaN or infinite values (1 voxels)",
                 id="nan-nii.gz"),
    pytest.param("volume_model", with_value(-np.inf, ".nii"), "z.nii holds NaN or infinite values (1 voxels)",
                 id="inf-nii"),
    # entries named like an image that are not readable files: skipped, they would give fewer masks than inputs
    pytest.param("volume_model", dangling_link, "input z.nii.gz is a symbolic link to a missing file", id="dangling-link"),
    pytest.param("volume_model", link_loop, "input z.nii.gz is a symbolic link loop", id="link-loop"),
    pytest.param("volume_model", folder_named_like_an_image, "input z.nii.gz is a folder", id="folder-named-nii.gz"),
    pytest.param("volume_model", two_components, "z.mha is a 3D 96x96x3 image with 2 component(s) of 16-bit signed "
                 "integer; the model expects 1 channel(s), each a scalar 2D/3D image", id="wrong-channel-count"),
    pytest.param("two_channel_model", channels_on_two_grids, "case 'z': z_0001.mha is not on the grid of z_0000.mha "
                 "(spacing", id="channels-on-two-grids"),
    pytest.param("volume_model", two_slugs_for_one_channel, "got 2 input slug(s) ['ct', 'mr']; the model takes 1 "
                 "file(s) per case: channel 0 'cineMRI'", id="two-slugs-for-one-channel"),
    pytest.param("volume_model", unknown_slug, "input slug(s) ['mri'] not found", id="missing-slug"),
    pytest.param("volume_model", ambiguous_slug, "holds 2 input folders ['ct', 'mr'], so the input slug is ambiguous; "
                 "the model takes 1 file(s) per case", id="ambiguous-slug"),
    pytest.param("two_channel_model", unpaired_slugs, "cannot pair the channel files: images/t1/ holds 2, images/t2/ "
                 "holds 1", id="unpaired-slugs"),
    pytest.param("volume_model", one_name_twice, f"{UUID_A}.mha and {UUID_A}.tif would both be written to "
                 f"images/segmentation/{UUID_A}.mha", id="two-inputs-one-mask"),
    pytest.param("kvasir_model", cut_jpeg, "cannot decode z.jpg: image file is truncated", id="truncated-jpeg"),
    pytest.param("kvasir_model", cut_png, "cannot decode z.png: image file is truncated", id="truncated-png"),
    pytest.param("kvasir_model", sixteen_bit_png, "z.png is a 2D 50x40 image with 1 component(s) of PIL mode I;16; "
                 "the model segments 2D images and expects an 8-bit RGB image", id="16-bit-png"),
    pytest.param("kvasir_model", volume_for_rgb_model, "z.mha is a 3D 96x96x3 image with 1 component(s) of 8-bit "
                 "unsigned integer; the model segments 2D images", id="volume-for-rgb-model"),
]


@pytest.mark.faults
@pytest.mark.parametrize("model_fixture, build, message", BAD_INPUTS)
@pytest.mark.bad_input("submission")
def test_bad_input_stops_the_run_before_anything_is_written(model_fixture, build, message, request, held_out_crops,
                                                            kvasir_photo, tmp_path, in_process, capsys,
                                                            monkeypatch):
    """Each input folder holds a good case 'a' and the bad case 'z' (predicted last if it were not refused)."""
    from PIL import ImageFile

    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)  # as if another library had turned it on
    model = request.getfixturevalue(model_fixture)
    inp, out = tmp_path / "input", tmp_path / "output"
    inp.mkdir()
    extra = build(inp, SimpleNamespace(crop=held_out_crops[0], photo=kvasir_photo)) or []
    before = checksums(inp)
    rc, _, err = call_main(capsys, "--model", str(model), "--input", str(inp), "--output", str(out), *extra)
    assert rc == 2 and message in err, err
    assert not out.exists()
    assert checksums(inp) == before


@pytest.mark.faults
@pytest.mark.bad_input("submission")
def test_empty_input_folder(volume_model, tmp_path, in_process, capsys):
    (tmp_path / "in").mkdir()
    rc, _, err = call_main(capsys, "--model", str(volume_model), "--input", str(tmp_path / "in"),
                           "--output", str(tmp_path / "out"))
    assert rc == 2 and "holds no .nii.gz, .nii, .mha, .nrrd files (for the grand-challenge layout" in err


@pytest.mark.faults
@pytest.mark.bad_input("submission")
def test_unreadable_file_stops_before_writing_anything(exported_model, inputs, tmp_path):
    (inputs / "broken.nii.gz").write_bytes(b"\x1f\x8b not really")
    before = checksums(inputs)
    proc = run_entrypoint("--model", str(exported_model), "--input", str(inputs), "--output", str(tmp_path / "out"),
                          "--device", "cpu")
    assert proc.returncode == 2 and "cannot read broken.nii.gz" in proc.stderr
    assert not (tmp_path / "out").exists() and checksums(inputs) == before


@pytest.mark.faults
@pytest.mark.bad_input("submission")
def test_output_inside_input_is_refused(volume_model, inputs, in_process, capsys):
    before = checksums(inputs)
    rc, _, err = call_main(capsys, "--model", str(volume_model), "--input", str(inputs), "--output",
                           str(inputs / "masks"))
    assert rc == 2 and "must not be the input folder or inside it" in err
    assert checksums(inputs) == before


@pytest.mark.faults
@pytest.mark.parametrize("options, message", [
    (["--folds", "0", "3"], "fold(s) ['3'] of model {model} have no checkpoint_final.pth; the folds with one are ['0']"),
    (["--checkpoint", "checkpoint_nothing.pth"], "model {model} holds no fold_X/checkpoint_nothing.pth"),
    (["--output", "{blocker}/out"], "output folder {blocker}/out cannot be made: {blocker} is a file, not a folder"),
], ids=["missing-fold", "missing-checkpoint", "output-under-a-file"])
@pytest.mark.bad_input("submission")
def test_model_and_output_problems_stop_the_run_after_the_checks_before_any_prediction(
        options, message, volume_model, inputs, tmp_path, in_process, capsys):
    """Found late, these cost every case's prediction and end in a traceback; they are checked up front."""
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the output folder's parent should be")
    before = checksums(inputs)
    fill = {"model": volume_model, "blocker": blocker}
    rc, out, err = call_main(capsys, "--model", str(volume_model), "--input", str(inputs), "--output",
                             str(tmp_path / "out"), *[o.format(**fill) for o in options])  # a later --output wins
    assert rc == 2 and message.format(**fill) in err, err
    assert "checked" in out and "[1/" not in out  # the inputs were checked, nothing was predicted
    assert not (tmp_path / "out").exists() and blocker.read_text().startswith("a file") and checksums(inputs) == before


# ------------------------------------------------------------------------------------------- pieces
def test_several_files_per_slug_are_paired_by_sorted_name(tmp_path, capsys):
    images = tmp_path / "input" / "images"
    for slug in ("t2", "adc"):
        for name in ("b", "a"):
            (images / slug).mkdir(parents=True, exist_ok=True)
            (images / slug / f"{name}-{slug}.mha").write_bytes(b"")
    cases = grand_challenge_cases(tmp_path / "input", tmp_path / "output", VolumeImages(None, ["T2", "ADC"]),
                                  ["t2", "adc"], "prostate")
    assert [(c.name, [f.name for f in c.files], c.output) for c in cases] == [
        ("a-t2", ["a-t2.mha", "a-adc.mha"], tmp_path / "output" / "images" / "prostate" / "a-t2.mha"),
        ("b-t2", ["b-t2.mha", "b-adc.mha"], tmp_path / "output" / "images" / "prostate" / "b-t2.mha")]
    assert "paired by sorted file name: a-t2.mha + a-adc.mha; b-t2.mha + b-adc.mha" in capsys.readouterr().out


def test_an_uploaded_model_in_opt_ml_model_replaces_the_baked_in_one(tmp_path, capsys):
    from sam_nnunet.submission.run import choose_model

    uploaded, baked = tmp_path / "opt" / "ml" / "model", tmp_path / "baked"
    environ = {"SAM_NNUNET_MODEL": str(baked)}
    assert choose_model(None, uploaded, environ) == baked  # nothing mounted
    uploaded.mkdir(parents=True)
    (uploaded / ".keep").write_text("")
    assert choose_model(None, uploaded, environ) == baked  # mounted but empty
    (uploaded / "model.zip").write_bytes(b"PK")
    assert choose_model(None, uploaded, environ) == uploaded
    assert "uploaded model" in capsys.readouterr().out
    assert choose_model(str(tmp_path / "given"), uploaded, environ) == tmp_path / "given"
    assert choose_model(None, tmp_path / "absent", {}) is None


def test_output_slug_must_be_one_folder_name(tmp_path):
    (tmp_path / "input" / "images" / "ct").mkdir(parents=True)
    with pytest.raises(SubmissionError, match=r"output slug '../masks' must be one folder name"):
        grand_challenge_cases(tmp_path / "input", tmp_path / "output", VolumeImages(None, ["CT"]), [], "../masks")


def test_rgb_inputs_read_as_the_training_images_were(kvasir_photo, tmp_path):
    """JPEG, PNG, RGBA, palette, grey and grand-challenge .mha inputs give the channels the converter would."""
    rgb = NaturalImages(["R", "G", "B"])
    with Image.open(kvasir_photo) as im:
        pixels = np.asarray(im.convert("RGB"))
        im.save(tmp_path / "rgb.png")
        im.convert("RGBA").save(tmp_path / "rgba.png")
        im.convert("L").save(tmp_path / "grey.png")
        im.convert("P").save(tmp_path / "palette.png")
        palette_rgb = np.asarray(im.convert("P").convert("RGB"))
    mha = sitk.GetImageFromArray(pixels, isVector=True)
    mha.SetSpacing((0.5, 0.25))
    write(mha, tmp_path / "rgb.mha")
    write(sitk.JoinSeries(mha), tmp_path / "one_slice.mha")  # 3D with one slice

    expected = pixels.transpose(2, 0, 1)[:, None].astype(np.float32)  # C x 1 x Y x X, as NaturalImage2DIO reads
    for name in ("rgb.png", "rgba.png", "rgb.mha", "one_slice.mha"):
        data, properties = rgb.read([tmp_path / name])
        np.testing.assert_array_equal(data, expected, err_msg=name)
        assert properties["spacing"] == (999, 1, 1)
    np.testing.assert_array_equal(rgb.read([kvasir_photo])[0], expected)
    assert rgb.read([tmp_path / "rgb.mha"])[1]["sitk_stuff"]["spacing"] == (0.5, 0.25)
    grey, _ = rgb.read([tmp_path / "grey.png"])
    assert grey.shape == expected.shape and (grey == grey[:1]).all()
    np.testing.assert_array_equal(rgb.read([tmp_path / "palette.png"])[0][:, 0], palette_rgb.transpose(2, 0, 1))


def test_grey_natural_image_model_takes_grey_images_only(kvasir_photo, tmp_path):
    grey_model = NaturalImages(["grey"])
    with Image.open(kvasir_photo) as im:
        im.convert("L").save(tmp_path / "grey.png")
        width, height = im.size
    grey_model.check_header(read_header(tmp_path / "grey.png"))
    assert grey_model.read([tmp_path / "grey.png"])[0].shape == (1, 1, height, width)
    with pytest.raises(SubmissionError, match="expects an 8-bit grey image"):
        grey_model.check_header(read_header(kvasir_photo))

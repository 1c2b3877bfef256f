import subprocess
import sys
from pathlib import Path

import pytest


def sam_nnunet(*args):
    return subprocess.run([sys.executable, "-m", "sam_nnunet.cli", *args], capture_output=True, text=True)


def test_env_exports_the_trainers_folder(tmp_path):
    out = sam_nnunet("env", "--root", str(tmp_path))
    assert out.returncode == 0
    exports = dict(line.removeprefix("export ").split("=", 1) for line in out.stdout.splitlines())
    assert (Path(exports["nnUNet_extTrainer"]) / "HSPSAMTrainer.py").is_file()
    assert exports["nnUNet_results"] == str(tmp_path.resolve() / "nnUNet_results")


def test_nnunet_env_gives_the_trainers_and_each_folder_given_or_under_the_root(tmp_path):
    from sam_nnunet import nnunet_env, trainers_folder

    root = tmp_path.resolve()
    assert nnunet_env(tmp_path, nnUNet_results=tmp_path / "elsewhere") == {
        "nnUNet_extTrainer": trainers_folder(), "nnUNet_raw": str(root / "nnUNet_raw"),
        "nnUNet_preprocessed": str(root / "nnUNet_preprocessed"), "nnUNet_results": str(root / "elsewhere")}
    assert nnunet_env() == {"nnUNet_extTrainer": trainers_folder()}
    with pytest.raises(ValueError, match=r"\['nnUNet_rawdata'\] are not nnU-Net folders"):
        nnunet_env(nnUNet_rawdata=tmp_path)


def test_demo_refuses_a_non_empty_output_folder(tmp_path):
    (tmp_path / "keep.txt").write_text("results")
    out = sam_nnunet("demo", "--out", str(tmp_path))
    assert out.returncode == 2 and "not empty" in out.stderr
    assert (tmp_path / "keep.txt").read_text() == "results"


def test_demo_names_the_presets_when_given_a_missing_one_before_doing_any_work(tmp_path):
    out = sam_nnunet("demo", "--out", str(tmp_path / "run"), "--preset", "no_such_preset")
    assert out.returncode == 2 and "no_such_preset" in out.stderr and "cpu_tiny" in out.stderr
    assert "Traceback" not in out.stderr and not (tmp_path / "run").exists()


@pytest.mark.parametrize("preset, trainer, says", [
    ("cpu_selfprompt_medsam", "HSPSAMTrainer", "sets ['generator_channels'], which HSPSAMTrainer's network does not take"),
    ("cpu_medsam", "HSPSAMTrainer", "starts ESPMedSAMTrainer from ['litemedsam']; HSPSAMTrainer would train without it")])
def test_demo_refuses_a_preset_the_trainer_cannot_use_before_doing_any_work(tmp_path, preset, trainer, says):
    """A preset whose network switches the trainer lacks, or whose prior is named for another trainer (the trainer
    would take its TinyViT but start it from nothing), is refused naming the trainer it is made for."""
    out = sam_nnunet("demo", "--out", str(tmp_path / "run"), "--preset", preset, "--trainer", trainer)
    assert out.returncode == 2 and says in out.stderr and "(--trainer)" in out.stderr
    assert "Traceback" not in out.stderr and not (tmp_path / "run").exists()


def test_demo_trains_the_trainer_a_prior_preset_is_made_for():
    from sam_nnunet.demo import _preset_trainer
    from sam_nnunet.plans import load_preset

    assert [_preset_trainer(load_preset(p)) for p in ("cpu_medsam", "cpu_hsp_medsam", "cpu_pg_medsam",
                                                      "cpu_selfprompt_medsam", "cpu_p8")] == \
        ["ESPMedSAMTrainer", "HSPSAMTrainer", "PGSAMTrainer", "SelfPromptSAMTrainer", "HSPSAMTrainer"]
    assert _preset_trainer(load_preset("cpu_tiny")) is None  # HSPSAMTrainer then, the demo's default


def test_convert_errors_are_one_clear_line(tmp_path, nnunet_env):
    out = sam_nnunet("convert-acdc", "-i", str(tmp_path / "missing"))
    assert out.returncode == 2
    assert "official ACDC layout" in out.stderr and "Traceback" not in out.stderr


def test_the_command_line_starts_without_importing_torch():
    """Every subcommand's parser is built without torch (or ONNX Runtime): `sam_nnunet env`, `--help` and argument
    errors answer in a fraction of a second; commands import what they use when they run."""
    probe = ("import sys, sam_nnunet.cli as c; c.build_parser(); "
             "print(sorted(m for m in ('torch', 'onnxruntime', 'nnunetv2') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_demo_and_plans_default_to_the_cpu_preset_measured_best():
    """README: `sam_nnunet demo` and `sam_nnunet plans` both use cpu_p8 unless told otherwise."""
    from sam_nnunet.cli import build_parser
    from sam_nnunet.plans import CPU_PRESET

    parser = build_parser()
    assert CPU_PRESET == "cpu_p8"
    assert parser.parse_args(["demo", "--out", "run"]).preset == CPU_PRESET
    assert parser.parse_args(["plans", "-d", "27"]).preset == CPU_PRESET


def test_every_package_folder_is_installed_by_setup_py():
    """The challenge image installs the project from setup.py (not editable): a subpackage missing from its list
    would be missing from the image. setup.py's list, read without running it, names every folder with an
    __init__.py under sam_nnunet/."""
    import ast

    root = Path(__file__).resolve().parents[1]
    call = next(node for node in ast.walk(ast.parse((root / "setup.py").read_text()))
                if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "setup")
    listed = set(ast.literal_eval(next(k.value for k in call.keywords if k.arg == "packages")))
    folders = {".".join(p.parent.relative_to(root).parts) for p in (root / "sam_nnunet").rglob("__init__.py")}
    assert folders and folders <= listed, sorted(folders - listed)

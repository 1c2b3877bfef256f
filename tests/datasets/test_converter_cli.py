"""The converters through ``sam_nnunet`` itself: the command names, defaults and errors a user sees."""
import json

from sam_nnunet.cli import main


def test_convert_kvasir_and_synapse_commands(kvasir, synapse, nnunet_env, capsys):
    source = kvasir(3)
    assert main(["convert-kvasir", "-i", str(source)]) == 0
    out = nnunet_env["nnUNet_raw"] / "Dataset311_KvasirSEG"
    assert json.loads((out / "dataset.json").read_text())["numTraining"] == 3
    assert main(["convert-synapse", "-i", str(synapse), "-d", "302"]) == 0
    assert (nnunet_env["nnUNet_raw"] / "Dataset302_Synapse8").is_dir()
    # a second conversion to the same id is refused and the first dataset is kept
    assert main(["convert-kvasir", "-i", str(source)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert json.loads((out / "dataset.json").read_text())["numTraining"] == 3


def test_convert_command_on_a_missing_folder_exits_2_naming_it(nnunet_env, tmp_path, capsys):
    assert main(["convert-cvc", "-i", str(tmp_path / "nowhere")]) == 2
    assert "nowhere" in capsys.readouterr().err

"""The convert-* subcommands through register() on a bare argparse parser (the sam_nnunet CLI itself is
exercised in test_converter_cli.py)."""
import argparse

import pytest

from sam_nnunet.datasets import amos as amos_module
from sam_nnunet.datasets import commands
from sam_nnunet.datasets import cvc as cvc_module
from sam_nnunet.datasets import isic as isic_module
from sam_nnunet.datasets import kvasir as kvasir_module
from sam_nnunet.datasets import synapse as synapse_module


def parser():
    p = argparse.ArgumentParser(prog="sam_nnunet")
    commands.register(p.add_subparsers(dest="command", required=True))
    return p


@pytest.mark.parametrize("command, default_id, module_default", [
    ("convert-synapse", 301, synapse_module.DEFAULT_ID),
    ("convert-kvasir", 311, kvasir_module.DEFAULT_ID),
    ("convert-cvc", 312, cvc_module.DEFAULT_ID),
    ("convert-amos", None, None),  # resolved from --modality: 302 CT, 303 MRI, 304 both
    ("convert-isic", None, None),  # resolved from the year: 317, 318
])
def test_every_command_is_registered_with_its_default_id(command, default_id, module_default):
    args = parser().parse_args([command, "-i", "somewhere", "--cases", "3"])
    assert args.command == command and args.input == "somewhere" and args.cases == 3
    assert args.dataset_id == default_id == module_default and callable(args.func)


def test_amos_and_isic_default_ids_depend_on_modality_and_year():
    assert {m: v[1] for m, v in amos_module.MODALITIES.items()} == {"CT": 302, "MRI": 303, "both": 304}
    assert isic_module.DEFAULT_IDS == {2017: 317, 2018: 318}


def test_convert_amos_command_passes_the_modality_and_prints_the_folder(amos, nnunet_env, capsys):
    args = parser().parse_args(["convert-amos", "-i", str(amos), "--modality", "MRI"])
    assert args.func(args) == 0
    out = nnunet_env["nnUNet_raw"] / "Dataset303_AMOS22_MRI"
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(out)
    assert sorted(p.name for p in (out / "imagesTr").iterdir()) == ["amos_0507_0000.nii.gz"]


def test_convert_isic_command_passes_the_year(isic, nnunet_env):
    args = parser().parse_args(["convert-isic", "-i", str(isic(2017, {"train": [1]})), "--year", "2017"])
    assert args.func(args) == 0 and (nnunet_env["nnUNet_raw"] / "Dataset317_ISIC2017" / "labelsTr").is_dir()
    with pytest.raises(SystemExit):
        parser().parse_args(["convert-isic", "-i", "x", "--year", "2019"])

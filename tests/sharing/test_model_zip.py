"""``export-model --zip`` and installing a zip without trusting it (the nnU-Net round trip: test_nnunet_round_trip)."""
import json
import os
import stat
import zipfile

import pytest
import torch

from sam_nnunet.cli import main as cli
from sam_nnunet.sharing.model_zip import cached_install, export_model_zip, install_model_zip
from sam_nnunet.sharing.trust import UntrustedModelError
from tests.sharing.test_trust import hostile_checkpoint


def test_the_zip_holds_nnunets_layout_slim_checkpoints_and_a_card(model_copy, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("nnUNet_results", str(model_copy.parents[1]))
    assert cli(["export-model", "-d", "27", "-c", "2d", "-tr", "HSPSAMTrainer_20epochs", "-p", "nnUNetPlans_SAMcpu",
                "-f", "0", "--zip", str(tmp_path / "model.zip")]) == 0
    assert "nnUNetv2_install_pretrained_model_from_zip" in capsys.readouterr().out
    prefix = "Dataset027_ACDC/HSPSAMTrainer_20epochs__nnUNetPlans_SAMcpu__2d/"
    with zipfile.ZipFile(tmp_path / "model.zip") as zf:
        names = sorted(zf.namelist())
        assert names == sorted(prefix + n for n in ("plans.json", "dataset.json", "fold_0/checkpoint_final.pth",
                                                    "MODEL.md", "model_card.json"))
        card = json.loads(zf.read(prefix + "model_card.json"))
        markdown = zf.read(prefix + "MODEL.md").decode()
        zf.extract(prefix + "fold_0/checkpoint_final.pth", tmp_path / "x")
    checkpoint = torch.load(tmp_path / "x" / prefix / "fold_0" / "checkpoint_final.pth", weights_only=True)
    assert set(checkpoint) <= {"network_weights", "trainer_name", "inference_allowed_mirroring_axes",
                               "current_epoch", "init_args"}
    assert card["trainer"] == "HSPSAMTrainer_20epochs" and card["classes"] == {"1": "RV", "2": "MLV", "3": "LVC"}
    assert card["pretrained_weights"] == [] and card["crossval"] is None
    assert set(card["exported_with"]) == {"sam_nnunet", "nnunetv2", "torch"}
    assert "Not validated" in markdown and "trained from scratch" in markdown
    assert cli(["export-model", "-d", "27", "-c", "2d", "-tr", "HSPSAMTrainer_20epochs", "-p", "nnUNetPlans_SAMcpu",
                "-f", "0", "--zip", str(tmp_path / "model.zip")]) == 2  # never overwritten
    assert "already exists" in capsys.readouterr().err


def test_the_card_names_the_pretrained_weights_and_their_licence(model_copy, tmp_path):
    from sam_nnunet.modeling.weights.pretrained_files import LITEMEDSAM
    from sam_nnunet.sharing.card import model_card

    plans = json.loads((model_copy / "plans.json").read_text())
    plans["configurations"]["2d"]["sam_nnunet_pretrained"] = {
        "name": LITEMEDSAM.name, "file": LITEMEDSAM.filename, "bytes": LITEMEDSAM.size, "sha256": LITEMEDSAM.sha256,
        "licence": LITEMEDSAM.licence, "source": LITEMEDSAM.source}  # as PretrainedWeights records it
    (model_copy / "plans.json").write_text(json.dumps(plans))
    (weights,) = model_card(model_copy, [0])["pretrained_weights"]
    assert weights["licence"] == "Apache-2.0" and weights["sha256"] == LITEMEDSAM.sha256


def hand_made_zip(path, entries):
    """A zip of ``(name or ZipInfo, data)`` entries."""
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in entries:
            zf.writestr(name, data)
    return path


@pytest.mark.bad_input("model zips", cases=6)
def test_installing_refuses_entries_outside_the_model_hostile_checkpoints_and_overwriting(model_copy, tmp_path):
    results = tmp_path / "installed"
    for entries, message in (([("../evil.txt", "x")], "outside the install folder"),
                             ([("/etc/evil", "x")], "outside the install folder"),
                             ([("notes/readme.txt", "x")], "not inside a DatasetXXX_Name/ folder")):
        with pytest.raises(UntrustedModelError, match=message):
            install_model_zip(hand_made_zip(tmp_path / "bad.zip", entries), results)
    link = zipfile.ZipInfo("Dataset027_ACDC/M__P__2d/link")
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    with pytest.raises(UntrustedModelError, match="symbolic link"):
        install_model_zip(hand_made_zip(tmp_path / "bad.zip", [(link, "/etc/passwd")]), results)

    export_model_zip(model_copy, tmp_path / "good.zip", [0])
    marker = tmp_path / "ran"
    hostile = hostile_checkpoint(tmp_path / "hostile.pth", marker)
    with zipfile.ZipFile(tmp_path / "good.zip") as src, zipfile.ZipFile(tmp_path / "hostile.zip", "w") as dst:
        for name in src.namelist():
            dst.writestr(name, hostile.read_bytes() if name.endswith(".pth") else src.read(name))
    with pytest.raises(UntrustedModelError, match="posix.system"):
        install_model_zip(tmp_path / "hostile.zip", results)
    assert not marker.exists()
    assert not results.exists() or not any(p for p in results.rglob("*") if p.is_file())

    installed = install_model_zip(tmp_path / "good.zip", results)
    assert [p.name for p in installed] == [model_copy.name]
    assert (installed[0] / "fold_0" / "checkpoint_final.pth").is_file()
    before = os.stat(installed[0] / "plans.json").st_mtime_ns
    with pytest.raises(FileExistsError, match="already installed"):
        install_model_zip(tmp_path / "good.zip", results)
    assert os.stat(installed[0] / "plans.json").st_mtime_ns == before


def test_a_zip_is_installed_into_the_cache_once(model_copy, tmp_path, monkeypatch):
    export_model_zip(model_copy, tmp_path / "model.zip", [0])
    monkeypatch.setenv("SAM_NNUNET_MODEL_CACHE", str(tmp_path / "cache"))
    first = cached_install(tmp_path / "model.zip")
    stamp = (first / "Dataset027_ACDC" / model_copy.name / "plans.json").stat().st_mtime_ns
    assert cached_install(tmp_path / "model.zip") == first
    assert (first / "Dataset027_ACDC" / model_copy.name / "plans.json").stat().st_mtime_ns == stamp
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [first.name]

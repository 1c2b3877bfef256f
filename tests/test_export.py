"""sam_nnunet export-model: a trained model reduced to what prediction reads."""
import subprocess

import pytest
import torch


def test_export_keeps_only_what_inference_reads(trained_model, tmp_path):
    model_dir, env = trained_model
    cmd = ["sam_nnunet", "export-model", "-d", "27", "-c", "2d", "-tr", "HSPSAMTrainer_1epoch", "-p",
           "nnUNetPlans_SAMcpu", "-f", "0", "-o", str(tmp_path / "out")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "out" / "Dataset027_ACDC" / model_dir.name
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()) == \
        ["dataset.json", "fold_0/checkpoint_final.pth", "plans.json"]
    assert (model_dir / "fold_0" / "debug.json").is_file()  # what the original has and the export leaves out
    slim = torch.load(out / "fold_0" / "checkpoint_final.pth", map_location="cpu", weights_only=True)
    full = torch.load(model_dir / "fold_0" / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert set(slim) == {"network_weights", "trainer_name", "inference_allowed_mirroring_axes", "current_epoch",
                         "init_args"}
    assert slim["init_args"] == {"configuration": "2d", "fold": 0}
    assert "optimizer_state" in full and str(model_dir) not in str(slim)
    for k, v in full["network_weights"].items():
        assert torch.equal(slim["network_weights"][k], v)
    assert (out / "fold_0" / "checkpoint_final.pth").stat().st_size < 0.6 * (model_dir / "fold_0" /
                                                                              "checkpoint_final.pth").stat().st_size

    again = subprocess.run(cmd, env=env, capture_output=True, text=True)  # never over an existing export
    assert again.returncode == 2 and "already exists; not overwriting it" in again.stderr
    missing = subprocess.run(cmd[:-3] + ["3", "-o", str(tmp_path / "other")], env=env, capture_output=True, text=True)
    assert missing.returncode == 2 and "fold_3/checkpoint_final.pth" in missing.stderr
    assert not (tmp_path / "other" / "Dataset027_ACDC" / model_dir.name).exists()


@pytest.mark.parametrize("broken", [{"network_weights": {}}, {"trainer_name": "x", "init_args": {}}])
def test_slim_checkpoint_refuses_what_is_not_an_nnunet_checkpoint(broken):
    from sam_nnunet.export.model import slim_checkpoint

    with pytest.raises(ValueError, match="not an nnU-Net training checkpoint"):
        slim_checkpoint(broken)

"""Non-finite steps, checkpoint timing and the resume guard, in process on the preprocessed ACDC crop."""
import copy
import json
import os
import shutil

import pytest
import torch
from batchgenerators.utilities.file_and_folder_operations import join
from nnunetv2.run.run_training import get_trainer_from_args

from sam_nnunet.training.safeguards import RUN_INFO_FILE, NonFiniteGuard, SaveSchedule, TrainingDiverged

pytestmark = pytest.mark.faults

CPU = torch.device("cpu")


# ---------------------------------------------------------------- the optimiser hook on its own
@pytest.mark.parametrize("optimizer_cls", [torch.optim.AdamW, torch.optim.SGD])
@pytest.mark.fault("training")
def test_guard_skips_updates_with_non_finite_gradients_and_keeps_optimizer_state(optimizer_cls):
    torch.manual_seed(0)
    net = torch.nn.Linear(4, 2)
    opt = optimizer_cls(net.parameters(), lr=0.1, weight_decay=0.1, **({"momentum": 0.9}
                                                                       if optimizer_cls is torch.optim.SGD else {}))
    guard = NonFiniteGuard(opt, max_consecutive=2)
    x = torch.randn(3, 4)

    net(x).sum().backward()
    opt.step()
    assert not guard.pop_skipped()
    weights, state = [p.detach().clone() for p in net.parameters()], str(opt.state_dict()["state"])

    opt.zero_grad()
    (net(x).sum() * float("nan")).backward()
    opt.step()  # NaN gradients: no update, no weight decay, no momentum/Adam moments touched
    assert guard.pop_skipped() and not guard.pop_skipped()
    for before, p in zip(weights, net.parameters()):
        torch.testing.assert_close(p, before, rtol=0, atol=0)
    assert str(opt.state_dict()["state"]) == state

    assert guard.record(False) is False and guard.record(True) is False and guard.record(True) is True
    assert (guard.consecutive, guard.total, guard.last_finite_step) == (2, 2, 1)
    assert guard.record(False) is False and guard.consecutive == 0


def test_save_schedule_by_epochs_or_by_time():
    now = [0.0]
    schedule = SaveSchedule(every_epochs=5, every_minutes=10, clock=lambda: now[0])
    assert [e for e in range(12) if schedule.by_epochs(e)] == [4, 9]
    now[0] = 599
    assert not schedule.by_time()
    now[0] = 600
    assert schedule.by_time()
    schedule.saved()
    assert not schedule.by_time()
    assert not SaveSchedule(every_epochs=5, every_minutes=None).by_time()


# ---------------------------------------------------------------- the trainer
class _NaNFrom:
    """A data loader that returns the real batches, with NaN images from the ``start``-th on (``count`` of them)."""

    def __init__(self, loader, start: int, count: int = 10 ** 9):
        self.loader, self.start, self.count, self.calls = loader, start, count, 0

    def __next__(self):
        batch = next(self.loader)
        self.calls += 1
        if self.start <= self.calls < self.start + self.count:
            batch = dict(batch, data=torch.full_like(torch.as_tensor(batch["data"]), float("nan")))
        return batch

    def __getattr__(self, name):  # _finish() etc. of nnU-Net's augmenters
        return getattr(self.loader, name)


def _trainer_with_nan(monkeypatch, start, count, epochs="HSPSAMTrainer_5epochs"):
    monkeypatch.setenv("SAM_NNUNET_ITERATIONS_PER_EPOCH", "2")
    monkeypatch.setenv("SAM_NNUNET_VAL_ITERATIONS_PER_EPOCH", "1")
    monkeypatch.setenv("SAM_NNUNET_MAX_NONFINITE", "3")
    monkeypatch.setenv("SAM_NNUNET_SEED", "0")
    monkeypatch.setenv("nnUNet_n_proc_DA", "0")
    t = get_trainer_from_args("27", "2d", 0, epochs, "nnUNetPlans_SAMcpu", device=CPU)
    real = t.get_dataloaders

    def get_dataloaders():
        train, val = real()
        return _NaNFrom(train, start, count), val

    t.get_dataloaders = get_dataloaders
    t.perform_actual_validation = lambda *a, **k: None  # not what is tested here
    return t


def _log(t):
    return open(t.log_file).read()


@pytest.mark.fault("training")
def test_nan_batches_in_a_row_stop_the_run_with_the_last_finite_weights_saved(acdc_env, monkeypatch):
    # 5 epochs x 2 iterations; the batches from the 4th on are NaN: epoch 0 and the first step of epoch 1 are finite
    t = _trainer_with_nan(monkeypatch, start=4, count=10 ** 9)
    snapshots = []
    real_step = t.train_step

    def train_step(batch):
        snapshots.append({k: v.detach().clone() for k, v in t._network().state_dict().items()})
        return real_step(batch)

    t.train_step = train_step
    with pytest.raises(TrainingDiverged, match=r"3 consecutive non-finite training steps in epoch 2.*"
                                               r"last finite ones \(after step 3 of this run\)"):
        t.run_training()
    log = _log(t)
    assert log.count("this update was skipped") == 3
    # the weights kept are those after the last finite step, i.e. as they were before the first NaN batch
    saved = torch.load(join(t.output_folder, "checkpoint_latest.pth"), map_location="cpu", weights_only=False)
    for k, v in saved["network_weights"].items():
        assert torch.isfinite(v).all(), k
        torch.testing.assert_close(v, snapshots[3][k], rtol=0, atol=0)
    assert saved["current_epoch"] == 2  # --c repeats the epoch in which the run stopped
    assert not os.path.exists(join(t.output_folder, "checkpoint_final.pth"))


@pytest.mark.fault("training")
def test_a_single_nan_batch_is_skipped_and_training_goes_on(acdc_env, monkeypatch):
    t = _trainer_with_nan(monkeypatch, start=3, count=1)
    t.run_training()
    log = _log(t)
    assert log.count("this update was skipped") == 1 and "Training stopped" not in log
    final = torch.load(join(t.output_folder, "checkpoint_final.pth"), map_location="cpu", weights_only=False)
    assert final["current_epoch"] == 5
    assert all(torch.isfinite(v).all() for v in final["network_weights"].values())


def test_short_runs_write_checkpoint_latest_and_by_wall_time(acdc_env, monkeypatch):
    t = _trainer_with_nan(monkeypatch, start=10 ** 9, count=0)
    written = []
    real_save = t.save_checkpoint
    t.save_checkpoint = lambda f: (written.append((os.path.basename(f), t.current_epoch)), real_save(f))[1]
    t.run_training()
    # nnU-Net's default (every 50 epochs) never writes it in 5 epochs; here every epoch but the last
    assert [e for f, e in written if f == "checkpoint_latest.pth"] == [0, 1, 2, 3]
    assert t.save_every == 1

    # by wall time: with saves due every 50 epochs, a minute's budget of (almost) nothing still writes each epoch
    shutil.rmtree(t.output_folder)
    monkeypatch.setenv("SAM_NNUNET_SAVE_EVERY", "50")
    monkeypatch.setenv("SAM_NNUNET_SAVE_MINUTES", "0.0001")
    t = _trainer_with_nan(monkeypatch, start=10 ** 9, count=0)
    t.run_training()
    assert _log(t).count("checkpoint_latest.pth written (0.0001 minutes since the last)") == 4


@pytest.mark.fault("training", cases=2)
def test_resume_guard_compares_the_checkpoint_file_by_content_not_by_path(acdc_env, monkeypatch, tmp_path,
                                                                          official_sam, small_encoder):
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    _, sd = official_sam()
    first = tmp_path / "mount_a" / "sam_vit_test.pth"
    first.parent.mkdir()
    torch.save(sd, first)
    folder = acdc_env["nnUNet_preprocessed"] / "Dataset027_ACDC"
    plans = load_json(str(folder / "nnUNetPlans_SAMcpu.json"))
    plans["configurations"]["2d"]["sam_nnunet"] = {"encoder": small_encoder}
    plans["continue_training"] = False
    dataset_json = load_json(str(folder / "dataset.json"))
    cls = recursive_find_trainer_class_by_name("HSPSAMTrainer_1epoch")

    def trainer(path):
        monkeypatch.setenv("SAM_NNUNET_CHECKPOINT", str(path))
        t = cls(plans=copy.deepcopy(plans), configuration="2d", fold=0, dataset_json=dataset_json, device=CPU)
        t.initialize()
        return t

    t = trainer(first)
    os.makedirs(t.output_folder, exist_ok=True)
    with open(join(t.output_folder, RUN_INFO_FILE), "w") as f:
        json.dump(t.run_identity(), f)
    latest = join(t.output_folder, "checkpoint_latest.pth")
    t.save_checkpoint(latest)
    info = json.loads(open(join(t.output_folder, RUN_INFO_FILE)).read())
    assert info["sam_checkpoint_fingerprint"]["size"] == first.stat().st_size

    moved = tmp_path / "mount_b" / "renamed.pth"  # the same file under another mount: accepted
    moved.parent.mkdir()
    shutil.copyfile(first, moved)
    t2 = trainer(moved)
    t2.load_checkpoint(latest)
    assert f"same file as before ({first} is now {moved})" in _log(t2)

    other = {k: v + 1 if v.is_floating_point() else v for k, v in sd.items()}  # same path, other content: refused
    torch.save(other, first)
    t3 = trainer(first)
    with pytest.raises(RuntimeError, match="the path may differ, the content may not"):
        t3.load_checkpoint(latest)
    monkeypatch.delenv("SAM_NNUNET_CHECKPOINT")
    t4 = cls(plans=copy.deepcopy(plans), configuration="2d", fold=0, dataset_json=dataset_json, device=CPU)  # none at all: refused
    t4.initialize()
    with pytest.raises(RuntimeError, match="Set it to the same file as before"):
        t4.load_checkpoint(latest)

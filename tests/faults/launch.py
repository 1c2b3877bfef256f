"""``nnUNetv2_train`` with one fault: the whole process group is killed with SIGKILL at a chosen point.

    python launch.py FAULT nnUNetv2_train-arguments...

FAULT is one of
  ``train_step:N``       before the N-th training step of this process (mid-epoch);
  ``save:NAME:N``        during the N-th write of ``NAME`` (e.g. checkpoint_latest.pth): half of the bytes
                         are on disk under the temporary name when the process dies;
  ``validation``         when the final validation starts (after checkpoint_final.pth was written).

SIGKILL to the process group (the test starts this script as a session leader) takes the data-augmentation
workers down too, as the kernel's OOM killer or a cluster scheduler would: nothing gets to clean up.
Only the test suite uses this file; the package has no fault hooks.
"""
import os
import signal
import sys

import torch


def die() -> None:
    sys.stdout.flush()
    os.killpg(os.getpgid(0), signal.SIGKILL)


def inject(fault: str) -> None:
    from sam_nnunet.training.sam_trainer import SAMTrainerBase

    kind, *args = fault.split(":")
    if kind == "train_step":
        at, calls, real = int(args[0]), [0], SAMTrainerBase.train_step

        def train_step(self, batch):
            calls[0] += 1
            if calls[0] == at:
                die()
            return real(self, batch)

        SAMTrainerBase.train_step = train_step
    elif kind == "save":
        name, at, calls, real_save = args[0], int(args[1]), [0], torch.save

        def save(obj, f, *a, **k):
            real_save(obj, f, *a, **k)
            if str(f).endswith(f"{name}.partial"):
                calls[0] += 1
                if calls[0] == at:
                    os.truncate(f, os.path.getsize(f) // 2)
                    die()

        torch.save = save
    elif kind == "validation":
        SAMTrainerBase.perform_actual_validation = lambda self, *a, **k: die()
    else:
        raise SystemExit(f"unknown fault {fault!r}")


if __name__ == "__main__":
    inject(sys.argv[1])
    from nnunetv2.run.run_training import run_training_entry

    sys.argv = ["nnUNetv2_train", *sys.argv[2:]]
    run_training_entry()

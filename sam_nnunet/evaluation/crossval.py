"""5-fold cross-validation with the stock ``nnUNetv2_train``, resumable, then ``nnUNetv2_find_best_configuration``.

Each fold is one ``nnUNetv2_train DATASET CONFIG FOLD -tr TRAINER -p PLANS --npz`` process, exactly the command a
user would type, run in a plain loop. Nothing of nnU-Net's training or validation is reimplemented here; this
module only decides, from the files in ``$nnUNet_results/DatasetXXX/TRAINER__PLANS__CONFIG/fold_N``, what each
fold still needs, so that running the same command again after an interruption (killed job, pre-empted node)
continues where it stopped and never trains a finished fold over:

* **finished**: ``checkpoint_final.pth`` and ``validation/summary.json`` exist. Skipped. With ``--npz`` the
  validation folder must also hold the ``.npz`` softmax files; a fold trained without them is re-validated with
  ``--val --npz`` (no training).
* **started**: a checkpoint exists (``checkpoint_final.pth``, ``checkpoint_latest.pth`` or
  ``checkpoint_best.pth``) but the fold is not finished. Run with ``--c``: nnU-Net resumes from the final
  checkpoint, else the latest, else the best one; a fold whose training finished but whose validation did not
  is only validated. (The SAM trainers refuse to start such a fold without ``--c``.)
* **new**: no checkpoint. Trained from the start.

When all five folds are finished (in this run or earlier ones), ``nnUNetv2_find_best_configuration DATASET -c
CONFIG -tr TRAINER -p PLANS -f 0 1 2 3 4`` runs. It copies the five validation folders into
``TRAINER__PLANS__CONFIG/crossval_results_folds_0_1_2_3_4`` and evaluates them there (``summary.json``), picks
the postprocessing (``postprocessing.pkl``, ``postprocessed/``) and writes ``DatasetXXX/inference_information.json``
and ``inference_instructions.txt``. It is not run again while its ``postprocessing.pkl`` is newer than every
fold's ``validation/summary.json`` (nothing changed since). With one trainer and one configuration there is nothing
to ensemble; ``--npz`` (on by default) keeps the softmax outputs so that this model can later be ensembled with
others by ``nnUNetv2_find_best_configuration DATASET -c 2d -tr HSPSAMTrainer nnUNetTrainer -p ...``.

The SAM trainers are found through ``nnUNet_extTrainer``; when it is not set, it is set to
:func:`sam_nnunet.trainers_folder` for the subprocesses. ``num_processes`` sets nnU-Net's ``nnUNet_def_n_proc``
(the worker pools of validation export and evaluation, 8 by default) and ``find_best_configuration -np``;
on a small machine 1 or 2 saves most of the validation time.
"""
from __future__ import annotations

import json
import os
import shlex
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Sequence

from sam_nnunet import trainers_folder

ALL_FOLDS = (0, 1, 2, 3, 4)
CHECKPOINTS = ("checkpoint_final.pth", "checkpoint_latest.pth", "checkpoint_best.pth")
Runner = Callable[[List[str], Dict[str, str]], None]


@dataclass(frozen=True)
class FoldState:
    """What a fold folder holds and therefore what it still needs."""

    fold: int
    state: str  # "finished" | "needs_npz" | "started" | "new"
    reason: str

    @property
    def flags(self) -> List[str]:
        """Extra ``nnUNetv2_train`` flags for a fold that still needs work (finished folds are not run)."""
        return {"needs_npz": ["--val"], "started": ["--c"], "new": []}[self.state]


@dataclass
class CrossvalResult:
    model_folder: Path
    states: Dict[int, FoldState] = field(default_factory=dict)
    ran: Dict[int, List[str]] = field(default_factory=dict)  # fold -> the command that ran
    best_configuration: Optional[List[str]] = None  # the find_best_configuration command, if it ran


def fold_state(fold_folder: Path, fold: int, npz: bool = True) -> FoldState:
    """Classify ``fold_folder`` (``.../TRAINER__PLANS__CONFIG/fold_N``) as finished, needs_npz, started or new."""
    present = [c for c in CHECKPOINTS if (fold_folder / c).is_file()]
    validation = fold_folder / "validation"
    if "checkpoint_final.pth" in present and (validation / "summary.json").is_file():
        if npz and not any(validation.glob("*.npz")):
            return FoldState(fold, "needs_npz", "finished, but validation/ has no .npz softmax files")
        return FoldState(fold, "finished", "checkpoint_final.pth and validation/summary.json exist")
    if present:
        missing = "no validation/summary.json" if "checkpoint_final.pth" in present else "no checkpoint_final.pth"
        return FoldState(fold, "started", f"{', '.join(present)} found, {missing}")
    return FoldState(fold, "new", "no checkpoint")


def resolve_dataset_name(dataset: str, env: Mapping[str, str]) -> str:
    """``27`` -> ``Dataset027_ACDC`` by looking in the nnU-Net folders of ``env`` (as nnU-Net itself does)."""
    dataset = str(dataset)
    if dataset.startswith("Dataset"):
        return dataset
    try:
        prefix = f"Dataset{int(dataset):03d}_"
    except ValueError:
        raise ValueError(f"dataset {dataset!r} is neither an id (27) nor a name (Dataset027_ACDC)") from None
    names = sorted({p.name for var in ("nnUNet_preprocessed", "nnUNet_raw", "nnUNet_results") if env.get(var)
                    for p in Path(env[var]).glob(prefix + "*") if p.is_dir()})
    if len(names) != 1:
        where = ", ".join(f"{v}={env.get(v)}" for v in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"))
        raise ValueError(f"dataset id {dataset}: found {names or 'no'} {prefix}* folders in {where}; expected "
                         f"exactly one. Plan and preprocess the dataset first, or pass its full name.")
    return names[0]


def crossval_env(base: Optional[Mapping[str, str]] = None, num_processes: Optional[int] = None) -> Dict[str, str]:
    """The environment for the nnU-Net subprocesses: ``base`` (default ``os.environ``) checked and completed."""
    env = dict(os.environ if base is None else base)
    missing = [v for v in ("nnUNet_preprocessed", "nnUNet_results") if not env.get(v)]
    if missing:
        raise ValueError(f"{' and '.join(missing)} not set: export the nnU-Net folders first, e.g. "
                         f"eval \"$(sam_nnunet env --root DIR)\"")
    if not env.get("nnUNet_extTrainer"):
        env["nnUNet_extTrainer"] = trainers_folder()
        print(f"nnUNet_extTrainer was not set; using {env['nnUNet_extTrainer']}", flush=True)
    if num_processes is not None:
        env["nnUNet_def_n_proc"] = str(num_processes)
    return env


def model_folder(env: Mapping[str, str], dataset_name: str, trainer: str, plans: str, configuration: str) -> Path:
    """nnU-Net's trained-model folder: ``$nnUNet_results/DatasetXXX/TRAINER__PLANS__CONFIG``."""
    return Path(env["nnUNet_results"]) / dataset_name / f"{trainer}__{plans}__{configuration}"


def _run(cmd: List[str], env: Dict[str, str]) -> None:
    print("$ " + " ".join(shlex.quote(c) for c in cmd), flush=True)
    subprocess.run(cmd, env=env, check=True)


def _best_configuration_is_current(folder: Path) -> bool:
    """True if find_best_configuration ran after the last change to any fold's validation."""
    marker = folder / f"crossval_results_folds_{'_'.join(map(str, ALL_FOLDS))}" / "postprocessing.pkl"
    if not marker.is_file():
        return False
    newest = max((folder / f"fold_{f}" / "validation" / "summary.json").stat().st_mtime for f in ALL_FOLDS)
    return marker.stat().st_mtime >= newest


def _validation_dice(fold_folder: Path) -> Optional[float]:
    summary = fold_folder / "validation" / "summary.json"
    try:
        return float(json.loads(summary.read_text())["foreground_mean"]["Dice"])
    except (OSError, ValueError, KeyError, TypeError):  # missing, or cut short by an interrupted validation
        return None


def run_crossval(dataset: str, configuration: str, trainer: str, plans: str, *,
                 folds: Sequence[int] = ALL_FOLDS, device: Optional[str] = None, npz: bool = True,
                 num_processes: Optional[int] = None, env: Optional[Mapping[str, str]] = None,
                 runner: Runner = _run) -> CrossvalResult:
    """Train the requested folds that are not finished, then find_best_configuration once all five are.

    Args:
        dataset: dataset id (``27``) or name (``Dataset027_ACDC``), passed to nnU-Net as given.
        configuration / trainer / plans: as for ``nnUNetv2_train`` (``2d``, ``HSPSAMTrainer``, ``nnUNetPlans_SAMvitb``).
        folds: which of the folds 0-4 to run now (e.g. one per machine); find_best_configuration waits for all five.
        device: ``-device`` for ``nnUNetv2_train`` (``cuda``, ``cpu``, ``mps``); nnU-Net's default if ``None``.
        npz: pass ``--npz`` (keep the validation softmax, needed to ensemble with other models).
        num_processes: nnU-Net's worker pools (``nnUNet_def_n_proc`` and ``-np``); nnU-Net's default if ``None``.
        env: environment for the subprocesses (default ``os.environ``); must name the nnU-Net folders.
        runner: runs one command; raises ``subprocess.CalledProcessError`` on failure (the default prints it first).
    """
    bad = sorted(set(folds) - set(ALL_FOLDS))
    if bad or not folds:
        raise ValueError(f"folds must be among {list(ALL_FOLDS)}, got {list(folds)}")
    env = crossval_env(env, num_processes)
    name = resolve_dataset_name(dataset, env)
    folder = model_folder(env, name, trainer, plans, configuration)
    result = CrossvalResult(folder)
    print(f"cross-validation of {trainer} ({plans}, {configuration}) on {name}: folds {' '.join(map(str, folds))}; "
          f"results in {folder}", flush=True)

    for fold in folds:
        state = fold_state(folder / f"fold_{fold}", fold, npz)
        result.states[fold] = state
        action = {"finished": "skipping", "needs_npz": "re-validating with --val --npz (no training)",
                  "started": "resuming with --c", "new": "training"}[state.state]
        print(f"\nfold {fold}: {state.reason} -> {action}", flush=True)
        if state.state == "finished":
            continue
        cmd = ["nnUNetv2_train", str(dataset), configuration, str(fold), "-tr", trainer, "-p", plans]
        cmd += (["-device", device] if device else []) + (["--npz"] if npz else []) + state.flags
        runner(cmd, env)
        result.ran[fold] = cmd

    print("\nvalidation Dice (foreground mean, nnU-Net's fold_N/validation/summary.json):", flush=True)
    for fold in ALL_FOLDS:
        dice = _validation_dice(folder / f"fold_{fold}")
        print(f"  fold {fold}: {'no readable summary.json' if dice is None else f'{dice:.4f}'}", flush=True)

    unfinished = [f for f in ALL_FOLDS if fold_state(folder / f"fold_{f}", f, npz=False).state != "finished"]
    best = ["nnUNetv2_find_best_configuration", str(dataset), "-c", configuration, "-tr", trainer, "-p", plans,
            "-f", *map(str, ALL_FOLDS)] + (["-np", str(num_processes)] if num_processes is not None else [])
    if unfinished:
        print(f"\nfolds {' '.join(map(str, unfinished))} are not finished: not running "
              f"nnUNetv2_find_best_configuration yet (run this command again for those folds).", flush=True)
    elif not result.ran and _best_configuration_is_current(folder):
        print(f"\nnnUNetv2_find_best_configuration is up to date (its results in {folder.name}/crossval_results_"
              f"folds_0_1_2_3_4 are newer than every fold's validation); to run it anyway:\n  "
              + " ".join(shlex.quote(c) for c in best), flush=True)
    else:
        print("\nall five folds are finished: determining the best configuration and postprocessing", flush=True)
        runner(best, env)
        result.best_configuration = best
    return result

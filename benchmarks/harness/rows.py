"""Finished rows kept in ``--out``/rows/: a run measures only the rows still missing, and never
overwrites a row measured with other settings."""
from __future__ import annotations

import datetime
import json
import os
import subprocess
from pathlib import Path
from typing import List, Optional

from benchmarks.harness.machine import machine
from benchmarks.harness.measure import benchmark_trainer


REPO = Path(__file__).resolve().parents[2]
ROW_CODE = ("sam_nnunet", "trainers", "plans")  # what a row's figures depend on besides nnU-Net (not the harness)


def _git(*args: str) -> Optional[str]:
    try:
        return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):  # no git, or not a checkout (an installed copy)
        return None


def code_commit() -> Optional[str]:
    """The commit of the code a row is measured with (None outside a git checkout)."""
    return _git("rev-parse", "HEAD")


def code_changes_since(commit: str) -> List[str]:
    """The commits since ``commit`` that changed the networks, trainers or presets (one line each)."""
    log = _git("log", "--oneline", f"{commit}..HEAD", "--", *ROW_CODE)
    return log.splitlines() if log else []


def row_file(out: Path, spec: str) -> Path:
    """Where one trainer's finished row is kept, so that an interrupted or partial run goes on where it stopped."""
    return out / "rows" / (spec.replace("@", "__").replace(":", "__").replace("+", "_") + ".json")


def row_settings(args) -> dict:
    """What a kept row must have been measured with to stand in the same table."""
    settings = {k: getattr(args, k) for k in ("dataset", "patients", "cases", "budget_min", "iterations_per_epoch",
                                               "val_cases", "steps", "warmup", "seed", "device", "processes",
                                               "checkpoint")}
    if args.train_patients:  # only when set, so that rows kept before the low-data mode existed still match
        settings["train_patients"] = args.train_patients
    if getattr(args, "train_source", None):
        settings["train_source"] = args.train_source
    return settings


def measure_or_reuse(spec: str, args, paths, out: Path) -> dict:
    """The row of ``spec``: measured now, or read back from ``rows/`` when an earlier run with the same settings
    finished it. A kept row measured with other settings is an error, never overwritten."""
    path = row_file(out, spec)
    if path.is_file():
        row = json.loads(path.read_text())
        if row.get("settings") != row_settings(args):
            raise SystemExit(f"{path} was measured with other settings ({row.get('settings')}) than this run "
                             f"({row_settings(args)}). Use another --out, or move that file away to measure again.")
        print(f"[{spec}] kept from {row.get('date')}: {path}", flush=True)
        changes = code_changes_since(row["code_commit"]) if row.get("code_commit") else []
        if changes:  # a kept row measures the code of its day: say so when the networks or trainers changed since
            print(f"[{spec}] WARNING: {len(changes)} commit(s) changed {', '.join(ROW_CODE)} since this row was "
                  f"measured (at {row['code_commit'][:8]}): " + "; ".join(changes[:5])
                  + ". If they change this row's network or trainer, move the file away to measure it again.",
                  flush=True)
        return row
    import torch
    from sam_nnunet.training.numerics import flush_denormal

    with flush_denormal(torch.device(args.device)) as flushed:  # every row alike, nnUNetTrainer's too
        row = benchmark_trainer(spec, args, paths)
    row["flush_denormal"] = flushed
    row.update(settings=row_settings(args), date=datetime.date.today().isoformat(), machine=machine(args.device),
               code_commit=code_commit(), code_modified=bool(_git("status", "--porcelain", "--", *ROW_CODE)))
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(row, indent=2))
    os.replace(partial, path)
    return row

"""Evaluation report: per-case and per-class Dice and HD95 of one or two prediction folders.

``sam_nnunet report --gt LABELS --pred PRED [--pred2 OTHER --names A B] -o OUT [--labels 1 2 3]
[--label-names RV MYO LV]`` writes to ``OUT``:

* ``per_case.csv``: one row per method, case and class: Dice, HD95 (mm), voxel counts and the empty-mask status;
* ``summary.csv`` and ``summary.md``: per class and over all classes, mean ± standard deviation of Dice and HD95,
  with how many cases entered each mean and how many were left out because the class was empty;
* ``boxplot_dice.png`` and ``boxplot_hd95.png``: per-class box plots (one box per method);
* ``comparison.png`` (two folders only): per-class bars of mean Dice and mean HD95, the two methods side by side.

How each case is measured, and what happens when a class is absent from the prediction and/or the reference, is
in :mod:`sam_nnunet.evaluation.metrics` (Dice from nnU-Net's ``compute_metrics``, HD95 from MONAI in mm; both
empty: NaN/NaN, one empty: Dice 0 and HD95 inf).

**Statistics.** Per class: mean and sample standard deviation (``ddof=1``; NaN for fewer than two values) over the
cases whose value is finite. For Dice that leaves out the ``both_empty`` cases; for HD95 also the ``pred_empty`` and
``ref_empty`` ones (their Dice of 0 stays in the Dice mean). The counts of left-out cases are columns of the
summary. The "all classes" row pools every finite (case, class) value; when no value is left out its Dice mean
equals nnU-Net's ``foreground_mean``.

**Which files.** Every file in a prediction folder with the dataset's file ending is a case and must have a
reference file of the same name in ``--gt``; other files (nnU-Net's ``.npz``, ``.pkl``, ``summary.json``) are
ignored. References without a prediction are allowed and counted (a single fold predicts only its validation
cases). Two prediction folders must hold the same cases, so the comparison is paired.

**Labels.** ``--labels`` (and ``--label-names``), or else the ``dataset.json`` next to the reference folder (in
``$nnUNet_raw/DatasetXXX`` next to ``labelsTr``, in ``$nnUNet_preprocessed/DatasetXXX`` next to
``gt_segmentations``), read with nnU-Net's ``LabelManager``: its foreground labels, or its regions for
region-based datasets, and its ignore label. The image reader is nnU-Net's for the file type (as in
``nnUNetv2_evaluate_simple``), so NIfTI/MHA geometry and spacing are read as nnU-Net reads them.

**nnU-Net's cross-validation output.** The references are ``$nnUNet_preprocessed/DatasetXXX/gt_segmentations``;
the predictions of one fold are ``$nnUNet_results/DatasetXXX/TRAINER__PLANS__CONFIG/fold_N/validation``, those of
all five folds ``.../crossval_results_folds_0_1_2_3_4`` (written by ``nnUNetv2_find_best_configuration``, or
``sam_nnunet crossval``), and after the chosen postprocessing ``.../crossval_results_folds_0_1_2_3_4/postprocessed``.
"""
from __future__ import annotations

import csv
import json
import math
import multiprocessing
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from sam_nnunet.evaluation.metrics import STATUSES, ClassMetrics, LabelOrRegion, case_metrics

PER_CASE_FIELDS = ("method", "case", "label", "class", "dice", "hd95_mm", "n_ref", "n_pred", "status")
SUMMARY_FIELDS = ("method", "label", "class", "cases", "dice_mean", "dice_std", "dice_n", "hd95_mean", "hd95_std",
                  "hd95_n", "both_empty", "pred_empty", "ref_empty")
ALL_CLASSES = "all classes"


@dataclass
class LabelSpec:
    """What to evaluate and how to read it."""

    labels: List[LabelOrRegion]
    names: List[str]
    ignore_label: Optional[int]
    file_ending: str
    reader: object  # an nnU-Net BaseReaderWriter instance


def _label_key(value) -> LabelOrRegion:
    if isinstance(value, (list, tuple)):
        return int(value[0]) if len(value) == 1 else tuple(int(v) for v in value)
    return int(value)


def _file_ending(folder: Path) -> str:
    files = sorted(p.name for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    if not files:
        raise FileNotFoundError(f"reference folder {folder} holds no files")
    name = files[0]
    return ".nii.gz" if name.endswith(".nii.gz") else Path(name).suffix


def label_spec(gt_folder: Path, labels: Optional[Sequence[int]] = None,
               names: Optional[Sequence[str]] = None) -> LabelSpec:
    """Labels, names, ignore label, file ending and reader, from the arguments or the reference's dataset.json."""
    from nnunetv2.imageio.reader_writer_registry import (determine_reader_writer_from_dataset_json,
                                                         determine_reader_writer_from_file_ending)
    from nnunetv2.utilities.label_handling.label_handling import LabelManager

    dataset_json_file = gt_folder.parent / "dataset.json"
    dataset_json = json.loads(dataset_json_file.read_text()) if dataset_json_file.is_file() else None
    ending = dataset_json["file_ending"] if dataset_json else _file_ending(gt_folder)
    examples = sorted(gt_folder.glob("*" + ending))
    if not examples:
        raise FileNotFoundError(f"no '*{ending}' reference files in {gt_folder}")
    if dataset_json:
        reader = determine_reader_writer_from_dataset_json(dataset_json, str(examples[0]), verbose=False)()
        manager = LabelManager(dataset_json["labels"], dataset_json.get("regions_class_order"))
        known = {_label_key(v): k for k, v in dataset_json["labels"].items() if k != "ignore"}
        default = manager.foreground_regions if manager.has_regions else manager.foreground_labels
        ignore_label = manager.ignore_label
    else:
        reader = determine_reader_writer_from_file_ending(ending, str(examples[0]), allow_nonmatching_filename=True,
                                                          verbose=False)()
        known, default, ignore_label = {}, None, None
    if labels is None:
        if default is None:
            raise ValueError(f"no dataset.json next to {gt_folder}: give the labels to evaluate with --labels 1 2 3")
        labels = default
    labels = [_label_key(v) for v in labels]
    if names is None:
        names = [known.get(v, str(v)) for v in labels]
    if len(names) != len(labels):
        raise ValueError(f"{len(names)} label names {list(names)} for {len(labels)} labels {labels}")
    return LabelSpec(labels, list(names), ignore_label, ending, reader)


def _cases(folder: Path, ending: str) -> List[str]:
    return sorted(p.name[: -len(ending)] for p in folder.glob("*" + ending) if p.is_file())


def _evaluate_case(job: Tuple[str, str, str, object, List[LabelOrRegion], Optional[int]]):
    case, ref, pred, reader, labels, ignore = job
    return case, case_metrics(ref, pred, reader, labels, ignore)


def evaluate_folder(gt_folder: Path, pred_folder: Path, spec: LabelSpec, *, num_processes: int = 1,
                    desc: str = "") -> Dict[str, Dict[LabelOrRegion, ClassMetrics]]:
    """case -> class -> metrics, for every prediction in ``pred_folder``, with a progress bar."""
    from tqdm import tqdm

    cases = _cases(pred_folder, spec.file_ending)
    if not cases:
        raise FileNotFoundError(f"no '*{spec.file_ending}' predictions in {pred_folder}")
    missing = [c for c in cases if not (gt_folder / (c + spec.file_ending)).is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} predictions in {pred_folder} have no reference in {gt_folder}: "
                                f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
    jobs = [(c, str(gt_folder / (c + spec.file_ending)), str(pred_folder / (c + spec.file_ending)), spec.reader,
             spec.labels, spec.ignore_label) for c in cases]
    bar = dict(total=len(jobs), desc=desc or pred_folder.name, unit="case")
    if num_processes > 1:
        with multiprocessing.get_context("spawn").Pool(num_processes) as pool:
            return dict(tqdm(pool.imap(_evaluate_case, jobs), **bar))
    return dict(tqdm(map(_evaluate_case, jobs), **bar))


def _mean_std(values: Sequence[float]) -> Tuple[float, float, int]:
    finite = np.asarray([v for v in values if math.isfinite(v)], dtype=float)
    if finite.size == 0:
        return math.nan, math.nan, 0
    std = float(np.std(finite, ddof=1)) if finite.size > 1 else math.nan
    return float(np.mean(finite)), std, int(finite.size)


def per_case_rows(method: str, results: Mapping[str, Mapping[LabelOrRegion, ClassMetrics]],
                  spec: LabelSpec) -> List[dict]:
    rows = []
    for case, per_class in results.items():
        for label, name in zip(spec.labels, spec.names):
            m = per_class[label]
            rows.append(dict(method=method, case=case, label=str(label), **{"class": name}, dice=m.dice,
                             hd95_mm=m.hd95, n_ref=m.n_ref, n_pred=m.n_pred, status=m.status))
    return rows


def summary_rows(rows: Sequence[dict], spec: LabelSpec) -> List[dict]:
    """Per method: one row per class and one pooled over all classes (statistics as in the module docstring)."""
    out = []
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == method]
        groups = [(str(label), name, [r for r in mine if r["label"] == str(label)])
                  for label, name in zip(spec.labels, spec.names)] + [("", ALL_CLASSES, mine)]
        for label, name, group in groups:
            dice = _mean_std([r["dice"] for r in group])
            hd95 = _mean_std([r["hd95_mm"] for r in group])
            counts = {s: sum(r["status"] == s for r in group) for s in STATUSES[1:]}
            out.append(dict(method=method, label=label, **{"class": name},
                            cases=len({r["case"] for r in group}), dice_mean=dice[0], dice_std=dice[1],
                            dice_n=dice[2], hd95_mean=hd95[0], hd95_std=hd95[1], hd95_n=hd95[2], **counts))
    return out


def _fmt(mean: float, std: float, digits: int) -> str:
    if not math.isfinite(mean):
        return "n/a"
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if math.isfinite(std) else f"{mean:.{digits}f}"


def summary_markdown(summary: Sequence[dict], sources: Mapping[str, Path], gt_folder: Path,
                     n_references: int) -> str:
    lines = ["# Evaluation report", "", f"Reference: `{gt_folder}` ({n_references} cases)", ""]
    methods = list(sources)
    for method in methods:
        mine = [s for s in summary if s["method"] == method]
        lines += [f"## {method}", "", f"Predictions: `{sources[method]}` ({mine[0]['cases']} cases)", "",
                  "| class | Dice | HD95 (mm) | cases | both empty | one empty |", "|---|---|---|---|---|---|"]
        for s in mine:
            label = f"{s['class']} ({s['label']})" if s["label"] else f"**{s['class']}**"
            lines.append(f"| {label} | {_fmt(s['dice_mean'], s['dice_std'], 3)} | "
                         f"{_fmt(s['hd95_mean'], s['hd95_std'], 2)} | {s['cases']} | {s['both_empty']} | "
                         f"{s['pred_empty'] + s['ref_empty']} |")
        lines.append("")
    if len(methods) == 2:
        a, b = methods
        lines += [f"## {a} vs {b}", "", f"| class | Dice {a} | Dice {b} | HD95 {a} (mm) | HD95 {b} (mm) |",
                  "|---|---|---|---|---|"]
        for sa, sb in zip(*([s for s in summary if s["method"] == m] for m in methods)):
            lines.append(f"| {sa['class']} | {_fmt(sa['dice_mean'], sa['dice_std'], 3)} | "
                         f"{_fmt(sb['dice_mean'], sb['dice_std'], 3)} | {_fmt(sa['hd95_mean'], sa['hd95_std'], 2)} | "
                         f"{_fmt(sb['hd95_mean'], sb['hd95_std'], 2)} |")
        lines.append("")
    lines += ["Mean ± sample standard deviation over cases. Dice: nnU-Net's `compute_metrics`; HD95: MONAI, 95th "
              "percentile symmetric Hausdorff distance in mm. *both empty*: the class is in neither reference nor "
              "prediction (Dice and HD95 undefined, left out of both means). *one empty*: the class is in only one "
              "of them (Dice 0, kept in the Dice mean; HD95 infinite, left out of the HD95 mean).", ""]
    return "\n".join(lines)


def _write_csv(path: Path, fields: Sequence[str], rows: Sequence[dict]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def write_report(gt_folder: str | Path, predictions: Mapping[str, str | Path], out_folder: str | Path, *,
                 labels: Optional[Sequence[int]] = None, label_names: Optional[Sequence[str]] = None,
                 num_processes: int = 1) -> Dict[str, Path]:
    """Evaluate each ``predictions`` folder (method name -> folder) against ``gt_folder``; returns the files written."""
    from sam_nnunet.evaluation.plots import box_plot, comparison_bars

    gt_folder = Path(gt_folder)
    sources = {name: Path(folder) for name, folder in predictions.items()}
    for folder in (gt_folder, *sources.values()):
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder} is not a folder")
    if not 1 <= len(sources) <= 2:
        raise ValueError(f"give one or two prediction folders, not {len(sources)}")
    spec = label_spec(gt_folder, labels, label_names)
    case_sets = {name: _cases(folder, spec.file_ending) for name, folder in sources.items()}
    if len(sources) == 2 and len({tuple(c) for c in case_sets.values()}) != 1:
        (a, ca), (b, cb) = case_sets.items()
        raise ValueError(f"{a} and {b} must predict the same cases for a paired comparison; only in {a}: "
                         f"{sorted(set(ca) - set(cb))[:5]}, only in {b}: {sorted(set(cb) - set(ca))[:5]}")

    rows = []
    for name, folder in sources.items():
        rows += per_case_rows(name, evaluate_folder(gt_folder, folder, spec, num_processes=num_processes,
                                                    desc=name), spec)
    summary = summary_rows(rows, spec)
    n_references = len(_cases(gt_folder, spec.file_ending))
    out = Path(out_folder)
    out.mkdir(parents=True, exist_ok=True)
    files = {"per_case": out / "per_case.csv", "summary_csv": out / "summary.csv", "summary_md": out / "summary.md",
             "boxplot_dice": out / "boxplot_dice.png", "boxplot_hd95": out / "boxplot_hd95.png"}
    _write_csv(files["per_case"], PER_CASE_FIELDS, rows)
    _write_csv(files["summary_csv"], SUMMARY_FIELDS, summary)
    files["summary_md"].write_text(summary_markdown(summary, sources, gt_folder, n_references))
    box_plot(rows, spec.names, list(sources), "dice", "Dice", files["boxplot_dice"])
    box_plot(rows, spec.names, list(sources), "hd95_mm", "HD95 (mm)", files["boxplot_hd95"])
    if len(sources) == 2:
        files["comparison"] = out / "comparison.png"
        comparison_bars(summary, spec.names, list(sources), files["comparison"])
    unpredicted = n_references - len(next(iter(case_sets.values())))
    print(f"evaluated {len(next(iter(case_sets.values())))} cases x {len(spec.labels)} classes "
          f"({unpredicted} references without prediction not evaluated); wrote {', '.join(p.name for p in files.values())} "
          f"to {out}")
    return files

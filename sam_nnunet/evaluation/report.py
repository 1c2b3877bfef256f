"""Evaluation report: per-case and per-class Dice and HD95 of one or two prediction folders.

``sam_nnunet report --gt LABELS --pred PRED [--pred2 OTHER --names A B] -o OUT [--labels 1 2 3]
[--label-names RV MYO LV] [--missing {skip,error,zero} | --require-all] [--no-hd95]`` writes to ``OUT``:

* ``per_case.csv``: one row per method, case and class: Dice, HD95 (mm), voxel counts and the empty-mask status;
* ``summary.csv`` and ``summary.md``: per class and over all classes, mean ± standard deviation of Dice and HD95,
  with how many cases entered each mean, how many were left out because the class was empty, and how many
  reference cases had no prediction and how they were counted;
* ``boxplot_dice.png`` and ``boxplot_hd95.png``: per-class box plots (one box per method);
* ``comparison.png`` (two folders only): per-class bars of mean Dice and mean HD95, the two methods side by side.

``--no-hd95`` (``hd95=False``) measures Dice only: HD95 is NaN throughout, MONAI is not needed, and the two
figures that show HD95 (``boxplot_hd95.png``, ``comparison.png``) are not drawn. Otherwise a missing MONAI stops
the report before anything is computed or written.

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
ignored. What a reference without a prediction means is chosen with ``missing`` (``--missing``):

* ``skip`` (default, as nnU-Net does): it is not evaluated; the means cover the predicted cases only. Right for a
  single fold, which predicts only its validation cases. Two prediction folders must then hold the same cases,
  so the comparison is paired.
* ``error`` (``--require-all``): the report stops before computing anything, naming the cases without a prediction.
* ``zero``: it is scored as an empty prediction for every class (status ``missing``: Dice 0 where the reference has
  the class, both empty where it does not), listed in ``per_case.csv`` and kept in the means. Every method is then
  measured on every reference, so two folders may lack different cases.

Either way the number of references without a prediction is printed and written to both summaries, per method,
so a folder that lacks the hard cases cannot pass for a better one unnoticed.

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

from sam_nnunet.evaluation.metrics import STATUSES, ClassMetrics, LabelOrRegion, case_metrics, require_monai

PER_CASE_FIELDS = ("method", "case", "label", "class", "dice", "hd95_mm", "n_ref", "n_pred", "status")
SUMMARY_FIELDS = ("method", "label", "class", "cases", "unpredicted", "missing_mode", "dice_mean", "dice_std",
                  "dice_n", "hd95_mean", "hd95_std", "hd95_n", "both_empty", "pred_empty", "ref_empty", "missing")
ALL_CLASSES = "all classes"
MISSING_MODES = ("skip", "error", "zero")  # what a reference without a prediction means; see the module docstring


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


def _listing(names: Sequence[str], shown: int = 5) -> str:
    """The first few ``names`` and, if there are more, how many in all (for messages)."""
    if not names:
        return "none"
    return ", ".join(names[:shown]) + (f", ... ({len(names)} in all)" if len(names) > shown else "")


def unpredicted_cases(gt_folder: Path, sources: Mapping[str, Path], spec: LabelSpec,
                      missing: str) -> Tuple[List[str], Dict[str, List[str]]]:
    """The reference cases, and per method those without a prediction; raises where ``missing`` does not allow
    them, or where the folders cannot be evaluated (no predictions, a prediction without a reference, two folders
    with different cases under ``skip``). Reads only file names, so it fails before anything is computed."""
    references = _cases(gt_folder, spec.file_ending)
    unpredicted = {}
    for name, folder in sources.items():
        predicted = _cases(folder, spec.file_ending)
        if not predicted:
            raise FileNotFoundError(f"no '*{spec.file_ending}' predictions in {folder}")
        stray = sorted(set(predicted) - set(references))
        if stray:
            raise FileNotFoundError(f"{len(stray)} predictions in {folder} have no reference in {gt_folder}: "
                                    f"{_listing(stray)}")
        unpredicted[name] = sorted(set(references) - set(predicted))
    if missing == "error" and any(unpredicted.values()):
        lacking = "; ".join(f"{len(u)} of {len(references)} reference cases in {gt_folder} have no prediction in "
                            f"{sources[name]}: {_listing(u)}" for name, u in unpredicted.items() if u)
        raise ValueError(f"every reference needs a prediction (--missing error / --require-all), but {lacking}. "
                         f"Predict them, or choose how to count them: --missing zero scores each as an empty "
                         f"prediction (Dice 0), --missing skip leaves them out (the means then cover only the "
                         f"predicted cases)")
    if missing == "skip" and len({tuple(u) for u in unpredicted.values()}) > 1:
        (a, ua), (b, ub) = unpredicted.items()
        raise ValueError(f"{a} and {b} must predict the same cases for a paired comparison; only in {a}: "
                         f"{_listing(sorted(set(ub) - set(ua)))}, only in {b}: {_listing(sorted(set(ua) - set(ub)))}"
                         f". Or score the cases a folder lacks as empty predictions with --missing zero")
    return references, unpredicted


def _evaluate_case(job: Tuple[str, str, Optional[str], object, List[LabelOrRegion], Optional[int], bool]):
    case, ref, pred, reader, labels, ignore, with_hd95 = job
    return case, case_metrics(ref, pred, reader, labels, ignore, with_hd95=with_hd95)


def evaluate_folder(gt_folder: Path, pred_folder: Path, spec: LabelSpec, cases: Sequence[str], *,
                    with_hd95: bool = True, num_processes: int = 1,
                    desc: str = "") -> Dict[str, Dict[LabelOrRegion, ClassMetrics]]:
    """case -> class -> metrics for ``cases``, with a progress bar. A case with no file in ``pred_folder`` is scored
    as an empty prediction (status ``missing``); :func:`unpredicted_cases` decides which cases to pass."""
    from tqdm import tqdm

    def prediction(case: str) -> Optional[str]:
        path = pred_folder / (case + spec.file_ending)
        return str(path) if path.is_file() else None

    jobs = [(c, str(gt_folder / (c + spec.file_ending)), prediction(c), spec.reader, spec.labels, spec.ignore_label,
             with_hd95) for c in cases]
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


def summary_rows(rows: Sequence[dict], spec: LabelSpec, unpredicted: Mapping[str, int], missing: str) -> List[dict]:
    """Per method: one row per class and one pooled over all classes (statistics as in the module docstring).

    ``unpredicted``: per method, the number of reference cases without a prediction, treated as ``missing`` says.
    """
    out = []
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == method]
        groups = [(str(label), name, [r for r in mine if r["label"] == str(label)])
                  for label, name in zip(spec.labels, spec.names)] + [("", ALL_CLASSES, mine)]
        for label, name, group in groups:
            dice = _mean_std([r["dice"] for r in group])
            hd95 = _mean_std([r["hd95_mm"] for r in group])
            counts = {s: sum(r["status"] == s for r in group) for s in STATUSES[1:]}
            out.append(dict(method=method, label=label, **{"class": name}, cases=len({r["case"] for r in group}),
                            unpredicted=unpredicted[method], missing_mode=missing, dice_mean=dice[0], dice_std=dice[1],
                            dice_n=dice[2], hd95_mean=hd95[0], hd95_std=hd95[1], hd95_n=hd95[2], **counts))
    return out


def _fmt(mean: float, std: float, digits: int) -> str:
    if not math.isfinite(mean):
        return "n/a"
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if math.isfinite(std) else f"{mean:.{digits}f}"


def _unpredicted_note(n: int, missing: str) -> str:
    """How many references had no prediction and what was done with them, as a phrase."""
    if not n:
        return "every reference has a prediction"
    cases = f"{n} reference case{'s' if n > 1 else ''} without a prediction"
    if missing == "zero":
        return f"{cases}, scored as empty (--missing zero): Dice 0 where the reference has the class"
    return f"{cases}, not evaluated (--missing {missing}): the means cover only the predicted cases"


def _no_prediction_cell(s: dict) -> str:
    """The *no prediction* column: unpredicted cases skipped, or (--missing zero) those that scored Dice 0 here."""
    scored = s["missing_mode"] == "zero"
    n = s["missing"] if scored else s["unpredicted"]
    return f"{n} {'scored 0' if scored else 'skipped'}" if n else "0"


def summary_markdown(summary: Sequence[dict], sources: Mapping[str, Path], gt_folder: Path, n_references: int, *,
                     with_hd95: bool = True) -> str:
    lines = ["# Evaluation report", "", f"Reference: `{gt_folder}` ({n_references} cases)", ""]
    methods = list(sources)
    for method in methods:
        mine = [s for s in summary if s["method"] == method]
        lines += [f"## {method}", "", f"Predictions: `{sources[method]}` "
                  f"({n_references - mine[0]['unpredicted']} of {n_references} reference cases); "
                  f"{_unpredicted_note(mine[0]['unpredicted'], mine[0]['missing_mode'])}.", "",
                  "| class | Dice | HD95 (mm) | cases | both empty | one empty | no prediction |",
                  "|---|---|---|---|---|---|---|"]
        for s in mine:
            label = f"{s['class']} ({s['label']})" if s["label"] else f"**{s['class']}**"
            lines.append(f"| {label} | {_fmt(s['dice_mean'], s['dice_std'], 3)} | "
                         f"{_fmt(s['hd95_mean'], s['hd95_std'], 2)} | {s['cases']} | {s['both_empty']} | "
                         f"{s['pred_empty'] + s['ref_empty']} | {_no_prediction_cell(s)} |")
        lines.append("")
    if len(methods) == 2:
        a, b = methods
        pooled = {s["method"]: s for s in summary if s["class"] == ALL_CLASSES}
        lines += [f"## {a} vs {b}", "", f"References without a prediction: {a} {pooled[a]['unpredicted']}, "
                  f"{b} {pooled[b]['unpredicted']} (--missing {pooled[a]['missing_mode']}).", "",
                  f"| class | Dice {a} | Dice {b} | HD95 {a} (mm) | HD95 {b} (mm) |", "|---|---|---|---|---|"]
        for sa, sb in zip(*([s for s in summary if s["method"] == m] for m in methods)):
            lines.append(f"| {sa['class']} | {_fmt(sa['dice_mean'], sa['dice_std'], 3)} | "
                         f"{_fmt(sb['dice_mean'], sb['dice_std'], 3)} | {_fmt(sa['hd95_mean'], sa['hd95_std'], 2)} | "
                         f"{_fmt(sb['hd95_mean'], sb['hd95_std'], 2)} |")
        lines.append("")
    hd95 = ("MONAI, 95th percentile symmetric Hausdorff distance in mm" if with_hd95
            else "not measured (`--no-hd95`)")
    lines += [f"Mean ± sample standard deviation over cases. Dice: nnU-Net's `compute_metrics`; HD95: {hd95}. "
              "*both empty*: the class is in neither reference nor prediction (Dice and HD95 undefined, left out of "
              "both means). *one empty*: the class is in only one of them (Dice 0, kept in the Dice mean; HD95 "
              "infinite, left out of the HD95 mean). *no prediction*: reference cases without a prediction file; "
              "*skipped* (`--missing skip`): in no mean, so the means describe the predicted cases only; *scored 0* "
              "(`--missing zero`): the class is in the reference and the case counts as an empty prediction (as "
              "*one empty*).", ""]
    return "\n".join(lines)


def _write_csv(path: Path, fields: Sequence[str], rows: Sequence[dict]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


#: every file a report may write (which of the plots depends on HD95 and on the number of methods)
REPORT_FILES = ("per_case.csv", "summary.csv", "summary.md", "boxplot_dice.png", "boxplot_hd95.png", "comparison.png")


def write_report(gt_folder: str | Path, predictions: Mapping[str, str | Path], out_folder: str | Path, *,
                 labels: Optional[Sequence[int]] = None, label_names: Optional[Sequence[str]] = None,
                 missing: str = "skip", hd95: bool = True, num_processes: int = 1,
                 overwrite: bool = False) -> Dict[str, Path]:
    """Evaluate each ``predictions`` folder (method name -> folder) against ``gt_folder``; returns the files written.

    ``missing``: what a reference without a prediction means, one of :data:`MISSING_MODES` (module docstring).
    ``hd95`` False: Dice only, without MONAI. An ``out_folder`` that holds a report already is refused before
    anything is computed, unless ``overwrite``: then every file of the earlier report is removed first, so none of
    them (a ``comparison.png`` of an earlier two-method report) is left beside the new one.
    """
    from sam_nnunet.evaluation.plots import box_plot, comparison_bars

    if missing not in MISSING_MODES:
        raise ValueError(f"missing={missing!r}: choose one of {', '.join(MISSING_MODES)}")
    if hd95:
        require_monai()
    gt_folder = Path(gt_folder)
    sources = {name: Path(folder) for name, folder in predictions.items()}
    for folder in (gt_folder, *sources.values()):
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder} is not a folder")
    if not 1 <= len(sources) <= 2:
        raise ValueError(f"give one or two prediction folders, not {len(sources)}")
    out = Path(out_folder)
    earlier = sorted(name for name in REPORT_FILES if (out / name).exists())
    if earlier and not overwrite:
        raise FileExistsError(f"{out} holds a report already ({', '.join(earlier)}); choose another -o folder, or "
                              f"pass --overwrite to replace it")
    spec = label_spec(gt_folder, labels, label_names)
    references, unpredicted = unpredicted_cases(gt_folder, sources, spec, missing)

    rows = []
    for name, folder in sources.items():
        cases = references if missing == "zero" else [c for c in references if c not in unpredicted[name]]
        results = evaluate_folder(gt_folder, folder, spec, cases, with_hd95=hd95, num_processes=num_processes,
                                  desc=name)
        rows += per_case_rows(name, results, spec)
        print(f"{name}: evaluated {len(results)} cases x {len(spec.labels)} classes "
              f"({_unpredicted_note(len(unpredicted[name]), missing)})")
    summary = summary_rows(rows, spec, {name: len(u) for name, u in unpredicted.items()}, missing)
    out.mkdir(parents=True, exist_ok=True)
    for name in earlier:
        (out / name).unlink()
    files = {"per_case": out / "per_case.csv", "summary_csv": out / "summary.csv", "summary_md": out / "summary.md",
             "boxplot_dice": out / "boxplot_dice.png"}
    _write_csv(files["per_case"], PER_CASE_FIELDS, rows)
    _write_csv(files["summary_csv"], SUMMARY_FIELDS, summary)
    files["summary_md"].write_text(summary_markdown(summary, sources, gt_folder, len(references), with_hd95=hd95))
    box_plot(rows, spec.names, list(sources), "dice", "Dice", files["boxplot_dice"])
    if hd95:  # without it the HD95 box plot would be empty and the comparison would draw HD95 bars of height 0
        files["boxplot_hd95"] = out / "boxplot_hd95.png"
        box_plot(rows, spec.names, list(sources), "hd95_mm", "HD95 (mm)", files["boxplot_hd95"])
        if len(sources) == 2:
            files["comparison"] = out / "comparison.png"
            comparison_bars(summary, spec.names, list(sources), files["comparison"])
    print(f"wrote {', '.join(p.name for p in files.values())} to {out}")
    return files

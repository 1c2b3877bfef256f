"""The model card that travels with a shared model: ``MODEL.md`` for people, ``model_card.json`` for programs.

Everything on it is read from the model folder, nothing is typed in:

* what the model is: trainer, plans, configuration, network class, patch size, the classes (dataset.json labels);
* what it was trained on: dataset name, number of training cases, channels, file ending, and the dataset's
  reference, licence and description as its converter wrote them into dataset.json;
* how good it is: each exported fold's validation Dice (``fold_X/validation/summary.json``) and the
  cross-validation's (``crossval_results_folds_*/summary.json``, and after postprocessing from
  ``postprocessing.json``), or "not cross-validated" when those files are absent;
* the pretrained weights it started from, with their licence and SHA-256: the plans' ``sam_nnunet_pretrained``
  record (named files such as ``litemedsam``), else the fold's ``sam_nnunet_run.json`` fingerprint of a file given
  by path (licence unknown: say so), else "none (trained from scratch)";
* the sam_nnunet, nnunetv2 and torch versions that exported it.

A model's weights carry the licences of what it was made from: the dataset's and the pretrained file's. The card
names both, so the receiver can tell what they may do with it.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from sam_nnunet.training.pretrained import PRETRAINED_KEY
from sam_nnunet.training.safeguards import RUN_INFO_FILE

CARD_MD, CARD_JSON = "MODEL.md", "model_card.json"


def _load(path: Path) -> Optional[dict]:
    return json.loads(path.read_text()) if path.is_file() else None


def _dice(summary: dict) -> dict:
    """Mean Dice over foreground classes and per class, from nnU-Net's summary.json."""
    per_class = {str(k): round(float(v["Dice"]), 4) for k, v in summary.get("mean", {}).items() if "Dice" in v}
    return {"foreground_mean": round(float(summary["foreground_mean"]["Dice"]), 4), "per_class": per_class}


def crossval_folder(model_dir: Path, holding: str = "summary.json") -> Optional[Path]:
    """The model's ``crossval_results_folds_*`` folder over the most folds that holds ``holding``, or None."""
    found = [p for p in model_dir.glob("crossval_results_folds_*") if (p / holding).is_file()]
    return max(found, key=lambda p: (len(p.name.split("_")), p.name)) if found else None


def pretrained_weights(model_dir: Path, plans: dict, folds: Sequence) -> List[dict]:
    """The pretrained files the model started from (see the module docstring)."""
    records = {}
    for conf in plans.get("configurations", {}).values():
        record = conf.get(PRETRAINED_KEY)
        if record:
            records[record["sha256"]] = {k: record.get(k) for k in ("name", "file", "bytes", "sha256", "licence",
                                                                  "source")}
    for fold in folds:
        run = _load(model_dir / f"fold_{fold}" / RUN_INFO_FILE) or {}
        fingerprint = run.get("sam_checkpoint_fingerprint")
        if fingerprint and fingerprint["sha256"] not in records:
            records[fingerprint["sha256"]] = {
                "name": run.get("sam_checkpoint_name") or Path(run.get("sam_checkpoint", "")).name, "file":
                Path(run.get("sam_checkpoint", "")).name, "bytes": fingerprint["size"], "sha256": fingerprint["sha256"],
                "licence": "not recorded (a file given by path): check the licence of the file you trained from",
                "source": "SAM_NNUNET_CHECKPOINT given as a path"}
    return list(records.values())


def versions() -> Dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for package in ("sam_nnunet", "nnunetv2", "torch"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            out[package] = "not installed"
    return out


def model_card(model_dir: Path, folds: Sequence) -> dict:
    """The card of ``model_dir`` (``TRAINER__PLANS__CONFIG``) for the exported ``folds``, as a JSON-ready dict."""
    plans, dataset = _load(model_dir / "plans.json"), _load(model_dir / "dataset.json")
    trainer, plans_name, configuration = model_dir.name.split("__")
    conf = plans["configurations"].get(configuration, {})
    validation = {str(f): _dice(s) for f in folds
                  for s in [_load(model_dir / f"fold_{f}" / "validation" / "summary.json")] if s}
    crossval = None
    folder = crossval_folder(model_dir)
    if folder is not None:
        crossval = {"folds": folder.name[len("crossval_results_folds_"):].split("_"),
                    "dice": _dice(_load(folder / "summary.json"))}
        pp = _load(folder / "postprocessing.json")
        if pp:
            crossval["postprocessing"] = pp.get("postprocessing_fns", [])
            crossval["dice_after_postprocessing"] = round(float(pp["postprocessed"]["foreground_mean"]["Dice"]), 4)
    return {
        "trainer": trainer, "plans": plans_name, "configuration": configuration,
        "network": conf.get("architecture", {}).get("network_class_name"), "patch_size": conf.get("patch_size"),
        "dataset": plans.get("dataset_name"),
        "classes": {str(v): k for k, v in dataset["labels"].items() if k not in ("background", "ignore")},
        "training_data": {"name": dataset.get("name", plans.get("dataset_name")),
                          "cases": dataset.get("numTraining"), "channels": dataset.get("channel_names"),
                          "file_ending": dataset.get("file_ending"), "reference": dataset.get("reference"),
                          "licence": dataset.get("license", dataset.get("licence")),
                          "description": dataset.get("description")},
        "folds": [str(f) for f in folds],
        "validation_dice": validation,
        "crossval": crossval,
        "pretrained_weights": pretrained_weights(model_dir, plans, folds),
        "exported_with": versions(),
    }


def card_markdown(card: dict) -> str:
    """``MODEL.md`` from :func:`model_card`'s dict."""
    data = card["training_data"]
    lines = [f"# {card['dataset']}: {card['trainer']} ({card['configuration']})", "",
             f"- Trainer `{card['trainer']}`, plans `{card['plans']}`, configuration `{card['configuration']}`; "
             f"network `{card['network']}`, patch {card['patch_size']}.",
             "- Classes: " + ", ".join(f"{k} {v}" for k, v in card["classes"].items()) + ".",
             f"- Training data: {data['name']}, {data['cases']} cases, channels {data['channels']}, "
             f"files {data['file_ending']}.",
             f"  - Reference: {data['reference'] or 'not given in dataset.json'}",
             f"  - Licence: {data['licence'] or 'not given in dataset.json'}",
             f"- Folds: {', '.join(card['folds'])}.", "", "## Accuracy", ""]
    if card["validation_dice"]:
        lines += [f"- Fold {f} validation: mean foreground Dice {d['foreground_mean']} (per class "
                  f"{d['per_class']})" for f, d in card["validation_dice"].items()]
    crossval = card["crossval"]
    if crossval:
        lines.append(f"- Cross-validation over folds {', '.join(crossval['folds'])}: mean foreground Dice "
                     f"{crossval['dice']['foreground_mean']}" + (
                         f"; after postprocessing {crossval['postprocessing'] or '(none chosen)'}: "
                         f"{crossval['dice_after_postprocessing']}" if "postprocessing" in crossval else ""))
    if not card["validation_dice"] and not crossval:
        lines.append("- Not validated: the model folder holds no validation or cross-validation summary.")
    lines += ["", "## Pretrained weights", ""]
    lines += [f"- `{w['name']}` ({w['file']}, {w['bytes']:,} bytes, SHA-256 `{w['sha256']}`): licence "
              f"{w['licence']}; {w['source']}" for w in card["pretrained_weights"]] or [
        "- None: trained from scratch."]
    lines += ["", "The weights carry the licences of the training data and of the pretrained weights above.", "",
              "## Use", "", "```", "sam_nnunet predict -i image.nii.gz -o out/ -m THIS_MODEL.zip",
              "nnUNetv2_install_pretrained_model_from_zip THIS_MODEL.zip   # then nnUNetv2_predict ... -tr "
              f"{card['trainer']} -p {card['plans']} -c {card['configuration']}", "```", "",
              "Exported with " + ", ".join(f"{k} {v}" for k, v in card["exported_with"].items()) + "."]
    return "\n".join(lines) + "\n"


def write_card(model_dir: Path, folds: Sequence, out_dir: Path) -> dict:
    """Write ``MODEL.md`` and ``model_card.json`` into ``out_dir``; returns the card."""
    card = model_card(model_dir, folds)
    (out_dir / CARD_JSON).write_text(json.dumps(card, indent=2) + "\n")
    (out_dir / CARD_MD).write_text(card_markdown(card))
    return card


def read_card(model_dir: os.PathLike) -> Optional[dict]:
    return _load(Path(model_dir) / CARD_JSON)

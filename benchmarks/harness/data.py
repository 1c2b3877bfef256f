"""The data of a run: converted, planned and preprocessed once per ``--out``; the low-data split."""
from __future__ import annotations

import datetime
import json
import os
import subprocess
from pathlib import Path
from typing import Dict, List

from benchmarks.harness.specs import DATASETS, PLANS, parse_trainer
from sam_nnunet.datasets.universal import volume_of


def prepare(args) -> Dict[str, Path]:
    out = Path(args.out).resolve()
    raw = Path(args.nnunet_raw).resolve() if args.nnunet_raw else out / "nnUNet_raw"
    pre = Path(args.nnunet_preprocessed).resolve() if args.nnunet_preprocessed else out / "nnUNet_preprocessed"
    results = out / f"nnUNet_results_{datetime.datetime.now():%Y%m%d_%H%M%S}"
    from sam_nnunet import nnunet_env

    os.environ.update(nnunet_env(nnUNet_raw=raw, nnUNet_preprocessed=pre, nnUNet_results=results),
                      nnUNet_compile="false", nnUNet_n_proc_DA=str(args.processes), SAM_NNUNET_SEED=str(args.seed))
    ds = DATASETS[args.dataset]
    if not (pre / ds["name"] / f"{PLANS}.json").is_file():
        from sam_nnunet.plans import write_sam_plans

        if not (raw / ds["name"]).is_dir():
            convert(args.dataset, args, raw)
        subprocess.run(["nnUNetv2_plan_and_preprocess", "-d", str(ds["id"]), "-c", "2d", "-np", str(args.processes)],
                       check=True, stdout=subprocess.DEVNULL)
        write_sam_plans(str(ds["id"]), "cpu_tiny")
    write_missing_shipped_plans(str(ds["id"]), pre / ds["name"], {parse_trainer(t)[1] for t in args.trainers})
    if any(parse_trainer(t)[2] == "3d_fullres" for t in args.trainers):
        plans = json.loads((pre / ds["name"] / "nnUNetPlans.json").read_text())
        if "3d_fullres" not in plans["configurations"]:
            raise SystemExit(f"{ds['name']} has no 3d_fullres configuration (nnU-Net plans one only for 3D data)")
        if not (pre / ds["name"] / plans["configurations"]["3d_fullres"]["data_identifier"]).is_dir():
            # the SAM plans keep nnU-Net's data identifier: preprocessing nnU-Net's 3d_fullres serves both
            subprocess.run(["nnUNetv2_preprocess", "-d", str(ds["id"]), "-c", "3d_fullres", "-np", str(args.processes)],
                           check=True, stdout=subprocess.DEVNULL)
    return {"raw": raw, "preprocessed": pre, "results": results}


def convert(dataset: str, args, raw: Path) -> None:
    """Convert ``dataset`` into ``raw`` (the universal one: ACDC and Kvasir-SEG first, each unless there, then
    merged)."""
    ds = DATASETS[dataset]
    if dataset == "acdc":
        from sam_nnunet.datasets.acdc import convert_acdc

        convert_acdc(args.acdc, ds["id"], max_patients=args.patients)
    elif dataset == "kvasir":
        from sam_nnunet.datasets.kvasir import convert_kvasir

        convert_kvasir(args.kvasir, ds["id"], max_cases=args.cases)
    else:
        from sam_nnunet.datasets.universal import merge_universal

        for source in ("acdc", "kvasir"):
            if not (raw / DATASETS[source]["name"]).is_dir():
                convert(source, args, raw)
        merge_universal([str(DATASETS[s]["id"]) for s in ("acdc", "kvasir")], ds["id"])


def source_cases(cases: List[str], source: str) -> List[str]:
    """The cases of the universal dataset that come from ``source`` (their names start with it)."""
    return [c for c in cases if c.startswith(f"{source}_")]


def first_validation_cases(val: List[str], n: int, dataset: dict) -> List[str]:
    """``--val-cases N``: the first N of fold 0's validation cases (0: all). On a dataset of several sources (the
    universal one) the first N of each source, a volume's slices (``<case>_z<k>``) counted as one case and kept
    together, so that every source is scored and ACDC's Dice covers whole volumes."""
    if not n:
        return list(val)
    if "sources" not in dataset:
        return list(val[:n])
    kept = []
    for source in dataset["sources"]:
        cases = source_cases(val, source)
        volumes = set(list(dict.fromkeys(map(volume_of, cases)))[:n])
        kept += [c for c in cases if volume_of(c) in volumes]
    return kept


def write_missing_shipped_plans(dataset: str, folder: Path, plans_names) -> None:
    """Write the plans of every shipped preset (``plans/``) a row names but ``folder`` lacks, so that a row such as
    ``HSPSAMTrainer@nnUNetPlans_SAMcpu_p8`` runs from an empty ``--out``, and stop when ``folder`` holds such plans
    written from an older version of the preset (a row would silently run the old settings); plans of no shipped
    preset are left to ``sam_nnunet plans --preset FILE``, and the row then fails with nnU-Net's own
    missing-plans error."""
    from sam_nnunet.plans import available_presets, load_preset, write_sam_plans

    shipped = {load_preset(name)["plans_name"]: name for name in available_presets()}
    for plans in sorted(plans_names):
        if plans not in shipped:
            continue
        if not (folder / f"{plans}.json").is_file():
            print(f"writing {plans} (preset {shipped[plans]})", flush=True)
        try:
            write_sam_plans(dataset, shipped[plans])
        except FileExistsError:
            raise SystemExit(f"{folder / plans}.json differs from what preset {shipped[plans]} gives now (written "
                             f"from an older version of it): remove the file, and the harness writes it anew")


def low_data_split(train: List[str], n_patients: int) -> List[str]:
    """The training cases of the first ``n_patients`` patients of fold 0's training set (ACDC's
    ``patientXXX_frameYY``: every frame of a kept patient); the validation set stays the same."""
    patients = sorted({c.split("_frame")[0] for c in train})
    if n_patients > len(patients):
        raise SystemExit(f"--train-patients {n_patients}: fold 0 has only {len(patients)} training patients")
    kept = set(patients[:n_patients])
    return [c for c in train if c.split("_frame")[0] in kept]

"""SAM trainers against nnUNetTrainer, side by side, in one process, on the same data and split.

    python benchmarks/benchmark.py --out runs/bench              # default: 5 min budget per trainer, ~30 min on 2 CPU cores
    python benchmarks/benchmark.py --out runs/acc60 --accuracy   # Dice at 60 min per trainer (all 80 ACDC patients)
    python benchmarks/benchmark.py --out runs/bench_quick --quick # seconds of training, for the test
    python benchmarks/benchmark.py --out runs/kvasir --dataset kvasir          # HSP-SAM's own task: polyps, 2D RGB
    python benchmarks/benchmark.py --out runs/transfer --checkpoint enc.pth \
        --trainers HSPSAMTrainer HSPSAMTrainer+pretrained                      # frozen pretrained encoder vs scratch

For every trainer (default ``nnUNetTrainer``, ``HSPSAMTrainer``, ``SelfPromptSAMTrainer``, ``PGSAMTrainer`` and
``ESPMedSAMTrainer``), built by nnU-Net's own
``get_trainer_from_args`` on the same plans (``nnUNetPlans_SAMcpu``: 2d, patch 128 x 128, batch 8)
and fold 0 of the same patient-grouped split, it measures, one trainer after the other so the
machine's noise hits all alike:

* the machine's speed: :func:`machine_probe_s`, a fixed convolution workload timed before the trainer is built,
  so that rows measured on different days (on machines of the same name but not the same speed) can be told apart;
* training step time: median and interquartile range of ``train_step`` (forward, loss, backward,
  optimiser step; data loading excluded) over ``--steps`` steps after ``--warmup``;
* sliding-window inference time per volume through ``nnUNetPredictor`` (nnU-Net's defaults: step
  0.5, Gaussian weighting, mirroring);
* peak memory: peak RSS of the process during training and during inference (``VmHWM``, reset
  before each phase); ``torch.cuda.max_memory_allocated`` on GPU;
* parameters, total and trainable, and the GFLOPs of one inference forward of a patch (torch's
  ``FlopCounterMode``);
* validation Dice per class on fold 0 (``--val-cases`` volumes; 0: all) after training for the same
  wall-clock budget (``--budget`` minutes), and HD95 per class (``sam_nnunet.evaluation.metrics``:
  MONAI, in pixels/mm of the images' spacing; left out if MONAI is not installed). Each trainer's
  schedule follows the budget's clock (:func:`clock_epoch`): it is built for 1000 epochs and, before
  every step, set to the epoch 1000 * elapsed / budget, so poly decay (ESP-MedSAM's exponential decay)
  ends when the budget does and Self-Prompt-SAM's warm-up is the first 20 % of the run, whatever the
  step time turns out to be (data loading included; a step of nnU-Net's default plans takes a minute
  on 2 cores);
* the training curve: mean training loss per ``--iterations-per-epoch`` steps against wall-clock time.

``--accuracy`` is the realistic-budget mode: 60 minutes per trainer, all 80 shipped ACDC patients
(fold 0: 64 training, 16 validation patients, 32 volumes), every validation volume, and the rows
``nnUNetTrainer@nnUNetPlans`` (nnU-Net as it plans itself), ``nnUNetTrainer`` (on the SAM presets'
128 x 128 patch and batch 8), ``HSPSAMTrainer`` on the shipped CPU preset ``cpu_p8``
(``nnUNetPlans_SAMcpu_p8``, whose plans are written when missing, as for any shipped preset a row names), and
``SelfPromptSAMTrainer`` and ``SelfPromptSAMTrainer:3d_fullres`` on ``cpu_tiny`` (Self-Prompt-SAM's decoder
takes 16-pixel encoder patches only). Each
finished row is kept in ``--out``/``rows/``: the same command run again (after a crash, or in
pieces: ``--trainers`` a few at a time) measures only the rows still missing and builds the table
from all of them; a kept row measured with other settings is refused, never overwritten.

On CPU every row runs with subnormal floats flushed to zero (:func:`sam_nnunet.training.numerics.flush_denormal`, as
the SAM trainers' own runs do), nnUNetTrainer's too, so that no row's speed depends on the rows before it.

Datasets (``--dataset``): ``acdc`` (shipped ACDC cine-MRI, patient-grouped split, 3 classes) or
``kvasir`` (shipped Kvasir-SEG, RGB PNG through nnU-Net's natural-image reader, nnU-Net's own
random 5-fold split, one class). A trainer named ``NAME:3d_fullres`` trains that configuration
(nnU-Net's 3d_fullres data is preprocessed on first use). A trainer named ``NAME@PLANS`` runs on another plans of the same
preprocessed data instead of ``nnUNetPlans_SAMcpu``: ``nnUNetTrainer@nnUNetPlans`` is nnU-Net with its
own default 2d plans (its patch and batch), next to ``nnUNetTrainer`` on the SAM preset's. A trainer named
``NAME+pretrained`` is ``NAME`` with
``SAM_NNUNET_CHECKPOINT=--checkpoint``: the trainer loads and freezes it as it would SAM's weights
(the papers' setting), in its own output folder (``..._pretrained``), next to ``NAME`` from scratch.

Writes ``results.json`` (raw numbers, the seed, the split, the machine), ``results.md`` (table with
ratios against nnUNetTrainer) and ``results.png`` (ratio bars; Dice per class) into ``--out``. The
dataset (shipped ACDC, ``--patients`` patients) is converted and preprocessed there first, unless
``--nnunet-raw/--nnunet-preprocessed`` point at a prepared one.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Tuple

REPO = Path(__file__).resolve().parents[1]
PLANS = "nnUNetPlans_SAMcpu"
PRETRAINED = "+pretrained"
SCHEDULE_EPOCHS = 1000  # epochs of every trainer's schedule in the budget run; advanced by the clock (clock_epoch)
DATASETS = {  # --dataset: nnU-Net id and name, label names, what the split is
    "acdc": {"id": 27, "name": "Dataset027_ACDC", "labels": {"1": "RV", "2": "MLV", "3": "LVC"},
             "split": "fold 0 of splits_final.json (patient-grouped, sam_nnunet convert-acdc)"},
    "kvasir": {"id": 311, "name": "Dataset311_KvasirSEG", "labels": {"1": "polyp"},
               "split": "fold 0 of splits_final.json (nnU-Net's random 5-fold split of the images)"},
}


TRAINERS = ["nnUNetTrainer", "HSPSAMTrainer", "SelfPromptSAMTrainer", "PGSAMTrainer", "ESPMedSAMTrainer"]
ACCURACY = {"budget_min": 60.0, "patients": 80, "val_cases": 0,  # --accuracy
            "trainers": ["nnUNetTrainer@nnUNetPlans", "nnUNetTrainer", "HSPSAMTrainer@nnUNetPlans_SAMcpu_p8",
                         "SelfPromptSAMTrainer", "SelfPromptSAMTrainer:3d_fullres"]}


def peak_rss_reset() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def peak_rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM"):
                return int(line.split()[1]) / 1024
    return float("nan")


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


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
            if args.dataset == "acdc":
                from sam_nnunet.datasets.acdc import convert_acdc

                convert_acdc(args.acdc, ds["id"], max_patients=args.patients)
            else:
                from sam_nnunet.datasets.kvasir import convert_kvasir

                convert_kvasir(args.kvasir, ds["id"], max_cases=args.cases)
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


def write_missing_shipped_plans(dataset: str, folder: Path, plans_names) -> None:
    """Write the plans of every shipped preset (``plans/``) a row names but ``folder`` lacks, so that a row such as
    ``HSPSAMTrainer@nnUNetPlans_SAMcpu_p8`` runs from an empty ``--out``; plans of no shipped preset are left to
    ``sam_nnunet plans --preset FILE``, and the row then fails with nnU-Net's own missing-plans error."""
    from sam_nnunet.plans import available_presets, load_preset, write_sam_plans

    shipped = {load_preset(name)["plans_name"]: name for name in available_presets()}
    for plans in sorted(plans_names):
        if plans in shipped and not (folder / f"{plans}.json").is_file():
            print(f"writing {plans} (preset {shipped[plans]})", flush=True)
            write_sam_plans(dataset, shipped[plans])


def parse_trainer(spec: str) -> Tuple[str, str, str, bool]:
    """``NAME[@PLANS][:CONFIG][+pretrained]`` -> (trainer class, plans identifier, configuration, pretrained);
    defaults: plans ``PLANS``, configuration ``2d``."""
    pretrained = spec.endswith(PRETRAINED)
    name = spec[: -len(PRETRAINED)] if pretrained else spec
    name, _, configuration = name.partition(":")
    trainer_class, _, plans = name.partition("@")
    return trainer_class, plans or PLANS, configuration or "2d", pretrained


def clock_epoch(elapsed_s: float, budget_s: float, epochs: int = SCHEDULE_EPOCHS) -> int:
    """The schedule's epoch at ``elapsed_s`` of a ``budget_s`` run: the budget's clock, in ``epochs`` equal parts.

    Every trainer's schedule is built for ``epochs`` epochs and advanced by the clock, not by a count of steps
    estimated beforehand, so it ends with the budget whatever the step time turns out to be (data loading
    included): poly decay reaches its end, and a warm-up of 20 % of the epochs (Self-Prompt-SAM) is 20 % of the
    run's time."""
    return min(epochs - 1, int(epochs * elapsed_s / budget_s))


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
    return settings


def low_data_split(train: List[str], n_patients: int) -> List[str]:
    """The training cases of the first ``n_patients`` patients of fold 0's training set (ACDC's
    ``patientXXX_frameYY``: every frame of a kept patient); the validation set stays the same."""
    patients = sorted({c.split("_frame")[0] for c in train})
    if n_patients > len(patients):
        raise SystemExit(f"--train-patients {n_patients}: fold 0 has only {len(patients)} training patients")
    kept = set(patients[:n_patients])
    return [c for c in train if c.split("_frame")[0] in kept]


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
        return row
    import torch
    from sam_nnunet.training.numerics import flush_denormal

    with flush_denormal(torch.device(args.device)) as flushed:  # every row alike, nnUNetTrainer's too
        row = benchmark_trainer(spec, args, paths)
    row["flush_denormal"] = flushed
    row.update(settings=row_settings(args), date=datetime.date.today().isoformat(), machine=machine(args.device))
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(row, indent=2))
    os.replace(partial, path)
    return row


def machine_probe_s(samples: int = 5, repeats: int = 3) -> float:
    """Seconds for a fixed CPU workload, recorded with every row: ``repeats`` forward and backward passes of one
    32-channel 3 x 3 convolution over a batch of 8 patches of 128 x 128 (float32), the median of ``samples``.

    Rows measured in different sessions run on machines that report the same name ("2 CPU cores (AMD EPYC)") but
    were seen to differ in speed: the same 15-minute HSP-SAM screen (``try_p8_lr1e3``) made 4,259 steps and
    predicted a volume in 3.54 s on 2026-11-30, and 3,223 steps and 5.94 s on 2026-12-03. Steps in a budget, and
    so Dice per CPU-hour, compare only between rows of similar probe times; the probe says which rows those are."""
    import torch

    conv = torch.nn.Conv2d(32, 32, 3, padding=1)
    x = torch.randn(8, 32, 128, 128, requires_grad=True)
    times = []
    for _ in range(samples + 1):  # the first sample warms up (allocation, oneDNN's kernel choice) and is dropped
        start = time.perf_counter()
        for _ in range(repeats):
            conv(x).square().mean().backward()
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def machine(device: str) -> str:
    import torch

    return (f"{os.cpu_count()} CPU cores ({cpu_name()})"
            + (f", {torch.cuda.get_device_name()}" if device == "cuda" else ""))


def benchmark_trainer(name: str, args, paths) -> dict:
    import numpy as np
    import torch
    from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_dataset_json
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.run.run_training import get_trainer_from_args
    from nnunetv2.utilities.utils import create_lists_from_splitted_dataset_folder

    ds = DATASETS[args.dataset]
    trainer_class, plans, configuration, pretrained = parse_trainer(name)
    probe = machine_probe_s()  # before any data-loading worker starts
    print(f"[{name}] machine probe {probe:.3f} s", flush=True)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    device = torch.device(args.device)
    os.environ.pop("SAM_NNUNET_CHECKPOINT", None)
    if pretrained:
        os.environ["SAM_NNUNET_CHECKPOINT"] = str(Path(args.checkpoint).resolve())
    try:
        trainer = get_trainer_from_args(str(ds["id"]), configuration, 0, trainer_class, plans, device=device)
    finally:
        os.environ.pop("SAM_NNUNET_CHECKPOINT", None)
    if pretrained:  # its own folder next to the from-scratch run of the same trainer: TRAINER_pretrained__PLANS__2d
        base = Path(trainer.output_folder_base)
        base = base.with_name(base.name.replace(f"{trainer_class}__", f"{trainer_class}_pretrained__", 1))
        folder = base / Path(trainer.output_folder).name
        folder.mkdir(parents=True, exist_ok=True)
        trainer.log_file = str(folder / Path(trainer.log_file).name)
        trainer.output_folder_base, trainer.output_folder = str(base), str(folder)
    trainer.num_iterations_per_epoch = args.iterations_per_epoch
    low_data = {}
    if args.train_patients:  # low-data mode: fewer training patients, the same validation volumes
        train_cases, val_split = trainer.do_split()
        train_cases = low_data_split(train_cases, args.train_patients)
        trainer.do_split = lambda: (train_cases, val_split)
        low_data = {"train_cases": list(train_cases)}
        print(f"[{name}] low-data mode: {len(train_cases)} training volumes of {args.train_patients} patients",
              flush=True)
    trainer.on_train_start()  # initialises network, optimiser, loss and data loaders (and loads the checkpoint)
    net = trainer.network
    row = {"trainer": name, "plans": plans, "configuration": configuration, "network": type(net).__name__,
           "machine_probe_s": probe,
           "params_total": sum(p.numel() for p in net.parameters()),
           "params_trainable": sum(p.numel() for p in net.parameters() if p.requires_grad),
           "batch_size": trainer.batch_size, "patch_size": list(trainer.configuration_manager.patch_size), **low_data}
    row["gflops_per_patch"] = patch_gflops(trainer, device)
    print(f"[{name}] {row['network']}: {row['params_total']:,} parameters, {row['params_trainable']:,} trainable, "
          f"{row['gflops_per_patch']:.2f} GFLOPs per patch", flush=True)

    # -- training step time and peak memory, on steps that are then undone, so that every trainer's training is its
    # budget alone (a step of nnU-Net's default plans takes most of a minute on 2 cores: its timed steps would add a
    # quarter of an hour). The starting weights wait on disk, out of the peak memory measured.
    start_state = Path(trainer.output_folder) / "benchmark_start_state.pth"
    torch.save({"network": net.state_dict(), "optimizer": trainer.optimizer.state_dict()}, start_state)
    peak_rss_reset()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    trainer.on_train_epoch_start()
    times: List[float] = []
    for i in range(args.warmup + args.steps):
        batch = next(trainer.dataloader_train)
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        trainer.train_step(batch)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= args.warmup:
            times.append(time.perf_counter() - start)
    q = statistics.quantiles(times, n=4) if len(times) >= 2 else [times[0]] * 3
    row.update(step_s_median=statistics.median(times), step_s_q1=q[0], step_s_q3=q[2],
               train_peak_rss_mb=peak_rss_mb())
    if device.type == "cuda":
        row["train_peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2 ** 20
    print(f"[{name}] train step {row['step_s_median']:.3f} s (median of {len(times)})", flush=True)
    undo = torch.load(start_state, map_location=device, weights_only=False)
    net.load_state_dict(undo["network"])
    trainer.optimizer.load_state_dict(undo["optimizer"])
    start_state.unlink()
    del undo

    # -- equal wall-clock budget; the learning-rate schedule (poly, ESP-MedSAM's exponential decay) and any
    # warm-up follow the budget's clock (clock_epoch), so they end with it
    budget = args.budget_min * 60
    # the scheduler was built in on_train_start for the trainer's own epochs: rebuild it for the clock's
    trainer.num_epochs = trainer.lr_scheduler.max_steps = SCHEDULE_EPOCHS
    trainer.current_epoch = 0  # started above (the step times)
    steps_done, start, curve, schedule, losses = 0, time.perf_counter(), [], [[0.0, 0]], []
    while (elapsed := time.perf_counter() - start) < budget:
        epoch = clock_epoch(elapsed, budget)  # the epoch and the time kept with it are read off one clock reading
        if epoch != trainer.current_epoch:  # checked every step: a step of nnU-Net's default plans takes a minute
            schedule.append([round(elapsed, 3), epoch])
            trainer.current_epoch = epoch
            trainer.on_train_epoch_start()  # nnU-Net: lr_scheduler.step(current_epoch); Self-Prompt-SAM: its phase
        losses.append(float(trainer.train_step(next(trainer.dataloader_train))["loss"]))
        steps_done += 1
        if len(losses) == args.iterations_per_epoch or time.perf_counter() - start >= budget:
            curve.append([round(time.perf_counter() - start, 1), float(np.mean(losses))])
            losses = []
    row.update(budget_s=budget, budget_steps=steps_done, curve=curve, schedule=schedule,
               schedule_epochs=SCHEDULE_EPOCHS)
    print(f"[{name}] {steps_done} training steps in the {args.budget_min} min budget", flush=True)

    # -- sliding-window inference per case + validation Dice and HD95 (fold 0)
    trainer.set_deep_supervision_enabled(False)
    net.eval()
    predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=True,
                                perform_everything_on_device=device.type == "cuda", device=device, verbose=False,
                                allow_tqdm=False)
    predictor.manual_initialization(net, trainer.plans_manager, trainer.configuration_manager, [net.state_dict()],
                                    trainer.dataset_json, trainer_class, trainer.inference_allowed_mirroring_axes)
    val_cases = trainer.do_split()[1][: args.val_cases or None]  # --val-cases 0: all of fold 0's
    raw = paths["raw"] / ds["name"]
    ending = trainer.dataset_json["file_ending"]
    images = create_lists_from_splitted_dataset_folder(str(raw / "imagesTr"), ending, val_cases)
    io = determine_reader_writer_from_dataset_json(trainer.dataset_json, images[0][0])()
    pred_dir = paths["results"] / f"val_{name}"
    pred_dir.mkdir(parents=True, exist_ok=True)
    peak_rss_reset()
    infer_times = []
    for case, files in zip(val_cases, images):
        data, props = io.read_images(files)
        start = time.perf_counter()
        seg = predictor.predict_single_npy_array(data, props, None, None, False)
        infer_times.append(time.perf_counter() - start)
        io.write_seg(seg, str(pred_dir / f"{case}{ending}"), props)
    row.update(infer_s_per_volume=statistics.median(infer_times), infer_peak_rss_mb=peak_rss_mb(),
               val_cases=list(val_cases))
    row["dice"], row["hd95"] = metrics_per_class(raw / "labelsTr", pred_dir, val_cases, io, ending, ds["labels"])
    print(f"[{name}] inference {row['infer_s_per_volume']:.2f} s/case; Dice {row['dice']}; HD95 {row['hd95']}",
          flush=True)
    trainer.on_train_end()
    return row


def patch_gflops(trainer, device) -> float:
    """GFLOPs of one inference forward (batch 1, one patch, deep supervision off), counted by torch's
    FlopCounterMode (matrix multiplications, convolutions and attention; a multiply-add is 2 FLOPs)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    net = trainer.network
    x = torch.zeros(1, trainer.num_input_channels, *trainer.configuration_manager.patch_size, device=device)
    training = net.training
    trainer.set_deep_supervision_enabled(False)
    net.eval()
    with FlopCounterMode(display=False) as counter:  # with autograd on: its module tracker needs grad_fn
        net(x)
    trainer.set_deep_supervision_enabled(True)
    net.train(training)
    return counter.get_total_flops() / 1e9


def metrics_per_class(ref_dir: Path, pred_dir: Path, cases, io, ending: str, labels) -> tuple:
    """Mean Dice (nnU-Net's compute_metrics, case by case) and mean HD95 per class, with the rules of
    ``sam_nnunet.evaluation.metrics`` (classes absent from both masks left out; an empty prediction has
    Dice 0 and is left out of HD95, whose mean is over the cases with both masks). HD95 is NaN without MONAI."""
    import numpy as np

    from sam_nnunet.evaluation.metrics import case_metrics, require_monai

    try:
        require_monai()
        with_hd95 = True
    except ImportError:
        with_hd95 = False
    dice: Dict[str, List[float]] = {k: [] for k in labels}
    hd95: Dict[str, List[float]] = {k: [] for k in labels}
    for case in cases:
        m = case_metrics(str(ref_dir / f"{case}{ending}"), str(pred_dir / f"{case}{ending}"), io,
                         [int(k) for k in labels], with_hd95=with_hd95)
        for k in labels:
            dice[k].append(m[int(k)].dice)
            if np.isfinite(m[int(k)].hd95):
                hd95[k].append(m[int(k)].hd95)
    def mean(values: List[float]) -> float:  # NaN, without numpy's warning, when no case has a value
        values = [v for v in values if not np.isnan(v)]
        return float(np.mean(values)) if values else float("nan")

    return {k: mean(v) for k, v in dice.items()}, {k: mean(v) for k, v in hd95.items()}


METRICS = [("step_s_median", "train step (s)"), ("infer_s_per_volume", "inference (s/volume)"),
           ("train_peak_rss_mb", "train peak RSS (MB)"), ("infer_peak_rss_mb", "inference peak RSS (MB)"),
           ("params_total", "parameters"), ("params_trainable", "trainable parameters"),
           ("gflops_per_patch", "GFLOPs per patch")]


def markdown(rows: List[dict], meta: dict) -> str:
    base, labels = rows[0], meta["labels"]
    plans = dict.fromkeys((r.get("plans", PLANS) + ("" if r.get("configuration", "2d") == "2d" else f" {r['configuration']}"),
                           tuple(r["patch_size"]), r["batch_size"]) for r in rows)
    plans_text = "; ".join(f"plans {p} (patch {list(patch)}, batch {batch})" for p, patch, batch in plans)
    dates = sorted({r.get("date", meta["date"]) for r in rows})
    machines = sorted({r.get("machine", meta["machine"]) for r in rows})
    lines = [f"Machine: {' / '.join(machines)}; device {meta['device']}; {' to '.join(dict.fromkeys([dates[0], dates[-1]]))}; "
             f"seed {meta['seed']}; "
             f"budget {meta['budget_min']} min per trainer; {plans_text}; {meta['dataset']}, {meta['split']}: "
             f"{len(base['val_cases'])} validation volumes"
             + (f"; low-data mode: {meta['train_patients']} training patients" if meta.get("train_patients") else "")
             + ".", "",
             "| trainer | " + " | ".join(label for _, label in METRICS) + " | steps in budget | "
             + " | ".join(f"Dice {labels[k]}" for k in labels) + " | mean Dice | "
             + " | ".join(f"HD95 {labels[k]}" for k in labels) + " |",
             "|---" * (len(METRICS) + 3 + 2 * len(labels)) + "|"]
    for r in rows:
        cells = []
        for key, _ in METRICS:
            v = r[key]
            txt = f"{v:,}" if isinstance(v, int) else f"{v:,.0f}" if v >= 100 else f"{v:.3g}"
            if r is not base and base[key]:
                txt += f" ({v / base[key]:.2f}x)"
            cells.append(txt)
        dice = [r["dice"].get(k, float("nan")) for k in labels]
        hd95 = [r.get("hd95", {}).get(k, float("nan")) for k in labels]
        lines.append(f"| {r['trainer']} | " + " | ".join(cells) + f" | {r['budget_steps']} | "
                     + " | ".join(f"{d:.3f}" for d in dice) + f" | {sum(dice) / len(dice):.3f} | "
                     + " | ".join(f"{h:.1f}" for h in hd95) + " |")
    lines.append("")
    lines.append(f"Ratios in parentheses are against {base['trainer']}. HD95 in the images' spacing units (mm; "
                 f"pixels for Kvasir-SEG), mean over cases where both masks have the class. Peak RSS is the whole process's "
                 f"(data-augmentation workers excluded). A Dice comparison needs a budget of 60 minutes or more "
                 f"per trainer on 2 CPU cores; shorter budgets compare noise.")
    return "\n".join(lines)


def plot(rows: List[dict], path: Path, labels: Dict[str, str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    base = rows[0]
    fig, (a1, a2, a3) = plt.subplots(1, 3, figsize=(18, 4))
    width = 0.8 / max(1, len(rows) - 1)
    x = np.arange(len(METRICS))
    for i, r in enumerate(rows[1:]):
        a1.bar(x + i * width, [r[k] / base[k] for k, _ in METRICS], width, label=r["trainer"])
    a1.axhline(1, color="k", lw=0.8)
    a1.set_xticks(x + width * (len(rows) - 2) / 2, [label for _, label in METRICS], rotation=30, ha="right")
    a1.set_yscale("log")
    a1.set_ylabel(f"ratio to {base['trainer']}")
    a1.legend()
    width = 0.8 / len(rows)
    x = np.arange(len(labels))
    for i, r in enumerate(rows):
        a2.bar(x + i * width, [r["dice"].get(k, 0) for k in labels], width, label=r["trainer"])
    a2.set_xticks(x + width * (len(rows) - 1) / 2, list(labels.values()))
    a2.set_ylabel("validation Dice")
    a2.set_ylim(0, 1)
    a2.legend()
    for r in rows:
        if r.get("curve"):
            t, loss = zip(*r["curve"])
            a3.plot(np.array(t) / 60, loss, label=r["trainer"])
    a3.set_xlabel("training time (min)")
    a3.set_ylabel("training loss (epoch mean)")
    a3.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--dataset", choices=sorted(DATASETS), default="acdc")
    p.add_argument("--acdc", default=str(REPO.parent / "shared" / "data" / "ACDC"))
    p.add_argument("--kvasir", default=str(REPO.parent / "shared" / "data" / "Kvasir-SEG"))
    p.add_argument("--cases", type=int, default=None, help="kvasir: convert only the first N images")
    p.add_argument("--checkpoint", help="SAM-layout checkpoint for trainers named NAME+pretrained "
                                        "(e.g. from sam_nnunet export-encoder)")
    p.add_argument("--nnunet-raw")
    p.add_argument("--nnunet-preprocessed")
    p.add_argument("--trainers", nargs="+", default=None,
                   help=f"NAME[@PLANS][:CONFIG][{PRETRAINED}]; PLANS default {PLANS}, CONFIG default 2d, e.g. "
                        f"nnUNetTrainer@nnUNetPlans, SelfPromptSAMTrainer:3d_fullres (default: {' '.join(TRAINERS)}; "
                        f"--accuracy: {' '.join(ACCURACY['trainers'])})")
    p.add_argument("--patients", type=int, default=None, help="acdc: convert the first N patients (default 30)")
    p.add_argument("--budget", "--budget-min", dest="budget_min", type=float, default=None,
                   help="training wall-clock budget per trainer, minutes (default 5; --accuracy: 60)")
    p.add_argument("--accuracy", action="store_true",
                   help=f"Dice at a realistic budget: {ACCURACY['budget_min']} min per trainer, all "
                        f"{ACCURACY['patients']} shipped ACDC patients, every validation volume of fold 0, and "
                        f"nnU-Net on its default plans and on the SAM preset's plans next to the SAM trainers")
    p.add_argument("--train-patients", type=int, default=None,
                   help="acdc, low-data mode: train on the first N patients of fold 0's training set (both frames); "
                        "validation stays fold 0's")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--iterations-per-epoch", type=int, default=50)
    p.add_argument("--val-cases", type=int, default=None, help="validate on the first N volumes of fold 0; 0: all "
                                                                   "(default 8; --accuracy: 0)")
    p.add_argument("--processes", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--quick", action="store_true", help="a few steps and seconds of training (for tests)")
    args = p.parse_args(argv)
    defaults = ACCURACY if args.accuracy else {"budget_min": 5.0, "patients": 30, "val_cases": 8, "trainers": TRAINERS}
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if any(t.endswith(PRETRAINED) for t in args.trainers) and not args.checkpoint:
        p.error(f"trainers named NAME{PRETRAINED} need --checkpoint")
    if args.quick:
        args.steps, args.warmup, args.budget_min, args.val_cases, args.iterations_per_epoch = 3, 1, 0.1, 1, 5
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    paths = prepare(args)
    rows = [measure_or_reuse(name, args, paths, out) for name in args.trainers]
    import torch

    meta = {"date": datetime.date.today().isoformat(), "seed": args.seed, "device": args.device,
            "budget_min": args.budget_min, "steps": args.steps, "warmup": args.warmup,
            "machine": machine(args.device), "torch": torch.__version__, "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]),
            "dataset": DATASETS[args.dataset]["name"], "split": DATASETS[args.dataset]["split"],
            "labels": DATASETS[args.dataset]["labels"], "checkpoint": args.checkpoint,
            "train_patients": args.train_patients}
    (out / "results.json").write_text(json.dumps({"meta": meta, "trainers": rows}, indent=2))
    (out / "results.md").write_text(markdown(rows, meta) + "\n")
    plot(rows, out / "results.png", meta["labels"])
    print(markdown(rows, meta))
    return 0


if __name__ == "__main__":
    sys.exit(main())

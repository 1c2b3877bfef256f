"""One row: the trainer trained for the budget (its step time measured first, then undone), then
sliding-window prediction of the validation volumes, Dice and HD95."""
from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Dict, List

from benchmarks.harness.data import first_validation_cases, low_data_split, source_cases
from benchmarks.harness.machine import machine_probe_s, peak_rss_mb, peak_rss_reset
from benchmarks.harness.specs import DATASETS, parse_trainer


def row_trainer_class(name: str, args) -> type:
    """The trainer of row ``name``: its trainer class, trained for the row's budget by
    :class:`~sam_nnunet.training.budget.TrainingBudget` (the schedule follows the budget's clock), with the row's
    training cases (low-data mode) and, for ``+pretrained``, the checkpoint as the class's ``pretrained_checkpoint``
    (named ``<trainer>_pretrained``, so nnU-Net gives it its own output folder next to the from-scratch run)."""
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    from sam_nnunet.training.budget import TrainingBudget

    trainer_class, _, _, pretrained = parse_trainer(name)
    base = recursive_find_trainer_class_by_name(trainer_class)
    attributes = {"budget_seconds": args.budget_min * 60, "curve_every": args.iterations_per_epoch,
                  "__module__": base.__module__}
    if pretrained:
        if not hasattr(base, "pretrained_checkpoint"):
            raise SystemExit(f"{name}: {trainer_class} takes no pretrained file")
        attributes["pretrained_checkpoint"] = str(Path(args.checkpoint).resolve())

    class BenchmarkRow(TrainingBudget):
        """Times ``args.steps`` training steps (after ``args.warmup``) and undoes them before the budget starts."""

        row_name = name  # the row as the harness names it (``TRAINER@PLANS...``), for its progress lines

        def do_split(self):
            train, val = super().do_split()
            if args.train_patients:  # low-data mode: fewer training patients, the same validation volumes
                train = low_data_split(train, args.train_patients)
            if getattr(args, "train_source", None):  # the universal dataset's per-dataset model
                train, val = source_cases(train, args.train_source), source_cases(val, args.train_source)
            return train, val

        def before_budget(self) -> None:
            self.row = {**count_network(self), **time_steps(self, args)}

    return type(trainer_class + ("_pretrained" if pretrained else ""), (BenchmarkRow, base), attributes)


def count_network(trainer) -> dict:
    net = trainer.network
    row = {"network": type(net).__name__, "params_total": sum(p.numel() for p in net.parameters()),
           "params_trainable": sum(p.numel() for p in net.parameters() if p.requires_grad),
           "batch_size": trainer.configuration_manager.batch_size, "patch_size": list(trainer.configuration_manager.patch_size),
           "gflops_per_patch": patch_gflops(trainer, trainer.device)}
    print(f"[{trainer.row_name}] {row['network']}: {row['params_total']:,} parameters, {row['params_trainable']:,} "
          f"trainable, {row['gflops_per_patch']:.2f} GFLOPs per patch", flush=True)
    return row


def time_steps(trainer, args) -> dict:
    """Training step time and peak memory, on steps that are then undone, so that every trainer's training is its
    budget alone (a step of nnU-Net's default plans takes most of a minute on 2 cores: its timed steps would add a
    quarter of an hour). The starting weights wait on disk, out of the peak memory measured."""
    import torch

    net, device = trainer.network, trainer.device
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
    row = {"step_s_median": statistics.median(times), "step_s_q1": q[0], "step_s_q3": q[2],
           "train_peak_rss_mb": peak_rss_mb()}
    if device.type == "cuda":
        row["train_peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2 ** 20
    print(f"[{trainer.row_name}] train step {row['step_s_median']:.3f} s (median of {len(times)})", flush=True)
    undo = torch.load(start_state, map_location=device, weights_only=False)
    net.load_state_dict(undo["network"])
    trainer.optimizer.load_state_dict(undo["optimizer"])
    start_state.unlink()
    return row


def benchmark_trainer(name: str, args, paths) -> dict:
    import numpy as np
    import torch
    from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_dataset_json
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.utilities.utils import create_lists_from_splitted_dataset_folder

    from sam_nnunet.training.budget import build_trainer

    ds = DATASETS[args.dataset]
    trainer_class, plans, configuration, pretrained = parse_trainer(name)
    probe = machine_probe_s()  # before any data-loading worker starts
    print(f"[{name}] machine probe {probe:.3f} s", flush=True)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    device = torch.device(args.device)
    trainer = build_trainer(row_trainer_class(name, args), str(ds["id"]), configuration, 0, plans, device)
    if args.train_patients:
        print(f"[{name}] low-data mode: {len(trainer.do_split()[0])} training volumes of {args.train_patients} "
              f"patients", flush=True)
    # -- the equal wall-clock budget (TrainingBudget.run_training): on_train_start (network, optimiser, loss, data
    # loaders, the checkpoint), the timed steps undone (before_budget), the budget, on_train_end (checkpoint_final)
    trainer.run_training()
    record, net = trainer.budget_record, trainer.network
    row = {"trainer": name, "plans": plans, "configuration": configuration, "machine_probe_s": probe, **trainer.row}
    if args.train_patients:
        row["train_cases"] = list(trainer.do_split()[0])
    row.update(budget_s=trainer.budget_seconds, budget_steps=record.steps, curve=record.curve,
               schedule=record.schedule, schedule_epochs=trainer.schedule_epochs)
    print(f"[{name}] {record.steps} training steps in the {args.budget_min} min budget", flush=True)

    # -- sliding-window inference per case + validation Dice and HD95 (fold 0)
    trainer.set_deep_supervision_enabled(False)
    net.eval()
    predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=True,
                                perform_everything_on_device=device.type == "cuda", device=device, verbose=False,
                                allow_tqdm=False)
    predictor.manual_initialization(net, trainer.plans_manager, trainer.configuration_manager, [net.state_dict()],
                                    trainer.dataset_json, trainer_class, trainer.inference_allowed_mirroring_axes)
    val_cases = first_validation_cases(trainer.do_split()[1], args.val_cases, ds)
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
    labels = ds["labels"]
    if getattr(args, "train_source", None):
        labels = {k: v for k, v in labels.items() if k in ds["sources"][args.train_source]}
    row["dice"], row["hd95"] = metrics_per_class(raw / "labelsTr", pred_dir, val_cases, io, ending, labels)
    if "sources" in ds:  # the universal dataset: the mean Dice on each source's validation cases
        row["mean_dice_by_source"] = {
            src: float(np.mean([row["dice"][k] for k in keys])) for src, keys in ds["sources"].items()
            if all(k in row["dice"] and np.isfinite(row["dice"][k]) for k in keys)}
    print(f"[{name}] inference {row['infer_s_per_volume']:.2f} s/case; Dice {row['dice']}; HD95 {row['hd95']}",
          flush=True)
    return row


def patch_gflops(trainer, device) -> float:
    """GFLOPs of one inference forward (batch 1, one patch, deep supervision off), counted by torch's
    FlopCounterMode (matrix multiplications, convolutions and attention; a multiply-add is 2 FLOPs)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    net = trainer.network
    x = torch.zeros(1, trainer.num_input_channels, *trainer.configuration_manager.patch_size, device=device)
    codes = getattr(net, "modality_codes", None)
    if codes:  # ESP-MedSAM's universal path reads each sample's modality from its last channel
        x[:, -1] = next(iter(codes.values()))
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

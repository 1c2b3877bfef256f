"""Model-level speed of the SAM networks: training step (forward + backward) and inference forward.

Needs only torch, segment-anything and this project's network code (no nnU-Net, no data), so it also
runs on a lent GPU machine:

    python benchmarks/network_speed.py --network SelfPromptSAM --encoder vit_tiny --patch 128 128 --batch 8
    python benchmarks/network_speed.py --network SelfPromptSAM --encoder vit_b --patch 20 256 224 --batch 2 \\
        --device cuda --bf16
    python benchmarks/network_speed.py --network ESPMedSAM --light-encoder tiny_vit_litemedsam \\
        --input-scaling unit_range --checkpoint litemedsam --patch 128 128 --batch 8
With ``--checkpoint`` (a path, or a name such as ``litemedsam``) the file is loaded and the network's
``freeze_pretrained`` freezes what its paper freezes, so the step is the one a trainer with that prior takes.

Prints one JSON line: median seconds of a training step (random input and targets, sum of the
outputs' mean as loss) and of an inference forward at batch 1 (a sliding-window tile); the FLOPs of
each, counted by ``torch.utils.flop_counter.FlopCounterMode`` (matmuls, convolutions, attention;
elementwise ops are not counted), and the achieved TFLOP/s. With a peak (``--peak-tflops``, or the
dense bf16 / fp32 peak of a known GPU, ``PEAK_TFLOPS``) also the fraction of it that was reached.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pydoc import locate

import torch

# Dense (no sparsity) peak TFLOP/s from the vendors' data sheets: (bf16 tensor core, fp32), by a part of
# torch.cuda.get_device_name() ("NVIDIA H100 80GB HBM3" is the SXM part).
PEAK_TFLOPS = {"H100 80GB HBM3": (989.4, 66.9), "H100 PCIe": (756.0, 51.2),
               "H200": (989.4, 66.9), "A100": (312.0, 19.5)}

NETWORKS = {"HSPSAM": "sam_nnunet.modeling.hsp_sam.HSPSAM",
            "SelfPromptSAM": "sam_nnunet.modeling.self_prompt_sam.SelfPromptSAM",
            "ESPMedSAM": "sam_nnunet.modeling.esp_medsam.ESPMedSAM",
            "PGSAM": "sam_nnunet.modeling.pg_sam.PGSAM"}
#: the networks that take a TinyViT (``--light-encoder``, ``--input-scaling``, ``--encoder-scale``)
LIGHT_NETWORKS = ("ESPMedSAM", "HSPSAM", "PGSAM")


def timed(fn, steps: int, warmup: int, device: torch.device) -> float:
    times = []
    for i in range(warmup + steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def count_flops(fn) -> int:
    """FLOPs of one call of ``fn`` (run once more, outside the timing)."""
    from torch.utils.flop_counter import FlopCounterMode

    from sam_nnunet.modeling.blocks.conv import FLOP_FORMULAS

    counter = FlopCounterMode(display=False, custom_mapping=FLOP_FORMULAS)
    with counter:
        fn()
    return counter.get_total_flops()


def device_peak_tflops(device: torch.device, bf16: bool):
    """The data-sheet peak of a known GPU for the dtype used, else None."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, (peak_bf16, peak_fp32) in PEAK_TFLOPS.items():
        if key in name:
            return peak_bf16 if bf16 else peak_fp32
    return None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--network", choices=sorted(NETWORKS), default="SelfPromptSAM")
    p.add_argument("--encoder", default="vit_tiny")
    p.add_argument("--patch", type=int, nargs="+", default=[128, 128], help="H W (2d) or D H W (3d)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--classes", type=int, default=4)
    p.add_argument("--device", default="cpu")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (GPU)")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--compile", action="store_true", help="time torch.compile(network) (FLOPs are counted eagerly)")
    p.add_argument("--light-encoder", help="ESPMedSAM, HSPSAM, PGSAM: the TinyViT (e.g. tiny_vit_litemedsam); 'none': "
                                           "the SAM ViT")
    p.add_argument("--input-scaling", help="with --light-encoder: none or unit_range")
    p.add_argument("--no-controller", action="store_true", help="ESPMedSAM: without modality bags")
    p.add_argument("--encoder-scale", type=float, help="with --light-encoder: the TinyViT's input resized by this factor")
    p.add_argument("--checkpoint", help="load this file (or name, e.g. litemedsam) and freeze what the network freezes")
    p.add_argument("--peak-tflops", type=float, help="the device's peak for the dtype used (default: PEAK_TFLOPS)")
    args = p.parse_args(argv)

    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_flush_denormal(True)
    torch.manual_seed(0)
    kwargs = dict(num_input_channels=1, num_classes=args.classes, img_size=args.patch[-2:], encoder=args.encoder)
    if len(args.patch) == 3:
        if args.network != "SelfPromptSAM":
            raise SystemExit("3D patches: HSPSAM runs 3d_fullres slice by slice; give it H W")
        kwargs["patch_depth"] = args.patch[0]
    if args.network in LIGHT_NETWORKS:
        if args.light_encoder:
            kwargs["light_encoder"] = None if args.light_encoder == "none" else args.light_encoder
        if args.input_scaling:
            kwargs["input_scaling"] = args.input_scaling
        if args.encoder_scale:
            kwargs["encoder_scale"] = args.encoder_scale
    elif args.light_encoder or args.input_scaling or args.encoder_scale:
        raise SystemExit(f"--light-encoder, --input-scaling and --encoder-scale are for {', '.join(LIGHT_NETWORKS)}")
    if args.network == "ESPMedSAM":
        kwargs["modality"] = "mri"
        kwargs["controller"] = not args.no_controller
    elif args.no_controller:
        raise SystemExit("--no-controller is ESPMedSAM's")
    if args.network == "PGSAM":
        kwargs["text_prior"] = "learned"  # no text encoder needed to time the network
    net = locate(NETWORKS[args.network])(**kwargs)
    frozen = 0
    if args.checkpoint:
        from sam_nnunet.modeling.weights.pretrained_files import resolve_checkpoint

        frozen, _ = net.freeze_pretrained(net.load_pretrained(resolve_checkpoint(args.checkpoint)))
    net = net.to(device)
    opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=1e-3)
    run = torch.compile(net) if args.compile else net
    x = torch.randn(args.batch, 1, *args.patch, device=device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16)

    def train_step(model=run):
        opt.zero_grad(set_to_none=True)
        with autocast:
            outs = model(x)
            loss = sum(o.float().mean() for o in (outs if isinstance(outs, list) else [outs]))
        loss.backward()
        opt.step()

    def infer_tile(model=run):
        with torch.no_grad(), autocast:
            model(x[:1])

    net.train()
    start = time.perf_counter()
    train_step()
    first_step = time.perf_counter() - start  # includes compilation with --compile
    step = timed(train_step, args.steps, args.warmup, device)
    train_flops = count_flops(lambda: train_step(net))
    net.eval()
    net.deep_supervision = False
    infer = timed(infer_tile, args.steps * 3, args.warmup, device)
    def forward_tile():  # counted with autograd on: the module tracker of the FLOP counter fails under no_grad
        with autocast:  # when a module gets a parameter as its input (ESPMedSAM's decoder queries)
            net(x[:1])

    infer_flops = count_flops(forward_tile)
    result = {"network": args.network, "encoder": args.encoder, "light_encoder": kwargs.get("light_encoder"),
              "encoder_scale": kwargs.get("encoder_scale", 1.0), "controller": kwargs.get("controller"),
              "checkpoint": args.checkpoint, "frozen_params": frozen, "patch": args.patch, "batch": args.batch,
              "device": args.device, "bf16": args.bf16, "compile": args.compile,
              "first_train_step_s": round(first_step, 3), "train_step_s": round(step, 4),
              "infer_tile_s": round(infer, 4), "params": sum(p.numel() for p in net.parameters()),
              "train_step_gflop": round(train_flops / 1e9, 3), "infer_tile_gflop": round(infer_flops / 1e9, 3),
              "train_tflops": round(train_flops / step / 1e12, 4), "infer_tflops": round(infer_flops / infer / 1e12, 4),
              "torch": torch.__version__, "threads": torch.get_num_threads()}
    peak = args.peak_tflops or device_peak_tflops(device, args.bf16)
    if peak:
        result.update(peak_tflops=peak, train_fraction_of_peak=round(result["train_tflops"] / peak, 4),
                      infer_fraction_of_peak=round(result["infer_tflops"] / peak, 4))
    if device.type == "cuda":
        result["device_name"] = torch.cuda.get_device_name(device)
        result["max_memory_allocated_mb"] = round(torch.cuda.max_memory_allocated() / 2 ** 20, 1)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

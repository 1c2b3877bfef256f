"""Before/after of ``sam_nnunet.modeling.blocks.conv.Conv3d`` (batch-1 3D convolutions through oneDNN on CPU).

One process, one network, same weights and input; the routing is switched off and on in alternation
(``rounds`` x ``calls`` each), so machine noise hits both alike:

    python benchmarks/conv_ab.py                       # Self-Prompt-SAM vit_tiny: 2d tile, 3d tile, 3d batch-1 train step
    python benchmarks/conv_ab.py --patch 4 128 128 --rounds 5

Prints one JSON line per measurement: the median over rounds of the per-round median seconds, with
torch's own backend choice ("torch") and with the routing ("onednn"), and their ratio.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

import sam_nnunet.modeling.blocks.conv as conv
from sam_nnunet.modeling.self_prompt_sam import SelfPromptSAM

ONEDNN = conv._MKLDNN_CONV


def build(patch, encoder: str) -> SelfPromptSAM:
    torch.manual_seed(0)
    kwargs = dict(num_input_channels=1, num_classes=4, img_size=patch[-2:], encoder=encoder)
    if len(patch) == 3:
        kwargs["patch_depth"] = patch[0]
    return SelfPromptSAM(**kwargs)


def alternate(fn, rounds: int, calls: int) -> dict:
    per_mode = {"torch": [], "onednn": []}
    for _ in range(2):
        fn()
    for _ in range(rounds):
        for mode in per_mode:
            conv._MKLDNN_CONV = ONEDNN if mode == "onednn" else None
            times = []
            for _ in range(calls):
                start = time.perf_counter()
                fn()
                times.append(time.perf_counter() - start)
            per_mode[mode].append(statistics.median(times))
    conv._MKLDNN_CONV = ONEDNN
    out = {mode: round(statistics.median(v), 5) for mode, v in per_mode.items()}
    out["onednn_over_torch"] = round(out["onednn"] / out["torch"], 3)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--patch", type=int, nargs="+", action="append", help="H W or D H W; repeatable")
    p.add_argument("--encoder", default="vit_tiny")
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--calls", type=int, default=10)
    args = p.parse_args(argv)
    if ONEDNN is None:
        raise SystemExit("this torch build has no oneDNN (torch.backends.mkldnn.is_available() is False)")
    torch.set_flush_denormal(True)
    for patch in args.patch or [[128, 128], [4, 128, 128]]:
        net = build(patch, args.encoder)
        x = torch.randn(1, 1, *patch)
        net.eval()
        net.deep_supervision = False
        with torch.no_grad():
            tile = alternate(lambda: net(x), args.rounds, args.calls)
        print(json.dumps({"patch": patch, "what": "inference tile, batch 1", **tile}), flush=True)
        if len(patch) == 3:  # the CPU 3d preset trains with batch 1
            net.train()
            net.deep_supervision = True
            opt = torch.optim.SGD(net.parameters(), lr=1e-3)

            def step():
                opt.zero_grad(set_to_none=True)
                sum(o.mean() for o in net(x)).backward()
                opt.step()

            train = alternate(step, max(1, args.rounds // 2), max(1, args.calls // 2))
            print(json.dumps({"patch": patch, "what": "training step, batch 1", **train}), flush=True)
    print(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

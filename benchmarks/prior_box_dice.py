"""LiteMedSAM's prior on shipped ACDC slices: Dice with a ground-truth box, by input scaling and encoder input size.

    python benchmarks/prior_box_dice.py --patients 8 --out runs/prior_box     # ~2 minutes on 2 cores

The model is :class:`sam_nnunet.modeling.litemedsam.PromptableLiteSAM` (the project's modules, loaded from the
packaged ``lite_medsam.pth``). For each of the first N training patients, the mid-ventricular slice (of the LV
cavity) of the first frame is resized to S x S, scaled one of three ways, and prompted with the bounding box of
each structure's ground truth:

* ``percentile``: MedSAM's own preprocessing of MR (clip to the 0.5 / 99.5 percentiles, rescale to [0, 1]);
* ``zscore``: nnU-Net's MRI normalisation (volume mean / std) fed as it is;
* ``zscore_unit_range``: nnU-Net's z-scores rescaled to [0, 1] per slice, what ``input_scaling="unit_range"``
  does in the networks.

S = 256 is what LiteMedSAM was trained at; a smaller S is what ``encoder_scale`` < 1 feeds the encoder (the same
field of view at fewer pixels). Writes ``box_dice.json`` and ``box_dice.md`` to ``--out``.
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F

from sam_nnunet.modeling.litemedsam import PromptableLiteSAM, scale_to_unit_range
from sam_nnunet.modeling.weights.pretrained_files import resolve_checkpoint

REPO = Path(__file__).resolve().parents[1]
LABELS = {1: "RV", 2: "MLV", 3: "LVC"}
SCALINGS = ("percentile", "zscore", "zscore_unit_range")


def slices(acdc: Path, n: int):
    """(volume, label slice) pairs: the first frame's LV-cavity mid slice of the first ``n`` patients."""
    out = []
    for patient in sorted(p for p in (acdc / "training").iterdir() if p.is_dir())[:n]:
        frame = sorted(patient.glob(f"{patient.name}_frame??.nii.gz"))[0]
        volume = np.asarray(nib.load(str(frame)).dataobj, dtype=np.float32)
        label = np.asarray(nib.load(str(frame).replace(".nii.gz", "_gt.nii.gz")).dataobj)
        z = int(np.argwhere(label == 3)[:, 2].mean().round())
        out.append((volume, z, label[..., z]))
    return out


def scaled(volume: np.ndarray, z: int, scaling: str, size: int) -> torch.Tensor:
    if scaling == "percentile":
        lo, hi = np.percentile(volume, [0.5, 99.5])
        image = (np.clip(volume[..., z], lo, hi) - lo) / (hi - lo)
    else:
        image = (volume[..., z] - volume.mean()) / volume.std()
    x = F.interpolate(torch.from_numpy(image)[None, None].float(), size=(size, size), mode="bilinear",
                      align_corners=False)
    return scale_to_unit_range(x) if scaling == "zscore_unit_range" else x


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--acdc", default=str(REPO.parent / "shared" / "data" / "ACDC"))
    p.add_argument("--patients", type=int, default=8)
    p.add_argument("--sizes", type=int, nargs="+", default=[256, 192, 128])
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    torch.set_flush_denormal(True)
    path = resolve_checkpoint("litemedsam")
    cases = slices(Path(args.acdc), args.patients)
    rows = []
    for size in args.sizes:
        net = PromptableLiteSAM(in_chans=1, img_size=size).eval()
        net.load_pretrained(path)
        for scaling in SCALINGS if size == args.sizes[0] else ("zscore_unit_range",):
            dice = {name: [] for name in LABELS.values()}
            for volume, z, label in cases:
                x = scaled(volume, z, scaling, size)
                gt = F.interpolate(torch.from_numpy(label.astype(np.float32))[None, None], size=(size, size),
                                   mode="nearest")[0, 0]
                for value, name in LABELS.items():
                    mask = gt == value
                    if not mask.any():
                        continue
                    ys, xs = torch.nonzero(mask, as_tuple=True)
                    box = torch.stack([xs.min(), ys.min(), xs.max(), ys.max()]).float()[None]
                    with torch.no_grad():
                        pred = net(x, box)[0, 0] > 0
                    dice[name].append(2 * float((pred & mask).sum()) / float(pred.sum() + mask.sum()))
            rows.append({"size": size, "scaling": scaling, **{k: float(np.mean(v)) for k, v in dice.items()},
                         "slices": len(cases)})
            print(json.dumps(rows[-1]), flush=True)
    meta = {"date": datetime.date.today().isoformat(), "machine": platform.processor() or platform.machine(),
            "torch": torch.__version__, "patients": args.patients,
            "command": "python benchmarks/prior_box_dice.py " + " ".join(sys.argv[1:] if argv is None else argv)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "box_dice.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    lines = ["| encoder input | scaling | " + " | ".join(f"Dice {n}" for n in LABELS.values()) + " |",
             "|---|---|" + "---|" * len(LABELS)]
    lines += [f"| {r['size']} x {r['size']} | {r['scaling']} | " + " | ".join(f"{r[n]:.3f}" for n in LABELS.values())
              + " |" for r in rows]
    (out / "box_dice.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

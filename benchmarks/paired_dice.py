"""Paired per-volume Dice of two prediction folders against one reference: how two benchmark rows differ volume by
volume, not only in their means.

    python benchmarks/paired_dice.py --gt nnUNet_raw/Dataset027_ACDC/labelsTr --a runs/acc60p/.../val_ROW_A \\
        --b runs/acc60p/.../val_nnUNetTrainer --labels 1 2 3 --names RV MLV LVC

Per volume (the files of ``--a`` that ``--b`` also holds), the Dice of every label (a label absent from both the
reference and the prediction counts as 1, where nnU-Net's evaluation leaves it out; every ACDC volume holds all
three labels), then the mean over labels. ``--slices`` stacks a volume's 2D slices (``<volume>_z<k>``, the universal
dataset's ACDC cases) and scores the volume. Prints A's and B's means, the paired difference A - B with its standard error
(standard deviation / sqrt(n)), the volumes on which A is better, and the difference per label.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np

from sam_nnunet.datasets.universal import volume_of


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else 2.0 * np.logical_and(a, b).sum() / total


def volumes(files: Sequence[Path], slices: bool) -> Dict[str, List[Path]]:
    """The files of each volume: one file each, or with ``slices`` a volume's 2D slices ``<volume>_z<k>.nii.gz``
    (the universal dataset's ACDC cases) stacked in slice order; other files stay volumes of their own."""
    out: Dict[str, List[Path]] = {}
    for file in sorted(files):
        name = file.name[: -len(".nii.gz")]
        key = volume_of(name) if slices else name
        out.setdefault(key, []).append(file)
    return out


def per_volume(gt: Path, pred: Path, labels: Sequence[int], slices: bool = False,
               prefix: str = "") -> Dict[str, List[float]]:
    import SimpleITK as sitk

    def read(files: Sequence[Path]) -> np.ndarray:
        return np.stack([sitk.GetArrayFromImage(sitk.ReadImage(str(f))) for f in files])

    out = {}
    for name, files in volumes(list(pred.glob(f"{prefix}*.nii.gz")), slices).items():
        ref, seg = read([gt / f.name for f in files]), read(files)
        out[name] = [dice(ref == label, seg == label) for label in labels]
    return out


def summary(a: Dict[str, List[float]], b: Dict[str, List[float]], names: Sequence[str]) -> str:
    cases = sorted(set(a) & set(b))
    if not cases:
        raise SystemExit("the two folders share no volume")
    va, vb = np.array([a[c] for c in cases]), np.array([b[c] for c in cases])
    diff = va.mean(1) - vb.mean(1)
    se = diff.std(ddof=1) / math.sqrt(len(cases)) if len(cases) > 1 else float("nan")
    per_label = ", ".join(f"{n} {round(d, 6) + 0.0:+.3f}" for n, d in zip(names, (va - vb).mean(0)))  # no -0.000
    return (f"{len(cases)} volumes: A {va.mean():.3f}, B {vb.mean():.3f}; A - B {diff.mean():+.4f} (standard error "
            f"{se:.4f}); A better on {int((diff > 0).sum())} of {len(cases)}; per label {per_label}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--gt", required=True, type=Path)
    p.add_argument("--a", required=True, type=Path)
    p.add_argument("--b", required=True, type=Path)
    p.add_argument("--labels", nargs="+", type=int, default=[1, 2, 3])
    p.add_argument("--names", nargs="+", default=None)
    p.add_argument("--slices", action="store_true",
                   help="score each volume's 2D slices (<volume>_z<k>) stacked, as one volume (the universal dataset)")
    p.add_argument("--prefix", default="", help="only the files whose names start with it (a universal dataset's "
                                                "source: ACDC_, KvasirSEG_)")
    args = p.parse_args(argv)
    names = args.names or [str(label) for label in args.labels]
    print(summary(*(per_volume(args.gt, folder, args.labels, args.slices, args.prefix) for folder in (args.a, args.b)),
                  names))
    return 0


if __name__ == "__main__":
    sys.exit(main())

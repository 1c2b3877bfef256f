"""Per-case Dice (nnU-Net's evaluation) and HD95 in mm (MONAI), with explicit rules for absent classes.

**Dice** is nnU-Net's own ``nnunetv2.evaluation.evaluate_predictions.compute_metrics``: the same image reader,
label/region handling (a region is a tuple of labels) and ignore label as ``nnUNetv2_evaluate_folder`` and the
``validation/summary.json`` of a fold, so the numbers here equal nnU-Net's, case by case.

**HD95** is ``monai.metrics.compute_hausdorff_distance(..., percentile=95, spacing=...)``: the symmetric 95th
percentile Hausdorff distance between the surface voxels of prediction and reference, as the larger of the two
directed 95th percentiles. (``medpy.metric.binary.hd95`` takes the 95th percentile of both directions pooled; the
two can differ slightly.) Masks are read again with nnU-Net's reader for the file type (``compute_metrics`` does
not return them), and its ``spacing`` property, in the array's axis order, is passed to MONAI, so distances are
in mm and anisotropic voxels (ACDC: 1.5 x 1.5 x 10 mm) are respected. Axes of length 1 are dropped first: a 2D
image read as a 1 x H x W volume is measured in 2D (otherwise erosion along the singleton axis would make every
voxel a surface voxel). Voxels under the ignore label are removed from both masks. MONAI is optional
(``pip install 'sam_nnunet[report]'``): it is imported only where a distance is measured, and
:func:`require_monai` checks for it before a report starts.

**Absent classes** (``status`` column in the reports):

============  ============  =====================  ======  ==============
reference     prediction    Dice                   HD95    status
============  ============  =====================  ======  ==============
present       present       2TP / (2TP + FP + FN)  MONAI   ``ok``
absent        absent        NaN (nnU-Net's rule)   NaN     ``both_empty``
present       absent        0                      inf     ``pred_empty``
absent        present       0                      inf     ``ref_empty``
present       no file       0                      inf     ``missing``
absent        no file       NaN                    NaN     ``both_empty``
============  ============  =====================  ======  ==============

A structure that is absent and correctly predicted absent says nothing about overlap or boundaries, so both
metrics are undefined (NaN) and the case is left out of that class's means, as nnU-Net does for Dice. If one mask
is empty there is no surface to measure to: the distance is infinite. Such cases are already penalised by their
Dice of 0; they are left out of the HD95 means (a single ``inf`` would make the mean meaningless) and counted in
the summary, so a low HD95 cannot hide a missed structure.

A case with no prediction file at all (``sam_nnunet report --missing zero``) is scored as an empty prediction: the
same values, so it enters the means exactly as an empty prediction would, but the status ``missing`` instead of
``pred_empty`` says that the file, not the structure, was missing. Without HD95 (``--no-hd95``) every HD95 is NaN.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, replace
from typing import Dict, Optional, Sequence, Tuple, Union

import numpy as np
from nnunetv2.evaluation.evaluate_predictions import compute_metrics, region_or_label_to_mask
from nnunetv2.imageio.base_reader_writer import BaseReaderWriter

LabelOrRegion = Union[int, Tuple[int, ...]]
STATUSES = ("ok", "both_empty", "pred_empty", "ref_empty", "missing")
HD95_NEEDS_MONAI = "HD95 needs MONAI: pip install 'sam_nnunet[report]' (or monai>=1.3)"


class MonaiUnavailableError(ImportError):
    """MONAI, which measures HD95, cannot be imported."""


def require_monai() -> None:
    """Raise :class:`MonaiUnavailableError`, saying how to install it, unless MONAI's metrics can be imported."""
    try:
        import monai.metrics  # noqa: F401
    except ImportError as e:  # not installed, or installed against another torch
        raise MonaiUnavailableError(f"{HD95_NEEDS_MONAI}, or leave HD95 out with --no-hd95 ({e})") from e


@dataclass(frozen=True)
class ClassMetrics:
    """The metrics of one class (label or region) in one case."""

    dice: float
    hd95: float  # mm; NaN if both masks are empty (or HD95 is not measured), inf if exactly one is
    n_ref: int  # voxels of the class in the reference
    n_pred: int  # voxels of the class in the prediction
    status: str  # one of STATUSES


def hd95_mm(prediction: np.ndarray, reference: np.ndarray, spacing: Sequence[float]) -> float:
    """95th percentile symmetric Hausdorff distance (mm) between two non-empty boolean masks of the same shape.

    Args:
        prediction, reference: boolean arrays (any number of spatial axes, e.g. D x H x W).
        spacing: voxel size per axis of those arrays, in mm.
    """
    import torch
    from monai.metrics import compute_hausdorff_distance

    if prediction.shape != reference.shape or len(spacing) != prediction.ndim:
        raise ValueError(f"prediction {prediction.shape}, reference {reference.shape} and spacing {tuple(spacing)} "
                         f"must have the same shape / number of axes")
    if not prediction.any() or not reference.any():
        raise ValueError("hd95_mm needs two non-empty masks (see the module docstring for empty ones)")
    keep = [i for i, n in enumerate(prediction.shape) if n > 1]
    squeeze = tuple(i for i in range(prediction.ndim) if i not in keep)
    pred, ref = (torch.from_numpy(np.squeeze(m, axis=squeeze))[None, None] for m in (prediction, reference))
    with warnings.catch_warnings():  # MONAI 1.5+ warns about an argument its own code passes internally
        warnings.filterwarnings("ignore", message=".*always_return_as_numpy.*", category=FutureWarning)
        hd = compute_hausdorff_distance(pred, ref, include_background=True, percentile=95,
                                        spacing=[float(spacing[i]) for i in keep])
    return float(hd[0, 0])


def class_metrics(prediction: np.ndarray, reference: np.ndarray, dice: float, spacing: Sequence[float], *,
                  with_hd95: bool = True) -> ClassMetrics:
    """Apply the empty-mask rules to one class, given its masks and nnU-Net's Dice for it (unused if one is empty)."""
    n_ref, n_pred = int(reference.sum()), int(prediction.sum())
    if not n_ref and not n_pred:
        return ClassMetrics(math.nan, math.nan, 0, 0, "both_empty")
    if not n_ref or not n_pred:
        return ClassMetrics(0.0, math.inf if with_hd95 else math.nan, n_ref, n_pred,
                            "pred_empty" if n_ref else "ref_empty")
    hd95 = hd95_mm(prediction, reference, spacing) if with_hd95 else math.nan
    return ClassMetrics(float(dice), hd95, n_ref, n_pred, "ok")


def case_metrics(reference_file: str, prediction_file: Optional[str], reader: BaseReaderWriter,
                 labels_or_regions: Sequence[LabelOrRegion], ignore_label: Optional[int] = None, *,
                 with_hd95: bool = True) -> Dict[LabelOrRegion, ClassMetrics]:
    """Dice and HD95 of every class in one case; ``reader`` is nnU-Net's reader/writer for the file type.

    ``prediction_file`` None: the case has no prediction; it is scored as an empty one (status ``missing`` where
    the reference has the class). ``with_hd95`` False: HD95 is not measured (NaN) and MONAI is not needed.
    """
    ref, ref_props = reader.read_seg(reference_file)
    if prediction_file is None:
        dice, pred = None, np.zeros_like(ref)
    else:
        dice = compute_metrics(reference_file, prediction_file, reader, list(labels_or_regions), ignore_label)
        pred, _ = reader.read_seg(prediction_file)
    if ref.shape != pred.shape:
        raise ValueError(f"{prediction_file} has shape {pred.shape[1:]} but its reference {reference_file} has "
                         f"{ref.shape[1:]}; predictions must be in the reference's geometry")
    ref, pred = ref[0], pred[0]  # read_seg returns 1 x (D x) H x W
    keep = ref != ignore_label if ignore_label is not None else np.ones(ref.shape, dtype=bool)
    spacing = ref_props["spacing"]
    out = {}
    for r in labels_or_regions:
        m = class_metrics(region_or_label_to_mask(pred, r) & keep, region_or_label_to_mask(ref, r) & keep,
                          dice["metrics"][r]["Dice"] if dice else math.nan, spacing, with_hd95=with_hd95)
        out[r] = replace(m, status="missing") if prediction_file is None and m.status == "pred_empty" else m
    return out

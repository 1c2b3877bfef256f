"""``report``: its numbers against a direct recomputation (numpy Dice, MONAI HD95 on nibabel arrays in mm).

References are two real ACDC label volumes of the fixture (1.5 x 1.5 x 10 mm voxels), read straight from the raw
``labelsTr`` folder (whose ``dataset.json`` gives the labels and names). The predictions are perturbed copies
written here, chosen to hit every rule of ``sam_nnunet.evaluation.metrics``: shifted structures, a removed
structure (prediction empty), an identical case, a structure cut off the last slice (where the 10 mm spacing
matters), and a label 4 that the references never contain (both empty, or reference empty where a prediction has
it).
"""
import csv
import math

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.metrics import compute_hausdorff_distance

from sam_nnunet.cli import main

NAMES = {1: "RV", 2: "MLV", 3: "LVC"}
pytestmark = pytest.mark.filterwarnings("ignore:.*always_return_as_numpy:FutureWarning")  # MONAI's own call


def load(path):
    img = nib.load(str(path))
    return np.asarray(img.dataobj).astype(np.int16), img


def save_like(array, ref_img, path):
    nib.save(nib.Nifti1Image(array.astype(ref_img.get_data_dtype()), ref_img.affine, ref_img.header), str(path))


@pytest.fixture
def cases(acdc_preprocessed, tmp_path):
    """(reference folder, {method: prediction folder}, case names) for two real ACDC label volumes."""
    labels_tr = acdc_preprocessed["nnUNet_raw"] / "Dataset027_ACDC" / "labelsTr"
    refs = sorted(labels_tr.glob("*.nii.gz"))[:2]
    shifted, sliced = tmp_path / "shifted", tmp_path / "sliced"
    shifted.mkdir()
    sliced.mkdir()
    for i, ref in enumerate(refs):
        seg, img = load(ref)
        a = np.roll(seg, 2, axis=0)  # 2 voxels (3 mm) in-plane
        if i == 1:
            a[a == 1] = 0  # RV missed entirely
        save_like(a, img, shifted / ref.name)
        b = seg.copy()  # identical in case 0
        if i == 1:
            assert (seg[..., -1] == 3).any()
            b[..., -1][b[..., -1] == 3] = 0  # LVC cut off the last slice: its surface moves by 10 mm there
            b[tuple(np.argwhere(seg == 0)[:5].T)] = 4  # a label the reference does not have
        save_like(b, img, sliced / ref.name)
    return labels_tr, {"shifted": shifted, "sliced": sliced}, [r.name[: -len(".nii.gz")] for r in refs]


def direct(ref_path, pred_path, label, spacing=True):
    """(Dice, HD95) straight from the NIfTI files with nibabel, numpy and MONAI, empty-mask rules applied."""
    ref, img = load(ref_path)
    pred, _ = load(pred_path)
    r, p = ref == label, pred == label
    if not r.any() and not p.any():
        return math.nan, math.nan
    dice = 2 * (r & p).sum() / (r.sum() + p.sum())
    if not r.any() or not p.any():
        return dice, math.inf
    zooms = [float(z) for z in img.header.get_zooms()[:3]] if spacing else None
    hd = compute_hausdorff_distance(torch.from_numpy(p)[None, None], torch.from_numpy(r)[None, None],
                                    include_background=True, percentile=95, spacing=zooms)
    return dice, float(hd[0, 0])


def read_csv(path):
    return list(csv.DictReader(path.open()))


def stats(values):
    finite = [v for v in values if math.isfinite(v)]
    return np.mean(finite), (np.std(finite, ddof=1) if len(finite) > 1 else math.nan), len(finite)


def test_report_matches_direct_recomputation_with_two_methods(cases, tmp_path, capsys):
    gt, preds, names = cases
    out = tmp_path / "report"
    assert main(["report", "--gt", str(gt), "--pred", str(preds["shifted"]), "--pred2", str(preds["sliced"]),
                 "--names", "shifted", "sliced", "-o", str(out)]) == 0
    assert "evaluated 2 cases x 3 classes (8 references without prediction" in capsys.readouterr().out

    rows = read_csv(out / "per_case.csv")
    assert len(rows) == 2 * 2 * 3
    for row in rows:
        label = int(row["label"])
        assert row["class"] == NAMES[label]  # from the dataset.json next to labelsTr
        dice, hd95 = direct(gt / f"{row['case']}.nii.gz", preds[row["method"]] / f"{row['case']}.nii.gz", label)
        assert float(row["dice"]) == pytest.approx(dice, abs=1e-12)
        assert float(row["hd95_mm"]) == pytest.approx(hd95, rel=1e-5)
    by = {(r["method"], r["case"], r["class"]): r for r in rows}
    missed = by[("shifted", names[1], "RV")]
    assert (missed["status"], float(missed["dice"]), float(missed["hd95_mm"])) == ("pred_empty", 0.0, math.inf)
    same = by[("sliced", names[0], "LVC")]
    assert (same["status"], float(same["dice"]), float(same["hd95_mm"])) == ("ok", 1.0, 0.0)
    # the slice cut off is measured in mm across the 10 mm slices, not in voxels
    cut = by[("sliced", names[1], "LVC")]
    in_voxels = direct(gt / f"{names[1]}.nii.gz", preds["sliced"] / f"{names[1]}.nii.gz", 3, spacing=False)[1]
    assert float(cut["hd95_mm"]) == pytest.approx(10.0, rel=1e-5) and in_voxels == pytest.approx(1.0)

    summary = read_csv(out / "summary.csv")
    markdown = (out / "summary.md").read_text()
    for s in summary:
        group = [r for r in rows if r["method"] == s["method"] and (not s["label"] or r["label"] == s["label"])]
        for metric, column, digits in (("dice", "dice", 3), ("hd95", "hd95_mm", 2)):
            mean, std, n = stats([float(r[column]) for r in group])
            assert float(s[f"{metric}_mean"]) == pytest.approx(mean, rel=1e-9)
            assert float(s[f"{metric}_std"]) == pytest.approx(std, rel=1e-9, nan_ok=True)
            assert int(s[f"{metric}_n"]) == n
            if math.isfinite(std):
                assert f"{mean:.{digits}f} ± {std:.{digits}f}" in markdown
        assert int(s["pred_empty"]) == sum(r["status"] == "pred_empty" for r in group)
    overall = next(s for s in summary if s["method"] == "shifted" and s["class"] == "all classes")
    assert (int(overall["dice_n"]), int(overall["hd95_n"]), int(overall["pred_empty"])) == (6, 5, 1)
    assert "## shifted vs sliced" in markdown

    for name in ("boxplot_dice.png", "boxplot_hd95.png", "comparison.png"):
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_report_counts_absent_classes_with_explicit_labels(cases, tmp_path):
    """--labels 1 2 3 4: label 4 is in no reference; in one prediction only."""
    gt, preds, names = cases
    out = tmp_path / "report"
    assert main(["report", "--gt", str(gt), "--pred", str(preds["sliced"]), "-o", str(out),
                 "--labels", "1", "2", "3", "4", "--label-names", "RV", "MYO", "LV", "none"]) == 0
    rows = {(r["case"], r["class"]): r for r in read_csv(out / "per_case.csv")}
    both, ref_empty = rows[(names[0], "none")], rows[(names[1], "none")]
    assert both["status"] == "both_empty" and math.isnan(float(both["dice"])) and math.isnan(float(both["hd95_mm"]))
    assert (ref_empty["status"], float(ref_empty["dice"]), float(ref_empty["hd95_mm"])) == ("ref_empty", 0.0, math.inf)
    assert int(ref_empty["n_pred"]) == 5 and int(ref_empty["n_ref"]) == 0
    summary = {s["class"]: s for s in read_csv(out / "summary.csv")}
    none = summary["none"]
    assert (int(none["dice_n"]), int(none["hd95_n"]), int(none["both_empty"]), int(none["ref_empty"])) == (1, 0, 1, 1)
    assert float(none["dice_mean"]) == 0.0 and math.isnan(float(none["hd95_mean"]))
    assert "| none (4) | 0.000 | n/a | 2 | 1 | 1 |" in (out / "summary.md").read_text()
    assert not (out / "comparison.png").exists()  # one method: no comparison chart


def test_report_refuses_unmatched_cases(cases, tmp_path, capsys):
    gt, preds, names = cases
    (preds["sliced"] / f"{names[0]}.nii.gz").unlink()
    assert main(["report", "--gt", str(gt), "--pred", str(preds["shifted"]), "--pred2", str(preds["sliced"]),
                 "-o", str(tmp_path / "r")]) == 2
    assert "must predict the same cases" in capsys.readouterr().err
    stray = preds["shifted"] / "not_a_case.nii.gz"
    stray.write_bytes((preds["shifted"] / f"{names[1]}.nii.gz").read_bytes())
    assert main(["report", "--gt", str(gt), "--pred", str(preds["shifted"]), "-o", str(tmp_path / "r")]) == 2
    assert "have no reference" in capsys.readouterr().err

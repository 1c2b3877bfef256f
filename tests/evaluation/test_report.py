"""``report``: its numbers against a direct recomputation (numpy Dice, MONAI HD95 on nibabel arrays in mm).

References are two real ACDC label volumes of the fixture (1.5 x 1.5 x 10 mm voxels), read straight from the raw
``labelsTr`` folder (whose ``dataset.json`` gives the labels and names). The predictions are perturbed copies
written here, chosen to hit every rule of ``sam_nnunet.evaluation.metrics``: shifted structures, a removed
structure (prediction empty), an identical case, a structure cut off the last slice (where the 10 mm spacing
matters), and a label 4 that the references never contain (both empty, or reference empty where a prediction has
it).

The last tests cover references without a prediction (``--missing``) and a missing MONAI (``--no-hd95``).
"""
import csv
import math
import shutil
import sys

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


def direct(ref_path, pred_path, label, spacing=True, hd95=True):
    """(Dice, HD95) straight from the NIfTI files with nibabel, numpy and MONAI, empty-mask rules applied.

    ``pred_path`` None: an empty prediction; ``hd95`` False: HD95 NaN (MONAI is not called)."""
    ref, img = load(ref_path)
    pred = load(pred_path)[0] if pred_path else np.zeros_like(ref)
    r, p = ref == label, pred == label
    if not r.any() and not p.any():
        return math.nan, math.nan
    dice = 2 * (r & p).sum() / (r.sum() + p.sum())
    if not hd95:
        return dice, math.nan
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
    printed = capsys.readouterr().out
    for method in preds:
        assert f"{method}: evaluated 2 cases x 3 classes (8 reference cases without a prediction, not evaluated " \
               "(--missing skip)" in printed

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
        assert (s["unpredicted"], s["missing_mode"]) == ("8", "skip")  # 10 references in labelsTr, 2 predicted
    overall = next(s for s in summary if s["method"] == "shifted" and s["class"] == "all classes")
    assert (int(overall["dice_n"]), int(overall["hd95_n"]), int(overall["pred_empty"])) == (6, 5, 1)
    assert "## shifted vs sliced" in markdown
    assert markdown.count("(2 of 10 reference cases); 8 reference cases without a prediction, not evaluated") == 2

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
    assert "| none (4) | 0.000 | n/a | 2 | 1 | 1 | 8 skipped |" in (out / "summary.md").read_text()
    assert not (out / "comparison.png").exists()  # one method: no comparison chart


@pytest.mark.bad_input("report")
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


# ------------------------------------------------------------------------ references without a prediction
@pytest.fixture
def one_missing(cases, tmp_path):
    """(reference folder, predictions, case names, the one reference no folder predicts): the two references of
    ``cases`` and the next ACDC volume, copied with the dataset.json."""
    gt, preds, names = cases
    refs = sorted(gt.glob("*.nii.gz"))[:3]
    small = tmp_path / "three" / "labelsTr"
    small.mkdir(parents=True)
    shutil.copy(gt.parent / "dataset.json", small.parent)
    for ref in refs:
        shutil.copy(ref, small)
    assert [r.name[: -len(".nii.gz")] for r in refs[:2]] == names
    return small, preds, names, refs[2].name[: -len(".nii.gz")]


def test_report_states_unpredicted_references_by_default(one_missing, tmp_path, capsys):
    gt, preds, names, lacking = one_missing
    out = tmp_path / "report"
    assert main(["report", "--gt", str(gt), "--pred", str(preds["shifted"]), "-o", str(out)]) == 0
    note = "1 reference case without a prediction, not evaluated (--missing skip)"
    assert f"shifted: evaluated 2 cases x 3 classes ({note}" in capsys.readouterr().out
    markdown = (out / "summary.md").read_text()
    assert f"(2 of 3 reference cases); {note}" in markdown
    assert markdown.count(" | 1 skipped |") == 4  # every class and the pooled row
    assert {(s["unpredicted"], s["missing_mode"]) for s in read_csv(out / "summary.csv")} == {("1", "skip")}
    assert {r["case"] for r in read_csv(out / "per_case.csv")} == set(names)


@pytest.mark.faults
@pytest.mark.parametrize("option", [["--require-all"], ["--missing", "error"]])
@pytest.mark.bad_input("report")
def test_report_require_all_names_unpredicted_cases_and_writes_nothing(one_missing, tmp_path, capsys, option):
    gt, preds, names, lacking = one_missing
    out = tmp_path / "report"
    assert main(["report", "--gt", str(gt), "--pred", str(preds["shifted"]), "-o", str(out), *option]) == 2
    err = capsys.readouterr().err
    assert f"1 of 3 reference cases in {gt} have no prediction in {preds['shifted']}: {lacking}." in err
    assert "--missing zero" in err and "--missing skip" in err  # how to go on
    assert not out.exists()
    (gt / f"{lacking}.nii.gz").unlink()  # now every reference has a prediction
    assert main(["report", "--gt", str(gt), "--pred", str(preds["shifted"]), "-o", str(out), *option]) == 0
    assert "(2 of 2 reference cases); every reference has a prediction" in (out / "summary.md").read_text()


def test_report_missing_zero_scores_unpredicted_cases_as_empty(one_missing, tmp_path):
    """Two methods lacking different cases; the means are the hand-computed ones with Dice 0 for each missing
    structure, and equal those of a real empty prediction file."""
    gt, preds, names, lacking = one_missing
    (preds["sliced"] / f"{names[1]}.nii.gz").unlink()
    unpredicted = {"shifted": {lacking}, "sliced": {lacking, names[1]}}
    out = tmp_path / "report"
    assert main(["report", "--gt", str(gt), "--pred", str(preds["shifted"]), "--pred2", str(preds["sliced"]),
                 "--names", "shifted", "sliced", "-o", str(out), "--missing", "zero"]) == 0
    rows = {(r["method"], r["case"], r["class"]): r for r in read_csv(out / "per_case.csv")}
    summary = {(s["method"], s["class"]): s for s in read_csv(out / "summary.csv")}
    assert len(rows) == 2 * 3 * 3
    for method, absent in unpredicted.items():
        for label, name in NAMES.items():
            dice = []
            for case in names + [lacking]:
                pred = None if case in absent else preds[method] / f"{case}.nii.gz"
                dice.append(direct(gt / f"{case}.nii.gz", pred, label)[0])
                if case in absent:
                    row = rows[(method, case, name)]
                    in_reference = (load(gt / f"{case}.nii.gz")[0] == label).any()
                    assert (row["status"], row["n_pred"]) == ("missing" if in_reference else "both_empty", "0")
                    assert float(row["dice"]) == pytest.approx(0.0 if in_reference else math.nan, nan_ok=True)
            s = summary[(method, name)]
            assert float(s["dice_mean"]) == pytest.approx(stats(dice)[0], rel=1e-9)
            assert (int(s["cases"]), int(s["unpredicted"]), s["missing_mode"]) == (3, len(absent), "zero")
    assert int(summary[("sliced", "all classes")]["missing"]) > int(summary[("shifted", "all classes")]["missing"]) > 0
    markdown = (out / "summary.md").read_text()
    assert "(2 of 3 reference cases); 1 reference case without a prediction, scored as empty" in markdown
    assert "(1 of 3 reference cases); 2 reference cases without a prediction, scored as empty" in markdown
    assert "References without a prediction: shifted 1, sliced 2 (--missing zero)." in markdown

    # the same as an empty prediction file for the case
    empty = tmp_path / "empty_file"
    shutil.copytree(preds["shifted"], empty)
    seg, img = load(gt / f"{lacking}.nii.gz")
    save_like(np.zeros_like(seg), img, empty / f"{lacking}.nii.gz")
    assert main(["report", "--gt", str(gt), "--pred", str(empty), "--names", "shifted", "-o", str(tmp_path / "e")]) == 0
    for s in read_csv(tmp_path / "e" / "summary.csv"):
        zero = summary[("shifted", s["class"])]
        for column in ("dice_mean", "dice_std", "dice_n", "hd95_mean", "hd95_std", "hd95_n", "both_empty"):
            assert float(s[column]) == pytest.approx(float(zero[column]), rel=1e-12, nan_ok=True)
        assert int(s["pred_empty"]) == int(zero["pred_empty"]) + int(zero["missing"])


# ------------------------------------------------------------------------ MONAI is optional
@pytest.fixture
def without_monai(monkeypatch):
    """MONAI unimportable, as in an install without the ``report`` extra."""
    for name in ["monai"] + [m for m in sys.modules if m.startswith("monai.")]:
        monkeypatch.setitem(sys.modules, name, None)


@pytest.mark.faults
@pytest.mark.bad_input("report")
def test_report_without_monai_stops_before_writing(cases, tmp_path, capsys, without_monai):
    gt, preds, names = cases
    out = tmp_path / "report"
    assert main(["report", "--gt", str(gt), "--pred", str(preds["shifted"]), "-o", str(out)]) == 2
    printed = capsys.readouterr()
    assert "HD95 needs MONAI: pip install 'sam_nnunet[report]' (or monai>=1.3)" in printed.err
    assert "--no-hd95" in printed.err
    assert "evaluated" not in printed.out and not out.exists()


def test_report_no_hd95_measures_dice_without_monai(cases, tmp_path, without_monai):
    gt, preds, names = cases
    out = tmp_path / "report"
    assert main(["report", "--gt", str(gt), "--pred", str(preds["shifted"]), "--pred2", str(preds["sliced"]),
                 "--names", "shifted", "sliced", "-o", str(out), "--no-hd95"]) == 0
    rows = read_csv(out / "per_case.csv")
    assert len(rows) == 2 * 2 * 3
    for row in rows:
        path = preds[row["method"]] / f"{row['case']}.nii.gz"
        dice = direct(gt / f"{row['case']}.nii.gz", path, int(row["label"]), hd95=False)[0]
        assert float(row["dice"]) == pytest.approx(dice, abs=1e-12)
        assert math.isnan(float(row["hd95_mm"]))
    assert "HD95: not measured (`--no-hd95`)" in (out / "summary.md").read_text()
    assert sorted(p.name for p in out.iterdir()) == ["boxplot_dice.png", "per_case.csv", "summary.csv", "summary.md"]


@pytest.mark.faults
@pytest.mark.bad_input("report")
def test_a_report_is_never_overwritten_unless_asked_and_then_leaves_no_stale_file(cases, tmp_path, capsys):
    gt, preds, names = cases
    out = tmp_path / "report"
    both = ["--pred", str(preds["shifted"]), "--pred2", str(preds["sliced"]), "--names", "shifted", "sliced"]
    assert main(["report", "--gt", str(gt), *both, "-o", str(out)]) == 0
    assert (out / "comparison.png").is_file()
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    one = ["--pred", str(preds["sliced"]), "--names", "sliced"]
    assert main(["report", "--gt", str(gt), *one, "-o", str(out)]) == 2
    assert f"{out} holds a report already (boxplot_dice.png, boxplot_hd95.png, comparison.png, per_case.csv" in \
        capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # untouched
    assert main(["report", "--gt", str(gt), *one, "-o", str(out), "--overwrite"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["boxplot_dice.png", "boxplot_hd95.png", "per_case.csv",
                                                     "summary.csv", "summary.md"]  # no comparison of one method
    assert {r["method"] for r in read_csv(out / "per_case.csv")} == {"sliced"}

"""Aggregation over cases (LiTS per-case and global measures, what users see) and the evaluate command: file
matching, reports and CLI."""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math

import numpy as np
import pytest
import SimpleITK as sitk

from LiverTumorSegLib.errors import LiverTumorSegError
from LiverTumorSegLib.labels import LIVER, TUMOR
from LiverTumorSegLib.phantom import make_phantom
from LiverTumorSegLib.segfile import write_seg_nrrd
from LiverTumorSegTrainLib.evaluate import add_parser, case_id, evaluate_folders, match_cases
from LiverTumorSegTrainLib.metrics import (
    case_metrics,
)
from LiverTumorSegTrainLib.summary import aggregate, aggregate_groups, targets_markdown

from conftest import PHANTOM_SPACING, label_image

ANISO = (2.5, 0.8, 0.7)  # (z, y, x) mm




# ----------------------------------------------------------------------------------------------------
# aggregate
# ----------------------------------------------------------------------------------------------------

def test_aggregate_pools_global_dice_and_follows_lits_conventions(phantom_pair):
    pred, ref = phantom_pair
    shape, spacing = (30, 64, 72), PHANTOM_SPACING
    _, tumor_free = make_phantom(shape_zyx=shape, spacing_zyx=spacing, seed=3, n_lesions=0)
    _, with_lesion = make_phantom(shape_zyx=shape, spacing_zyx=spacing, seed=3, lesion_diameters_mm=(14.0,))
    pairs = [(pred, ref), (ref, ref), (tumor_free, tumor_free), (with_lesion, tumor_free)]
    per_case = [case_metrics(p, g) for p, g in pairs]
    agg = aggregate(per_case)
    assert agg["n_cases"] == 4

    tp = sz = 0
    dices = []
    for p_img, g_img in pairs:
        p, g = sitk.GetArrayFromImage(p_img) == 2, sitk.GetArrayFromImage(g_img) == 2
        tp += np.count_nonzero(p & g)
        sz += np.count_nonzero(p) + np.count_nonzero(g)
        s = np.count_nonzero(p) + np.count_nonzero(g)
        dices.append(1.0 if s == 0 else 2 * np.count_nonzero(p & g) / s)
    tumor = agg["structures"]["tumor"]
    assert tumor["dice_global"] == pytest.approx(2 * tp / sz)
    assert tumor["dice_per_case"] == pytest.approx(np.mean(dices))
    assert dices[2] == 1.0 and dices[3] == 0.0  # tumour-free: 1 if predicted empty, 0 otherwise
    assert tumor["metrics"]["dice"]["sd"] == pytest.approx(np.std(dices, ddof=1))
    assert tumor["metrics"]["dice"]["median"] == pytest.approx(np.median(dices))
    assert (tumor["n_ref_empty"], tumor["n_false_positive_cases"], tumor["n_missed_cases"]) == (2, 1, 0)
    # Surface distances of the false-positive case are undefined: left out and counted, not scored 0.
    assd = tumor["metrics"]["assd"]
    assert assd["n"] == 3 and assd["n_excluded"] == 1
    assert assd["mean"] == pytest.approx(np.mean([c["structures"]["tumor"]["assd"] for c in per_case[:3]]))

    les = agg["lesions"]
    assert les["n_ref"] == 3 + 3 and les["n_pred"] == 2 + 3 + 0 + 1
    tp0 = per_case[0]["lesions"][">0"]["tp"] + 3
    assert les[">0"]["recall"] == pytest.approx(tp0 / 6)
    tp_pred = per_case[0]["lesions"][">0.5"]["tp_pred"] + 3
    assert les[">0.5"]["precision"] == pytest.approx(tp_pred / 6)
    assert les[">0.5"]["fp"] == 6 - tp_pred
    assert sum(les["by_size"][c]["n"] for c in ("small", "medium", "large")) == 6
    # Reference lesions 8, 14, 26 mm (twice): the perfect case 1 detects one of each class at both thresholds.
    assert [les["by_size"][c]["n"] for c in ("small", "medium", "large")] == [2, 2, 2]
    for c in ("small", "medium", "large"):
        case0 = per_case[0]["lesions"]["lesions"]
        hits = sum(lesion["size"] == c and lesion["detected"][">0.5"] for lesion in case0) + 1
        assert les["by_size"][c][">0.5"] == {"detected": hits, "recall": pytest.approx(hits / 2)}


def test_what_users_see_organ_outside_the_liver_false_lesions_and_tumour_outside_the_predicted_liver():
    """A 'spleen' labelled liver (with a 'tumour' in it) next to a correct liver: the organ volume outside the
    reference, the tumour outside the predicted liver, false lesions per scan and recall of lesions >= 10 mm."""
    spacing = (2.0, 1.0, 1.0)
    ref = np.zeros((20, 60, 80), np.uint8)
    ref[2:18, 5:45, 5:40] = 1
    ref[8:14, 15:30, 15:30] = 2  # 12 x 15 x 15 mm: >= 10 mm
    ref[4, 10:12, 10:12] = 2  # 2 x 2 x 2 mm: small, missed
    pred = ref.copy()
    pred[4, 10:12, 10:12] = 1
    pred[5:10, 10:30, 50:70] = 1  # a second organ: 5 x 20 x 20 voxels = 4 mL of "liver" that is not liver
    pred[6:8, 15:20, 55:60] = 2  # a "tumour" in it: outside the predicted liver (its largest component)
    pred[3, 40:42, 30:32] = 2  # a false lesion inside the liver
    case = {"case": "a", **case_metrics(label_image(pred, spacing), label_image(ref, spacing))}
    assert case["tumor_outside_pred_liver_ml"] == pytest.approx(2 * 5 * 5 * 2 / 1000)
    free = {"case": "b", **case_metrics(label_image(ref == 1, spacing), label_image(ref == 1, spacing))}  # tumour-free
    agg = aggregate([case, free])
    assert agg["structures"]["liver"]["outside_ref_ml"]["max"] == pytest.approx(5 * 20 * 20 * 2 / 1000)
    assert agg["structures"]["liver"]["outside_ref_ml"]["min"] == 0
    tumor = agg["structures"]["tumor"]
    assert tumor["dice_per_case_with_ref"] == pytest.approx(case["structures"]["tumor"]["dice"])
    assert tumor["dice_per_case"] == pytest.approx((case["structures"]["tumor"]["dice"] + 1) / 2)
    les = agg["lesions"]
    assert les["recall_10mm_plus"] == {"n": 1, ">0": 1.0, ">0.5": 1.0}
    assert les[">0"]["recall"] == 0.5
    assert (les["false_per_scan"]["max"], les["false_per_scan"]["median"]) == (2, 1)
    assert agg["tumor_outside_pred_liver_ml"]["total"] == pytest.approx(0.1)

    by_group = aggregate_groups([case, free], {"a": "source-1", "b": "source-2"})
    assert list(by_group) == ["source-1", "source-2"] and by_group["source-2"]["n_cases"] == 1
    table = targets_markdown({"all": agg, **by_group}).splitlines()
    assert len(table) == 5 and table[2].startswith("| all | 2 | ") and table[4].startswith("| source-2 | 1 | 1.000 |")


def test_aggregate_of_empty_masks_only():
    empty = label_image(np.zeros((8, 16, 16)))
    agg = aggregate([case_metrics(empty, empty)])
    assert agg["structures"]["liver"]["dice_global"] == 1.0
    assert math.isnan(agg["lesions"][">0"]["recall"]) and math.isnan(agg["lesions"][">0"]["precision"])


# ----------------------------------------------------------------------------------------------------
# evaluate: matching, reports, CLI
# ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,expected", [
    ("volume-3.labels.nii.gz", "3"), ("segmentation-3.nii", "3"), ("volume-3.nii", "3"), ("3.seg.nrrd", "3"),
    ("case7_gt.nii.gz", "case7"), ("case7_seg.mha", "case7"), ("case7_Labels.nrrd", "case7"),
    ("case7_truth.nii", "case7"), ("case7_label.nii.gz", "case7"), ("liver_7.nii.gz", "liver_7"),
    ("hepaticvessel_12.nii.gz", "hepaticvessel_12"), ("volume-3.report.json", None), ("._liver_7.nii.gz", None),
])
def test_case_id(name, expected):
    assert case_id(name) == expected


def test_match_cases_prefers_label_maps(tmp_path, caplog):
    pred, ref = tmp_path / "pred", tmp_path / "ref"
    pred.mkdir(), ref.mkdir()
    for name in ("volume-0.labels.nii.gz", "volume-0.seg.nrrd", "volume-0.report.json", "volume-1.seg.nrrd",
                 "volume-5.labels.nii.gz"):
        (pred / name).write_bytes(b"")
    for name in ("segmentation-0.nii", "volume-0.nii", "segmentation-1.nii", "segmentation-2.nii"):
        (ref / name).write_bytes(b"")
    with caplog.at_level(logging.WARNING, logger="livertumorseg"):
        pairs = match_cases(pred, ref)
    assert [(c, p.name, r.name) for c, p, r in pairs] == [
        ("0", "volume-0.labels.nii.gz", "segmentation-0.nii"), ("1", "volume-1.seg.nrrd", "segmentation-1.nii")]
    text = caplog.text
    assert "volume-5.labels.nii.gz has no reference" in text and "segmentation-2.nii has no prediction" in text
    (pred / "volume-1_seg.nii.gz").write_bytes(b"")
    (pred / "volume-1.labels.nii.gz").write_bytes(b"")
    with pytest.raises(LiverTumorSegError, match="all give case id '1'"):
        match_cases(pred, ref)
    with pytest.raises(LiverTumorSegError, match="no prediction"):
        match_cases(pred / "volume-5.labels.nii.gz", ref)


def _write(img: sitk.Image, path) -> None:
    sitk.WriteImage(img, str(path))


@pytest.fixture()
def lits_folders(tmp_path):
    """LiTS-style reference folder and our-style prediction folder with 4 cases, one on the wrong grid."""
    shape, spacing = (20, 48, 48), (3.0, 2.5, 2.5)
    ref_dir, pred_dir = tmp_path / "ref", tmp_path / "pred"
    ref_dir.mkdir(), pred_dir.mkdir()
    refs, preds = [], []
    for i in range(4):
        ct, ref = make_phantom(shape_zyx=shape, spacing_zyx=spacing, seed=10 + i, lesion_diameters_mm=(12.0, 18.0))
        _, pred = make_phantom(shape_zyx=shape, spacing_zyx=spacing, seed=10 + i, lesion_diameters_mm=(12.0,))
        _write(ref, ref_dir / f"segmentation-{i}.nii")
        refs.append(ref)
        preds.append(pred)
    _write(ct, ref_dir / "volume-3.nii")  # a CT in the reference folder must not be taken for labels
    _write(preds[0], pred_dir / "volume-0.labels.nii.gz")
    write_seg_nrrd(preds[0], [LIVER, TUMOR], pred_dir / "volume-0.seg.nrrd")  # skipped: labels exist
    (pred_dir / "volume-0.report.json").write_text("{}", encoding="utf-8")
    _write(preds[1], pred_dir / "volume-1.labels.nii.gz")
    bad = sitk.Image(preds[2])
    bad.SetSpacing([s * 1.5 for s in preds[2].GetSpacing()])
    _write(bad, pred_dir / "volume-2.labels.nii.gz")
    write_seg_nrrd(preds[3], [LIVER, TUMOR], pred_dir / "volume-3.seg.nrrd")  # only a .seg.nrrd: read by name
    return pred_dir, ref_dir, preds, refs


def test_evaluate_folders_end_to_end(lits_folders, tmp_path):
    pred_dir, ref_dir, preds, refs = lits_folders
    prefix = tmp_path / "out" / "report"
    agg = evaluate_folders(pred_dir, ref_dir, prefix, progress=False)
    assert agg["n_cases"] == 3
    assert [f["case"] for f in agg["failures"]] == ["2"]
    assert agg["failures"][0]["error"].startswith("prediction and reference grids differ: spacing")
    assert "\n" not in agg["failures"][0]["error"]

    direct = aggregate([case_metrics(preds[i], refs[i]) for i in (0, 1, 3)])
    assert agg["structures"]["liver"]["dice_global"] == pytest.approx(direct["structures"]["liver"]["dice_global"])
    assert agg["structures"]["tumor"]["dice_per_case"] == pytest.approx(direct["structures"]["tumor"]["dice_per_case"])
    assert agg["lesions"][">0"] == direct["lesions"][">0"]

    with open(f"{prefix}.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 * 2 + 1
    row = next(r for r in rows if r["case"] == "3" and r["structure"] == "tumor")
    assert row["prediction"].endswith("volume-3.seg.nrrd") and row["reference"].endswith("segmentation-3.nii")
    assert float(row["dice"]) == pytest.approx(case_metrics(preds[3], refs[3])["structures"]["tumor"]["dice"])
    assert row["lesions_ref"] == "2" and row["lesions_pred"] == "1"
    assert next(r for r in rows if r["case"] == "2")["error"].startswith("prediction and reference grids differ")
    report = json.loads(open(f"{prefix}.json", encoding="utf-8").read())
    assert len(report["cases"]) == 3 and report["failures"][0]["case"] == "2"
    assert report["aggregate"]["structures"]["liver"]["dice_global"] == pytest.approx(
        agg["structures"]["liver"]["dice_global"])
    md = open(f"{prefix}.md", encoding="utf-8").read()
    assert "| liver |" in md and "Lesion detection" in md and "## Per case" in md and "| >0.5 |" in md

    with pytest.raises(LiverTumorSegError, match="--overwrite"):
        evaluate_folders(pred_dir, ref_dir, prefix, progress=False)
    evaluate_folders(pred_dir, ref_dir, prefix, overwrite=True, progress=False)
    assert sorted(p.name for p in prefix.parent.iterdir()) == ["report.csv", "report.json", "report.md"]


def _cli(argv):
    parser = argparse.ArgumentParser(prog="livertumorseg")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_evaluate_cli(lits_folders, tmp_path, capsys):
    pred_dir, ref_dir, preds, refs = lits_folders
    prefix = tmp_path / "cli"
    assert _cli(["evaluate", str(pred_dir), str(ref_dir), "-o", str(prefix), "--quiet"]) == 1
    out, err = capsys.readouterr()
    assert out.startswith("# Evaluation: 3 case(s), 1 failed") and "| tumor |" in out
    errors = [line for line in err.splitlines() if line.startswith("livertumorseg: error:")]
    assert len(errors) == 1 and errors[0].startswith("livertumorseg: error: 2: prediction and reference grids differ")

    assert _cli(["evaluate", str(pred_dir), str(ref_dir), "-o", str(prefix), "--quiet"]) == 1
    assert "--overwrite" in capsys.readouterr().err
    assert _cli(["evaluate", str(pred_dir), str(ref_dir), "-o", str(prefix), "--overwrite", "--quiet"]) == 1

    capsys.readouterr()
    # Single files, a custom structure list: exit 0, nothing written without -o.
    code = _cli(["evaluate", str(pred_dir / "volume-1.labels.nii.gz"), str(ref_dir / "segmentation-1.nii"),
                 "--structure", "liver=1,2", "--quiet"])
    out = capsys.readouterr().out
    assert code == 0 and "| liver |" in out and "tumor" not in out
    with pytest.raises(SystemExit):
        _cli(["evaluate", str(pred_dir), str(ref_dir), "--structure", "liver"])

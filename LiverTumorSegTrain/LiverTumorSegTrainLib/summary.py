"""Aggregation of per-case metrics over a set of cases, and the figures a reader decides trust on.

Beyond the LiTS kit's means, a user judges a liver/tumour model by what goes wrong where they can see it:
organ predicted outside the real liver (spleen, kidney, stomach labelled liver), false lesions per scan,
tumour outside the predicted liver, and whether the lesions that matter (10 mm and more) are found.
Every such figure is computed here from :func:`metrics.case_metrics` results, for all cases or for any
subset (one source, one hospital), so tables per source and totals come from the same code.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np

from .metrics import DETECTION_THRESHOLDS, OVERLAP_METRICS, SIZE_CLASSES, SURFACE_METRICS, threshold_key

__all__ = ["aggregate", "aggregate_groups", "targets_markdown"]


def _summary(values: Sequence[float]) -> dict:
    """Mean, median, sample SD (ddof 1; 0 for one value), count; NaNs left out and counted."""
    arr = np.asarray(values, dtype=float)
    finite = arr[~np.isnan(arr)]
    n = int(finite.size)
    if n == 0:
        return {"mean": math.nan, "median": math.nan, "sd": math.nan, "min": math.nan, "max": math.nan,
                "n": 0, "n_excluded": int(arr.size)}
    return {"mean": float(finite.mean()), "median": float(np.median(finite)),
            "sd": float(finite.std(ddof=1)) if n > 1 else 0.0, "min": float(finite.min()),
            "max": float(finite.max()), "n": n, "n_excluded": int(arr.size - n)}


def _ratio(num: float, den: float) -> float:
    return num / den if den else math.nan


def _voxel_ml(case: dict) -> float:
    return float(np.prod(case["spacing_zyx"])) / 1000.0 if "spacing_zyx" in case else math.nan


def aggregate(per_case: Sequence[dict]) -> dict:
    """Summaries over cases, as the LiTS kit reports them, from :func:`case_metrics` results.

    Per structure (``structures[name]``):
    - ``metrics[m]``: mean, median, sd (sample, ddof 1), min, max and ``n`` over cases for every overlap
      and surface metric; NaN values (surface distances with exactly one empty mask, RVD with an empty
      denominator) are left out and counted in ``n_excluded``;
    - ``dice_per_case``: mean of per-case Dice (LiTS "Dice per case"); ``dice_global``: 2·Σtp/(Σ|P|+Σ|G|)
      pooled over all cases (LiTS "Dice global"; 1 if every mask is empty), which weights big
      structures more; ``dice_per_case_with_ref``: the per-case mean over cases whose reference is not
      empty (tumour-bearing cases for tumour);
    - ``outside_ref_ml``: summary over cases of the predicted volume outside the reference (mL): for the
      liver, what was labelled liver that is not liver;
    - case counts: ``n_ref_empty`` (reference empty, e.g. tumour-free livers), ``n_false_positive_cases``
      (reference empty, prediction not), ``n_missed_cases`` (prediction empty, reference not).
    Tumour-free reference cases follow the LiTS per-case convention: Dice 1 when the prediction is empty
    too, else 0 (see :func:`overlap`); both enter the per-case mean, and their voxels enter global Dice.

    ``lesions`` (when cases have lesion detection): counts pooled over cases; per threshold key,
    ``recall`` = Σtp / Σn_ref and ``precision`` = Σtp_pred / Σn_pred (NaN when the denominator is 0);
    ``by_size[class]``: number of reference lesions and recall per threshold for small/medium/large;
    ``recall_10mm_plus``: recall per threshold over medium and large lesions together (10 mm and more);
    ``false_per_scan``: summary over cases of the false-positive components per scan at any overlap.
    ``tumor_outside_pred_liver_ml``: summary over cases of tumour predicted outside the predicted liver.
    """
    result: dict = {"n_cases": len(per_case), "structures": {}}
    names: list[str] = []
    for case in per_case:
        names.extend(n for n in case.get("structures", {}) if n not in names)
    for name in names:
        cases = [c for c in per_case if name in c.get("structures", {})]
        rows = [c["structures"][name] for c in cases]
        metrics = {m: _summary([r[m] for r in rows]) for m in (*OVERLAP_METRICS, *SURFACE_METRICS)}
        sums = {k: int(sum(r[k] for r in rows)) for k in ("tp", "fp", "fn", "n_pred", "n_ref")}
        den = sums["n_pred"] + sums["n_ref"]
        with_ref = [r["dice"] for r in rows if r["n_ref"] > 0]
        result["structures"][name] = {
            "n_cases": len(rows),
            "dice_per_case": metrics["dice"]["mean"],
            "dice_global": 2.0 * sums["tp"] / den if den else 1.0,
            "dice_per_case_with_ref": float(np.mean(with_ref)) if with_ref else math.nan,
            "metrics": metrics,
            "totals": sums,
            "outside_ref_ml": _summary([r["fp"] * _voxel_ml(c) for r, c in zip(rows, cases)]),
            "n_ref_empty": sum(1 for r in rows if r["n_ref"] == 0),
            "n_false_positive_cases": sum(1 for r in rows if r["n_ref"] == 0 and r["n_pred"] > 0),
            "n_missed_cases": sum(1 for r in rows if r["n_pred"] == 0 and r["n_ref"] > 0),
        }
    outside = [c["tumor_outside_pred_liver_ml"] for c in per_case if "tumor_outside_pred_liver_ml" in c]
    if outside:
        result["tumor_outside_pred_liver_ml"] = {**_summary(outside), "total": float(sum(outside))}

    detections = [c["lesions"] for c in per_case if "lesions" in c]
    if detections:
        keys = [threshold_key(t) for t in DETECTION_THRESHOLDS]
        n_ref = sum(d["n_ref"] for d in detections)
        n_pred = sum(d["n_pred"] for d in detections)
        lesions: dict = {"n_cases": len(detections), "n_ref": n_ref, "n_pred": n_pred}
        for k in keys:
            tp = sum(d[k]["tp"] for d in detections)
            tp_pred = sum(d[k]["tp_pred"] for d in detections)
            lesions[k] = {"tp": tp, "fn": n_ref - tp, "tp_pred": tp_pred, "fp": n_pred - tp_pred,
                          "recall": _ratio(tp, n_ref), "precision": _ratio(tp_pred, n_pred)}
        all_lesions = [lesion for d in detections for lesion in d["lesions"]]
        by_size = {}
        for cls in SIZE_CLASSES:
            members = [lesion for lesion in all_lesions if lesion["size"] == cls]
            entry: dict = {"n": len(members)}
            for k in keys:
                hits = sum(1 for lesion in members if lesion["detected"][k])
                entry[k] = {"detected": hits, "recall": _ratio(hits, len(members))}
            by_size[cls] = entry
        lesions["by_size"] = by_size
        big = [lesion for lesion in all_lesions if lesion["size"] != "small"]
        lesions["recall_10mm_plus"] = {"n": len(big), **{
            k: _ratio(sum(1 for lesion in big if lesion["detected"][k]), len(big)) for k in keys}}
        lesions["false_per_scan"] = _summary([d[keys[0]]["fp"] for d in detections])
        result["lesions"] = lesions
    return result


def aggregate_groups(per_case: Sequence[dict], group_of: Mapping[str, str]) -> dict[str, dict]:
    """``aggregate`` of each group's cases (e.g. one per data source), keyed by group, in sorted order;
    cases not in ``group_of`` form no group."""
    groups = sorted({group_of[c["case"]] for c in per_case if c.get("case") in group_of})
    return {g: aggregate([c for c in per_case if group_of.get(c.get("case")) == g]) for g in groups}


def _num(v: float | None, digits: int = 3) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def targets_markdown(aggregates: Mapping[str, dict]) -> str:
    """One row per set of cases (a source, or all) with the figures users judge a liver/tumour model by."""
    head = ["cases", "n", "liver Dice per case", "liver Dice min", "liver outside reference, median mL",
            "tumour Dice global", "tumour Dice per case (with tumour)", "lesion recall ≥ 10 mm",
            "lesion precision", "false lesions per scan, median (mean)", "tumour outside predicted liver, mL"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for name, agg in aggregates.items():
        liver = agg["structures"].get("liver", {})
        tumor = agg["structures"].get("tumor", {})
        les = agg.get("lesions", {})
        fp = les.get("false_per_scan", {})
        outside = agg.get("tumor_outside_pred_liver_ml", {})
        key = threshold_key(DETECTION_THRESHOLDS[0])
        lines.append("| " + " | ".join([
            name, str(agg["n_cases"]), _num(liver.get("dice_per_case")),
            _num(liver.get("metrics", {}).get("dice", {}).get("min")),
            _num(liver.get("outside_ref_ml", {}).get("median"), 1), _num(tumor.get("dice_global")),
            _num(tumor.get("dice_per_case_with_ref")), _num(les.get("recall_10mm_plus", {}).get(key)),
            _num(les.get(key, {}).get("precision")),
            f"{_num(fp.get('median'), 1)} ({_num(fp.get('mean'), 1)})" if fp else "–",
            _num(outside.get("total"), 1)]) + " |")
    return "\n".join(lines) + "\n"

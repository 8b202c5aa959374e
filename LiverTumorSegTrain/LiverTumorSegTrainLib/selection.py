"""Which patients validate, and how a model is judged on them: patient-level splits (never through a patient group),
the valid-HU check of the training data, 3-D validation Dice through the real pipeline, the best-epoch score and
the calibration of lesion thresholds.

The best model is chosen by 3-D Dice computed by running the real inference pipeline on whole validation volumes:
the number a user will get, not a per-slice proxy (the REC-UNet authors selected checkpoints on per-slice scores of
a slice-level split that shared patients with training). Lesions are scored by global Dice (voxels pooled over the
validation cases): per-case lesion Dice scores a lesion-free case 1 when nothing is predicted, so an early model
that predicts no tumour at all used to win on folds with lesion-free patients.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from LiverTumorSegLib.errors import LiverTumorSegError
from LiverTumorSegLib.modelfile import SegmentationModel

from .config import TrainConfig
from .metrics import overlap


def split_cases(case_ids: list[str], cfg: TrainConfig, groups: dict[str, str] | None = None
                ) -> tuple[list[str], list[str]]:
    """Patient-level, seeded, k-fold split of case ids: never by slice, and never through a patient group.

    ``groups`` maps a case id to its patient group (repeat scans of one patient share one); a case absent
    from it is its own group, so data without groups splits exactly as before groups existed.
    """
    ids = sorted(case_ids)
    group_of = {i: (groups or {}).get(i) or i for i in ids}
    if cfg.val_cases:
        missing = sorted(set(cfg.val_cases) - set(ids))
        if missing:
            raise LiverTumorSegError(f"validation cases not found in the data: {', '.join(missing)}")
        val = set(cfg.val_cases)
        for i in ids:
            if i not in val and group_of[i] in {group_of[v] for v in val}:
                raise LiverTumorSegError(f"case {i} is in patient group {group_of[i]} with a validation case; "
                                         f"add it to --val-cases too (a patient is never in both sets)")
    elif cfg.folds >= 2:
        names = sorted(set(group_of.values()))
        if len(names) < cfg.folds:
            raise LiverTumorSegError(f"{len(names)} patient groups cannot make {cfg.folds} folds; "
                                     f"use --folds {len(names)} or fewer")
        order = np.random.default_rng(cfg.split_seed).permutation(len(names))
        val_groups = {names[i] for pos, i in enumerate(order) if pos % cfg.folds == cfg.fold}
        val = {i for i in ids if group_of[i] in val_groups}
    else:
        val = set()
    return [i for i in ids if i not in val], [i for i in ids if i in val]


def check_window_inside_valid_hu(window_hu: tuple[float, float], cases) -> None:
    """Refuse a window reaching outside the HU range some case really holds.

    A source stored clipped (LiTS-derived data holds only [-45, 160] HU: fat and air both read -45) would
    otherwise look different from the others wherever the window goes beyond its clip, and "fat reads -45"
    would tell the network which source a scan came from instead of what is in it.
    """
    lo, hi = window_hu
    for case in cases:
        if case.hu_valid is None:
            continue
        vlo, vhi = case.hu_valid
        if lo < vlo - 1e-6 or hi > vhi + 1e-6:
            raise LiverTumorSegError(
                f"case {case.case_id}: its HU are valid only in [{vlo:g}, {vhi:g}] (clipped at the source), but the "
                f"model's window is [{lo:g}, {hi:g}]; use a window inside that range, e.g. --window "
                f"{max(lo, vlo):g} {min(hi, vhi):g}")


def validate(model: SegmentationModel, val_data: list[tuple[str, Any, Any]], device: str,
             thresholds: tuple[float, ...] | None = None,
             lesion_values: tuple[int, ...] | None = None, lesion_floor: float = 0.0) -> dict[str, Any]:
    """3-D Dice per label through the real pipeline on whole volumes: per case (LiTS: empty/empty = 1)
    in ``dice``, pooled over cases in ``global_dice``.

    ``score`` (what selects the best epoch) averages the organs' per-case Dice and the lesions' global
    Dice. A lesion's global Dice below ``lesion_floor`` counts 0 there: on patients whose tumours the network
    has not learned, Dice wanders between 0.001 and 0.03 from epoch to epoch, and that noise outweighed real
    organ gains (IRCADb fold 2 kept epoch 20, liver 0.915, over epoch 70's 0.933). An organ includes the
    lesions in it; ``lesion_values`` are the reference's lesion values when the model has no lesion label of
    its own (a liver-only localiser trained on liver+tumour data).
    """
    return validate_thresholds(model, val_data, device, [thresholds], lesion_values, lesion_floor)[0]


def validate_thresholds(model: SegmentationModel, val_data: list[tuple[str, Any, Any]], device: str,
                        threshold_sets: list[tuple[float, ...] | None],
                        lesion_values: tuple[int, ...] | None = None,
                        lesion_floor: float = 0.0) -> list[dict[str, Any]]:
    """``validate`` for each tuple of ``threshold_sets`` (``None`` = the model's), one network pass per case."""
    import SimpleITK as sitk

    from LiverTumorSegLib.pipeline import segment_at_thresholds

    names = [s.name.lower() for s in model.config.labels]
    lesions = lesion_values if lesion_values is not None else \
        tuple(s.value for s in model.config.labels if s.role == "lesion")
    per_case = [{} for _ in threshold_sets]
    pooled = [{n: np.zeros(2, dtype=np.int64) for n in names} for _ in threshold_sets]  # |P∩G|, |P|+|G|
    for case_id, ct, ref in val_data:
        truth = sitk.GetArrayViewFromImage(ref)
        for k, labels in enumerate(segment_at_thresholds(ct, model, threshold_sets, device=device)):
            pred = sitk.GetArrayViewFromImage(labels)  # a view: ``labels`` stays alive while it is used
            scores = {}
            for spec, name in zip(model.config.labels, names):
                values = [spec.value] + (list(lesions) if spec.role == "organ" else [])
                o = overlap(np.isin(pred, values), np.isin(truth, values))
                scores[name] = o["dice"]
                pooled[k][name] += (o["tp"], o["n_pred"] + o["n_ref"])
            per_case[k][case_id] = scores
    results = []
    for cases, sums in zip(per_case, pooled):
        mean = {n: float(np.mean([c[n] for c in cases.values()])) for n in names}
        global_dice = {n: float(2 * tp / total) if total else 1.0 for n, (tp, total) in sums.items()}
        selection = [(global_dice[n] if global_dice[n] >= lesion_floor else 0.0) if s.role == "lesion" else mean[n]
                     for s, n in zip(model.config.labels, names)]
        results.append({"per_case": cases, "dice": mean, "global_dice": global_dice,
                        "score": float(np.mean(selection))})
    return results


def calibrate_thresholds(model: SegmentationModel, val_data: list[tuple[str, Any, Any]], device: str,
                         baseline: dict[str, Any],
                         candidates: tuple[float, ...] = (0.4, 0.3, 0.2, 0.6, 0.7, 0.8, 0.9),
                         lesion_values: tuple[int, ...] | None = None, lesion_floor: float = 0.0) -> dict[str, Any]:
    """Each lesion label's threshold maximising its global validation Dice (as epoch selection does: per-case
    Dice would favour thresholds that erase every lesion when lesion-free cases are in the set); organ
    thresholds stay at the model's values. Both directions are tried: small networks can be under-confident
    at lesion edges, and tumour oversampling makes them over-confident (the fast IRCADb model predicts 2-7x
    the tumour volume at 0.5). Ties keep the earlier candidate, so 0.5 stays unless another is strictly better.
    All candidates of a label share one network pass per case."""
    thresholds = list(model.config.thresholds)
    best = baseline
    for i, spec in enumerate(model.config.labels):
        if spec.role != "lesion":
            continue
        name = spec.name.lower()
        trials = [tuple(thresholds[:i] + [t] + thresholds[i + 1:]) for t in candidates]
        results = validate_thresholds(model, val_data, device, trials, lesion_values, lesion_floor)
        for trial, result in zip(trials, results):
            if result["global_dice"][name] > best["global_dice"][name] + 1e-4:
                thresholds, best = list(trial), result
    model.config.thresholds = tuple(thresholds)
    return best


def _val_metrics(result: dict[str, Any]) -> dict[str, Any]:
    """A validation result as the flat ``val_*`` entries of the training log and the model file's metrics."""
    return {**{f"val_dice_{k}": v for k, v in result["dice"].items()},
            **{f"val_global_dice_{k}": v for k, v in result["global_dice"].items()},
            "val_score": result["score"], "val_per_case": result["per_case"]}

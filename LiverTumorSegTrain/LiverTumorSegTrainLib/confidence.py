"""Calibrating the per-lesion keep-threshold on cross-validation predictions, without peeking.

A lesion's confidence is its mean tumour probability (what the pipeline's ``min_lesion_confidence`` acts on
and what the report shows). Which threshold is best can only be read off held-out predictions, and reading
it off the very patients it is then scored on flatters it. So the threshold for each fold is chosen on the
*other* folds' patients (a nested estimate), and the one chosen on all folds is what a model trained on all
the data should carry.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import SimpleITK as sitk

from LiverTumorSegLib.postprocess import component_confidence

#: keep-thresholds tried (0: keep every lesion, the pipeline's default)
CANDIDATES: tuple[float, ...] = (0.0, 0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)


@dataclass
class HeldOutCase:
    """One cross-validation prediction: which fold's model made it, its lesions and their confidence."""

    case_id: str
    fold: int
    #: per predicted lesion component: its confidence and its overlap with the reference tumour (voxels)
    confidence: np.ndarray
    overlap: np.ndarray
    size: np.ndarray
    ref_voxels: int


def held_out_case(case_id: str, fold: int, prediction: sitk.Image, probability: sitk.Image, reference: sitk.Image,
                  lesion_value: int = 2) -> HeldOutCase:
    """Components of the predicted lesion label, with what each would cost or gain if it were dropped."""
    pred = sitk.GetArrayViewFromImage(prediction) == lesion_value
    ref = sitk.GetArrayViewFromImage(reference) == lesion_value
    comp, confidence = component_confidence(pred, sitk.GetArrayViewFromImage(probability))
    n = confidence.size
    size = np.bincount(comp.ravel(), minlength=n)
    overlap = np.bincount(comp[ref].ravel(), minlength=n)
    return HeldOutCase(case_id, fold, confidence[1:], overlap[1:], size[1:], int(np.count_nonzero(ref)))


def tumour_dice(case: HeldOutCase, threshold: float) -> float:
    """Per-case tumour Dice after dropping the lesions below ``threshold`` (LiTS: empty/empty scores 1)."""
    keep = case.confidence >= threshold
    tp, pred = int(case.overlap[keep].sum()), int(case.size[keep].sum())
    total = pred + case.ref_voxels
    return 1.0 if total == 0 else 2.0 * tp / total


def best_threshold(cases: Sequence[HeldOutCase], candidates: Sequence[float] = CANDIDATES) -> float:
    """The candidate with the best mean per-case tumour Dice over ``cases`` (ties: the lower threshold, which
    keeps more lesions): per-case Dice is where false lesions hurt, tumour-free patients included."""
    scores = [float(np.mean([tumour_dice(c, t) for c in cases])) for t in candidates]
    return float(candidates[int(np.argmax(np.round(scores, 6)))])


def nested_thresholds(cases: Sequence[HeldOutCase], candidates: Sequence[float] = CANDIDATES) -> dict[int, float]:
    """For each fold, the threshold chosen on every other fold's cases."""
    folds = sorted({c.fold for c in cases})
    return {k: best_threshold([c for c in cases if c.fold != k], candidates) for k in folds}


def drop_unconfident(prediction: sitk.Image, probability: sitk.Image, threshold: float, organ_value: int = 1,
                     lesion_value: int = 2) -> sitk.Image:
    """The prediction with lesions below ``threshold`` relabelled as organ: what the pipeline would output with
    ``min_lesion_confidence=threshold`` (its filter is the same function, on the same components)."""
    labels = sitk.GetArrayFromImage(prediction)
    lesion = labels == lesion_value
    comp, confidence = component_confidence(lesion, sitk.GetArrayViewFromImage(probability))
    drop = confidence < threshold
    drop[0] = False
    labels[drop[comp]] = organ_value
    out = sitk.GetImageFromArray(labels)
    out.CopyInformation(prediction)
    return out

"""Calibrating the per-lesion keep rule on cross-validation predictions, without peeking.

A lesion is kept when its confidence (mean tumour probability: what the pipeline's ``min_lesion_confidence``
acts on and what the report shows) and its volume (``min_lesion_mm3``) reach the rule's thresholds. Which rule
is best can only be read off held-out predictions, and reading it off the very patients it is then scored on
flatters it. So the rule for each fold is chosen on the *other* folds' patients (a nested estimate), and the
one chosen on all folds is what a model trained on all the data should carry. Volumes are tried only up to
250 mm³ (a 7.8 mm sphere), so that no rule can erase a lesion of 10 mm or more.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import SimpleITK as sitk

from LiverTumorSegLib.postprocess import component_confidence

#: confidence thresholds tried (0: keep every lesion, the pipeline's default) and minimum volumes (mm³; 10: the
#: model files' default)
CONFIDENCES: tuple[float, ...] = (0.0, 0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)
VOLUMES_MM3: tuple[float, ...] = (10.0, 50.0, 100.0, 250.0)


@dataclass(frozen=True, order=True)
class KeepRule:
    """Keep a predicted lesion when its volume reaches ``min_mm3`` and its confidence ``min_confidence``."""

    min_mm3: float = 10.0
    min_confidence: float = 0.0


#: every rule tried, the most permissive first (ties keep it: a reader can delete a lesion, not find an erased one)
CANDIDATES: tuple[KeepRule, ...] = tuple(KeepRule(v, c) for v in VOLUMES_MM3 for c in CONFIDENCES)


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
    voxel_mm3: float = 1.0


def held_out_case(case_id: str, fold: int, prediction: sitk.Image, probability: sitk.Image, reference: sitk.Image,
                  lesion_value: int = 2) -> HeldOutCase:
    """Components of the predicted lesion label, with what each would cost or gain if it were dropped."""
    pred = sitk.GetArrayViewFromImage(prediction) == lesion_value
    ref = sitk.GetArrayViewFromImage(reference) == lesion_value
    comp, confidence = component_confidence(pred, sitk.GetArrayViewFromImage(probability))
    n = confidence.size
    size = np.bincount(comp.ravel(), minlength=n)
    overlap = np.bincount(comp[ref].ravel(), minlength=n)
    return HeldOutCase(case_id, fold, confidence[1:], overlap[1:], size[1:], int(np.count_nonzero(ref)),
                       float(np.prod(prediction.GetSpacing())))


def tumour_dice(case: HeldOutCase, rule: KeepRule) -> float:
    """Per-case tumour Dice after dropping the lesions the rule does not keep (LiTS: empty/empty scores 1)."""
    keep = (case.confidence >= rule.min_confidence) & (case.size * case.voxel_mm3 >= rule.min_mm3)
    tp, pred = int(case.overlap[keep].sum()), int(case.size[keep].sum())
    total = pred + case.ref_voxels
    return 1.0 if total == 0 else 2.0 * tp / total


def best_rule(cases: Sequence[HeldOutCase], candidates: Sequence[KeepRule] = CANDIDATES) -> KeepRule:
    """The candidate with the best mean per-case tumour Dice over ``cases`` (ties: the most permissive): per-case
    Dice is where false lesions hurt, tumour-free patients included."""
    scores = [float(np.mean([tumour_dice(c, rule) for c in cases])) for rule in candidates]
    return candidates[int(np.argmax(np.round(scores, 6)))]


def nested_rules(cases: Sequence[HeldOutCase], candidates: Sequence[KeepRule] = CANDIDATES) -> dict[int, KeepRule]:
    """For each fold, the rule chosen on every other fold's cases."""
    folds = sorted({c.fold for c in cases})
    return {k: best_rule([c for c in cases if c.fold != k], candidates) for k in folds}


def apply_rule(prediction: sitk.Image, probability: sitk.Image, rule: KeepRule, organ_value: int = 1,
               lesion_value: int = 2) -> sitk.Image:
    """The prediction with the lesions the rule drops relabelled as organ: what the pipeline outputs with
    ``min_lesion_mm3`` and ``min_lesion_confidence`` set to the rule (the same components, the same confidence)."""
    labels = sitk.GetArrayFromImage(prediction)
    lesion = labels == lesion_value
    comp, confidence = component_confidence(lesion, sitk.GetArrayViewFromImage(probability))
    size_mm3 = np.bincount(comp.ravel(), minlength=confidence.size) * float(np.prod(prediction.GetSpacing()))
    drop = (confidence < rule.min_confidence) | (size_mm3 < rule.min_mm3)
    drop[0] = False
    labels[drop[comp]] = organ_value
    out = sitk.GetImageFromArray(labels)
    out.CopyInformation(prediction)
    return out

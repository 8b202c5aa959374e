"""The per-lesion keep-threshold: calibrated on held-out predictions, nested over folds, applied like the pipeline."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from LiverTumorSegTrainLib.confidence import (
    best_threshold,
    drop_unconfident,
    held_out_case,
    nested_thresholds,
    tumour_dice,
)


def _img(a):
    return sitk.GetImageFromArray(np.ascontiguousarray(a, dtype=np.uint8))


def _case(confident_fp: bool):
    """A liver with one true tumour (probability 0.98) and one false one (0.98 if confident, else 0.55)."""
    ref = np.zeros((10, 30, 30), np.uint8)
    ref[1:9, 2:28, 2:28] = 1
    ref[3:6, 5:10, 5:10] = 2
    pred = ref.copy()
    pred[3:5, 20:24, 20:24] = 2
    prob = np.zeros_like(ref)
    prob[ref == 2] = 250
    prob[3:5, 20:24, 20:24] = 250 if confident_fp else 140
    return _img(pred), _img(prob), _img(ref)


def test_lesion_components_confidence_and_dice_after_dropping():
    case = held_out_case("a", 0, *_case(confident_fp=False))
    np.testing.assert_allclose(sorted(case.confidence), [140 / 255, 250 / 255])
    assert case.ref_voxels == 75 and sorted(case.size) == [32, 75]
    assert tumour_dice(case, 0.0) == 2 * 75 / (75 + 32 + 75)
    assert tumour_dice(case, 0.6) == 1.0  # the unconfident false lesion is gone
    pred, prob, ref = _case(confident_fp=False)
    dropped = sitk.GetArrayFromImage(drop_unconfident(pred, prob, 0.6))
    np.testing.assert_array_equal(dropped == 2, sitk.GetArrayFromImage(ref) == 2)
    assert np.array_equal(dropped > 0, sitk.GetArrayFromImage(pred) > 0)  # dropped lesions stay liver


def test_threshold_is_chosen_on_the_other_folds():
    """Fold 0's patients have unconfident false lesions, fold 1's confident ones: fold 1's threshold comes from
    fold 0 (a real cut), fold 0's from fold 1 (nothing to gain: the lowest threshold)."""
    cases = [held_out_case("a", 0, *_case(False)), held_out_case("b", 1, *_case(True))]
    assert best_threshold(cases[:1]) == 0.6 and best_threshold(cases[1:]) == 0.0
    assert nested_thresholds(cases) == {0: 0.0, 1: 0.6}

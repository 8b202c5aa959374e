"""The per-lesion keep-threshold: calibrated on held-out predictions, nested over folds, applied like the pipeline."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from LiverTumorSegTrainLib.confidence import KeepRule, apply_rule, best_rule, held_out_case, nested_rules, tumour_dice


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
    assert tumour_dice(case, KeepRule()) == 2 * 75 / (75 + 32 + 75)
    assert tumour_dice(case, KeepRule(10.0, 0.6)) == 1.0  # the unconfident false lesion is gone
    assert tumour_dice(case, KeepRule(50.0, 0.0)) == 1.0  # so it is when only lesions of 50 mm3 count (it has 32)
    pred, prob, ref = _case(confident_fp=False)
    dropped = sitk.GetArrayFromImage(apply_rule(pred, prob, KeepRule(10.0, 0.6)))
    np.testing.assert_array_equal(dropped == 2, sitk.GetArrayFromImage(ref) == 2)
    assert np.array_equal(dropped > 0, sitk.GetArrayFromImage(pred) > 0)  # dropped lesions stay liver


def test_threshold_is_chosen_on_the_other_folds():
    """Fold 0's patients have an unconfident small false lesion, fold 1's a confident one: fold 1's rule comes from
    fold 0 (the most permissive rule that drops it), fold 0's from fold 1 (also a size rule: the false lesion is small
    whatever its confidence)."""
    cases = [held_out_case("a", 0, *_case(False)), held_out_case("b", 1, *_case(True))]
    assert best_rule(cases[:1]) == KeepRule(10.0, 0.6) and best_rule(cases[1:]) == KeepRule(50.0, 0.0)
    assert nested_rules(cases) == {0: KeepRule(50.0, 0.0), 1: KeepRule(10.0, 0.6)}

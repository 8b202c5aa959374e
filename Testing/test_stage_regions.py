"""A later cascade stage trains and is validated on what it is given at inference: its liver's box grown by the
margin, masked outside the grown liver when the link asks for it."""

from __future__ import annotations

import json

import numpy as np
import SimpleITK as sitk

from LiverTumorSegLib.cascades import _grown_box, _grown_mask
from LiverTumorSegLib.phantom import make_phantom
from LiverTumorSegTrainLib.cache import prepare_cases
from LiverTumorSegTrainLib.datasets import find_cases
from LiverTumorSegTrainLib.stage_regions import StageRegion, crop_case_to_region, crop_to_region


def _phantom(seed=4):
    return make_phantom(shape_zyx=(20, 48, 56), spacing_zyx=(3.0, 2.0, 2.0), seed=seed, lesion_diameters_mm=(12.0,))


def test_arrays_are_cut_to_the_grown_box_and_masked_outside_the_grown_liver():
    ct, labels = _phantom()
    image, lab = sitk.GetArrayFromImage(ct), sitk.GetArrayFromImage(labels)
    region = StageRegion(margin_mm=6.0, mask_input=True, fill_hu=-100.0)
    cut_image, cut_labels = crop_to_region(image, lab, lab > 0, (3.0, 2.0, 2.0), region)
    zz, yy, xx = np.nonzero(lab)
    expected = [min(hi + m + 1, n) - max(lo - m, 0) for lo, hi, m, n in
                zip((zz.min(), yy.min(), xx.min()), (zz.max(), yy.max(), xx.max()), (2, 3, 3), lab.shape)]
    assert list(cut_image.shape) == expected and cut_labels.shape == cut_image.shape
    assert cut_labels.sum() == lab.sum()  # the whole liver is inside
    assert (cut_image == -100).any() and not (cut_image[cut_labels > 0] == -100).any()
    assert crop_to_region(image, lab, np.zeros_like(lab, bool), (3.0, 2.0, 2.0), region) is None


def test_validation_crops_are_exactly_the_crops_the_cascade_gives_the_stage():
    ct, labels = _phantom()
    region = StageRegion(margin_mm=8.0, mask_input=True, fill_hu=-100.0)
    got_ct, got_ref = crop_case_to_region(ct, labels, region)
    organ = sitk.GetArrayFromImage(labels) > 0
    box = _grown_box(organ, ct.GetSpacing(), region.margin_mm)  # what segment_cascade crops at inference
    assert list(got_ct.GetSize()) == [b - a for a, b in box]
    assert got_ct.GetOrigin() == ct.TransformIndexToPhysicalPoint([a for a, _ in box])
    assert got_ref.GetOrigin() == got_ct.GetOrigin()
    where = tuple(slice(a, b) for a, b in box[::-1])
    mask = _grown_mask(organ, ct.GetSpacing(), region.margin_mm)[where]
    expected = np.where(mask, sitk.GetArrayFromImage(ct)[where], -100)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(got_ct), expected)
    empty = sitk.Image(labels)
    empty *= 0
    assert crop_case_to_region(ct, empty, region) is None


def test_a_tumour_stage_trains_on_liver_crops_and_is_validated_on_them(tmp_path):
    from LiverTumorSegTrainLib.config import TrainConfig
    from LiverTumorSegTrainLib.trainer import Trainer, _Dist, train

    data = tmp_path / "data"
    data.mkdir()
    for seed in (4, 5):
        ct, labels = _phantom(seed)
        sitk.WriteImage(ct, str(data / f"p{seed}.nii.gz"))
        sitk.WriteImage(labels, str(data / f"p{seed}_truth.nii.gz"))
    cfg = TrainConfig(data=[str(data)], output=str(tmp_path / "run"), architecture="unet", base_width=4,
                      arch_args={"depth": 2}, context_slices=0, labels=["tumor"], spacing_mm=2.0, crop=32,
                      batch_size=2, epochs=1, steps_per_epoch=2, val_cases=["p5"], window_hu=(-100.0, 200.0),
                      stage_margin_mm=8.0, stage_mask_input=True, device="cpu", cache_dir=str(tmp_path / "cache"),
                      calibrate_thresholds=False)
    train(cfg, progress=False)
    log = json.loads((tmp_path / "run" / "log.json").read_text(encoding="utf-8"))
    records = log if isinstance(log, list) else log["epochs"]
    assert set(records[-1]["val_per_case"]) == {"p5"}  # validated, the masked crop not refused as non-CT
    *_, val_data = Trainer(cfg, resume=True, progress=False)._load_data(_Dist())
    (case_id, val_ct, val_ref), = val_data
    ct, labels = _phantom(5)
    want_ct, want_ref = crop_case_to_region(ct, labels, StageRegion(8.0, True, -100.0))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(val_ct), sitk.GetArrayFromImage(want_ct))
    assert val_ct.GetOrigin() == want_ct.GetOrigin() and val_ct.GetSize() != ct.GetSize()
    (cached,) = prepare_cases([c for c in find_cases(str(data)) if c.case_id == "p4"], tmp_path / "cache", 2.0,
                              (2,), region=StageRegion(8.0, True, -100.0))
    assert cached.image.shape[1] < 48 and cached.image.shape[2] < 56 and (cached.image == -100).any()

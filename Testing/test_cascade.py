"""Cascades: a model file holding ordered stages (localiser -> liver -> tumour), each run where the one before
found the organ; today's single-stage and localiser files still load and give the same labels."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from LiverTumorSegLib.labels import LIVER, TUMOR
from LiverTumorSegLib.modelfile import (
    ModelConfig,
    SegmentationModel,
    StageLink,
    attach_localizer,
    cascade,
    load_model,
    save_model,
)
from LiverTumorSegLib.phantom import make_phantom
from LiverTumorSegLib.pipeline import run_segmentation

from conftest import OracleNet, encode_labels


def _oracle(labels, levels, spacing=None, name="stage") -> SegmentationModel:
    kwargs = {"in_channels": 1, "channel": 0, "levels": levels}
    config = ModelConfig("test_oracle", kwargs, labels, spacing_yx_mm=spacing, min_lesion_mm3=0.0, name=name)
    return SegmentationModel(OracleNet(**kwargs), config)


def test_a_three_stage_cascade_round_trips_and_segments_a_phantom(tmp_path):
    """Localiser (6 mm, liver only) -> liver stage (liver only, its box) -> tumour stage (tumour only, inside the
    liver, liver-masked input). Each stage sees only part of the truth; together they give all of it."""
    ct, truth = make_phantom(shape_zyx=(30, 80, 90), spacing_zyx=(3.0, 1.6, 1.6), seed=7, lesion_diameters_mm=(16.0,))
    image = encode_labels(ct, truth)
    t = sitk.GetArrayFromImage(truth)
    localizer = _oracle((LIVER,), (0.25,), spacing=(6.0, 6.0), name="localiser")
    liver = attach_localizer(_oracle((LIVER,), (0.25,), name="liver"), localizer)
    tumour = _oracle((TUMOR,), (0.7,), name="tumour")
    model = cascade([liver, tumour], [StageLink("mask", margin_mm=5.0, mask_input=True)])
    save_model(model, tmp_path / "cascade.pt")
    back = load_model(tmp_path / "cascade.pt")
    assert [s.config.name for s in back.stages_before] == ["liver"] and back.stages_before[0].localizer is not None
    assert back.link == StageLink("mask", 5.0, True) and [lab.name for lab in back.output_labels] == ["Liver", "Tumor"]

    result = run_segmentation(image, back, device="cpu")
    np.testing.assert_array_equal(sitk.GetArrayFromImage(result.labels), t)
    assert [s["stage"] for s in result.stages] == ["liver", "tumour"]
    assert result.stages[0]["region"] == "whole" and result.stages[1]["region"] == "mask"
    (i0, i1), (j0, j1), (k0, k1) = result.stages[1]["region_ijk"]  # the tumour stage ran on the liver's box only
    zz, yy, xx = np.nonzero(t > 0)
    assert k0 <= zz.min() and k1 > zz.max() and (k1 - k0) < t.shape[0] and (i1 - i0) < t.shape[2]
    assert set(result.lesion_probability) == {"Tumor"}


def test_a_tumour_stage_finds_nothing_outside_the_previous_organ():
    """A 'tumour' (bright voxels) outside the liver is never painted: the tumour stage keeps its labels inside the
    liver the stage before found."""
    ct, truth = make_phantom(shape_zyx=(24, 64, 72), spacing_zyx=(3.0, 1.8, 1.8), seed=8, lesion_diameters_mm=(12.0,))
    image_array = sitk.GetArrayFromImage(encode_labels(ct, truth))
    image_array[2:5, 2:6, 2:6] = 180  # a bright blob far from the liver
    image = sitk.GetImageFromArray(image_array)
    image.CopyInformation(ct)
    model = cascade([_oracle((LIVER,), (0.25,), name="liver"), _oracle((TUMOR,), (0.7,), name="tumour")],
                    [StageLink("mask", margin_mm=3.0)])
    got = sitk.GetArrayFromImage(run_segmentation(image, model, device="cpu").labels)
    assert not got[2:5, 2:6, 2:6].any()
    np.testing.assert_array_equal(got == 2, sitk.GetArrayFromImage(truth) == 2)


def test_a_later_stage_replaces_the_earlier_stages_answer_for_its_own_labels():
    """RA-UNet: a rough 2-D liver only boxes the 3-D liver stage; the final liver is the 3-D stage's alone, not
    the union of both (the rough stage here also takes the soft tissue around the liver)."""
    ct, truth = make_phantom(shape_zyx=(24, 64, 72), spacing_zyx=(3.0, 1.8, 1.8), seed=9, lesion_diameters_mm=(12.0,))
    image = encode_labels(ct, truth)
    rough = _oracle((LIVER,), (-0.15,), name="rough liver")
    t = sitk.GetArrayFromImage(truth)
    alone = sitk.GetArrayFromImage(run_segmentation(image, rough, device="cpu").labels)
    assert ((alone == 1) & (t == 0)).sum() > 100  # the rough stage overshoots
    model = cascade([rough, _oracle((LIVER,), (0.25,), name="liver"), _oracle((TUMOR,), (0.7,), name="tumour")],
                    [StageLink("box", margin_mm=10.0), StageLink("mask", margin_mm=3.0)])
    got = sitk.GetArrayFromImage(run_segmentation(image, model, device="cpu").labels)
    np.testing.assert_array_equal(got, t)


def test_one_value_keeps_one_name_across_stages():
    import dataclasses

    import pytest

    other = _oracle((dataclasses.replace(LIVER, name="Spleen"),), (0.25,), name="spleen")
    with pytest.raises(ValueError, match="label value 1 is 'Liver' in one stage and 'Spleen'"):
        cascade([_oracle((LIVER,), (0.25,)), other], [StageLink()])

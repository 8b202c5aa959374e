"""Inputs that are not 3-D CT in Hounsfield units are refused with a one-line reason and fix."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from LiverTumorSegLib.environment import resolve_device
from LiverTumorSegLib.errors import DeviceError, InputImageError
from LiverTumorSegLib.pipeline import segment
from LiverTumorSegLib.validation import validate_ct

from conftest import oracle_model


def _img(array, spacing=None):
    img = sitk.GetImageFromArray(array)
    if spacing:
        img.SetSpacing(spacing)
    return img


@pytest.mark.parametrize("make,match", [
    (lambda: _img(np.zeros((64, 64), np.int16)), "2-D"),
    (lambda: sitk.Image([8, 8, 8, 3], sitk.sitkInt16), "4-D"),
    (lambda: sitk.Image([8, 8, 8], sitk.sitkVectorFloat32, 3), "values per voxel"),
    (lambda: _img(np.full((5, 16, 16), -1000, np.int16)), "every voxel is -1000"),
    (lambda: _img(np.where(np.indices((5, 16, 16))[2] > 8, 600.0, np.nan).astype(np.float32)), "NaN"),
    (lambda: _img(np.random.default_rng(0).integers(0, 1200, (6, 32, 32)).astype(np.int16)), "MR"),
    (lambda: _img(np.random.default_rng(0).integers(-1000, 300, (1, 32, 32)).astype(np.int16)), "one slice"),
    (lambda: _img(np.random.default_rng(0).integers(-1000, 300, (4, 8, 8)).astype(np.int16), (1.0, 1.0, 80.0)),
     "spacing"),
])
def test_bad_inputs_are_refused_with_a_reason(make, match):
    with pytest.raises(InputImageError, match=match) as info:
        validate_ct(make())
    assert "\n" not in str(info.value)


def _ct(spacing=(1.0, 1.0, 2.0), direction=None, shape=(6, 32, 32)):
    img = _img(np.random.default_rng(0).integers(-1000, 300, shape).astype(np.int16), spacing)
    if direction is not None:
        img.SetDirection(direction)
    return img


@pytest.mark.parametrize("make,match", [
    (lambda: _ct((0.01, 0.01, 2.0)), "in-plane voxel spacing"),
    (lambda: _ct((20.0, 20.0, 20.0)), "in-plane voxel spacing"),
    (lambda: _ct((1.0, 1.0, 0.05)), "slice spacing"),
    (lambda: _ct((1.0, 1.0, 5.0), shape=(600, 8, 8)), "more than any body"),
    (lambda: _ct(direction=(1, 0, 0, 0.5, 0.866, 0, 0, 0, 1)), "not orthonormal"),
])
def test_impossible_geometry_is_refused_by_the_pipeline_itself(make, match):
    """The one place that decides: the pipeline, so the API, the CLI, the module and the effect all refuse it."""
    with pytest.raises(InputImageError, match=match):
        segment(make(), oracle_model(), device="cpu")


@pytest.mark.parametrize("options,match", [
    (dict(thresholds=(1.5, 0.5)), "strictly between 0 and 1"),
    (dict(thresholds=(float("nan"), 0.5)), "strictly between 0 and 1"),
    (dict(min_lesion_mm3=-1.0), "minimum lesion volume"),
    (dict(min_lesion_confidence=1.0), "minimum lesion confidence"),
    (dict(organ_margin_mm=float("inf")), "organ margin"),
])
def test_meaningless_options_are_refused_by_the_pipeline_itself(options, match):
    from LiverTumorSegLib.errors import LiverTumorSegError

    with pytest.raises(LiverTumorSegError, match=match):
        segment(_ct(), oracle_model(), device="cpu", **options)



def test_pipeline_refuses_before_running_the_model():
    mr = _img(np.random.default_rng(0).integers(0, 1200, (6, 32, 32)).astype(np.int16))
    with pytest.raises(InputImageError, match="MR"):
        segment(mr, oracle_model(), device="cpu")
    segment(mr, oracle_model(), device="cpu", allow_non_ct=True)  # forced: runs


def test_dicom_modality_mr_is_refused():
    ct = _img(np.random.default_rng(0).integers(-1000, 300, (4, 16, 16)).astype(np.int16))
    validate_ct(ct, modality="CT")
    with pytest.raises(InputImageError, match="modality is MR"):
        validate_ct(ct, modality="MR")


def test_clipped_body_cropped_ct_is_accepted():
    """Real data cropped to the body with HU clipped to [-200, 400] (like the IRCADb set) is still CT."""
    rng = np.random.default_rng(0)
    a = rng.normal(60, 30, (8, 40, 40))
    a[:, :, :8] = -100  # subcutaneous fat
    validate_ct(_img(np.clip(a, -200, 400).astype(np.int16)))


def test_unavailable_devices_are_named():
    import torch

    assert resolve_device("auto").type in ("cpu", "cuda")
    assert resolve_device("cpu").type == "cpu"
    with pytest.raises(DeviceError, match="unknown device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="--device cpu"):
            resolve_device("cuda")


def test_data_stored_clipped_is_ct_when_its_reader_declares_the_clip(tmp_path):
    """LiTS-derived npz data holds only [-45, 160] HU (fat and air read -45): its reader declares that, and the
    CT check (fat or air below -50 HU) then looks for the saturated floor instead; training validation and
    cross-validation run such cases through the same pipeline."""
    from LiverTumorSegTrainLib.datasets import find_cases

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(6, 20, 30)).astype(np.uint8)
    image[:, :, :5] = 0  # saturated fat
    label = np.zeros_like(image)
    np.savez(tmp_path / "lits_like.npz", image=image, label=label, spacing_zyx=np.array([2.0, 1.5, 1.5]),
             hu_scale=np.float32(205 / 255), hu_offset=np.float32(-45.0), hu_clip=np.array([-45, 160], np.int16))
    ct, _ = find_cases(tmp_path)[0].load()
    validate_ct(ct)
    for key in ct.GetMetaDataKeys():
        ct.EraseMetaData(key)
    with pytest.raises(InputImageError, match="does not look like CT"):
        validate_ct(ct)

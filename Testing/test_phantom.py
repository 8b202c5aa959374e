"""Tests of the synthetic CT phantom: the rest of the test suite trusts its ground truth, so the
truth itself (geometry, topology, HU, lesion sizes, orientation invariance) is checked here."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import SimpleITK as sitk

from LiverTumorSegLib.phantom import (
    LIVER_LABEL,
    TUMOR_LABEL,
    make_phantom,
    make_phantom_with_info,
    rotate_direction,
)

SHAPE = (40, 96, 96)
SPACING = (2.5, 1.5, 1.5)


def arr(img: sitk.Image) -> np.ndarray:
    return sitk.GetArrayFromImage(img)


def n_components(mask: np.ndarray, fully_connected: bool) -> int:
    f = sitk.ConnectedComponentImageFilter()
    f.SetFullyConnected(fully_connected)
    f.Execute(sitk.GetImageFromArray(mask.astype(np.uint8)))
    return f.GetObjectCount()


def components(mask: np.ndarray) -> list[np.ndarray]:
    """26-connected components: lesions must not even touch diagonally."""
    cc = arr(sitk.ConnectedComponent(sitk.GetImageFromArray(mask.astype(np.uint8)), True))
    return [cc == i for i in range(1, int(cc.max()) + 1)]


def same_geometry(a: sitk.Image, b: sitk.Image) -> bool:
    return (a.GetSize() == b.GetSize()
            and np.allclose(a.GetSpacing(), b.GetSpacing())
            and np.allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-6)
            and np.allclose(a.GetDirection(), b.GetDirection()))


@pytest.fixture(scope="module")
def lps():
    return make_phantom_with_info(SHAPE, SPACING, seed=3, lesion_diameters_mm=[16.0, 8.0])


# ---------------------------------------------------------------------------------------------
# geometry, types, determinism
# ---------------------------------------------------------------------------------------------


def test_shape_dtype_and_geometry(lps):
    ct, lab, _ = lps
    assert ct.GetSize() == SHAPE[::-1]
    assert ct.GetPixelID() == sitk.sitkInt16
    assert lab.GetPixelID() == sitk.sitkUInt8
    assert same_geometry(ct, lab)
    assert np.allclose(ct.GetSpacing(), SPACING[::-1])
    assert ct.GetDirection() == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    # volume centred on (0, 0, 0) mm
    centre = ct.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in ct.GetSize()])
    assert np.allclose(centre, 0.0, atol=1e-9)
    assert set(np.unique(arr(lab))) == {0, LIVER_LABEL, TUMOR_LABEL}
    a = arr(ct)
    assert a.min() >= -1024 and a.max() <= 3071


def test_default_arguments_and_float_dtype():
    ct, lab = make_phantom(dtype="float32", noise_hu=0.0)
    assert ct.GetSize() == (128, 128, 64)
    assert np.allclose(ct.GetSpacing(), (1.5, 1.5, 2.5))
    assert ct.GetPixelID() == sitk.sitkFloat32 and lab.GetPixelID() == sitk.sitkUInt8
    assert same_geometry(ct, lab)


def test_small_phantom_is_fast():
    best = math.inf
    for _ in range(2):
        t0 = time.perf_counter()
        make_phantom(SHAPE, SPACING, seed=11)
        best = min(best, time.perf_counter() - t0)
    assert best < 1.0, f"96x96x40 phantom took {best:.2f} s"


def test_deterministic_for_a_seed(lps):
    ct, lab, info = make_phantom_with_info(SHAPE, SPACING, seed=3, lesion_diameters_mm=[16.0, 8.0])
    assert np.array_equal(arr(ct), arr(lps[0]))
    assert np.array_equal(arr(lab), arr(lps[1]))
    assert info == lps[2]


def test_different_seeds_give_different_livers():
    infos, livers = [], []
    for seed in range(4):
        _, lab, info = make_phantom_with_info(SHAPE, SPACING, seed=seed, n_lesions=0)
        infos.append(info)
        livers.append(arr(lab) > 0)
    for i in range(4):
        for j in range(i + 1, 4):
            dice = 2 * np.sum(livers[i] & livers[j]) / (livers[i].sum() + livers[j].sum())
            assert dice < 0.95, (i, j, dice)
    volumes = [i.liver_volume_ml for i in infos]
    assert max(volumes) / min(volumes) > 1.05
    assert len({round(i.liver_hu, 3) for i in infos}) == 4
    counts = {make_phantom_with_info(SHAPE, SPACING, seed=s)[2].n_lesions for s in range(8)}
    assert len(counts) > 1 and counts <= {0, 1, 2, 3, 4}


def test_lesion_and_noise_options_do_not_change_the_liver():
    _, lab0, _ = make_phantom_with_info(SHAPE, SPACING, seed=5, n_lesions=0, noise_hu=0.0)
    _, lab1, _ = make_phantom_with_info(SHAPE, SPACING, seed=5, n_lesions=2, noise_hu=20.0)
    assert np.array_equal(arr(lab0) > 0, arr(lab1) > 0)


# ---------------------------------------------------------------------------------------------
# HU realism
# ---------------------------------------------------------------------------------------------


def test_hounsfield_units(lps):
    ct, lab, info = lps
    a, l = arr(ct).astype(float), arr(lab)
    liver_med = np.median(a[l == LIVER_LABEL])
    assert 80 <= liver_med <= 130
    assert 90 <= info.liver_hu <= 120
    # air in the corners (the body is an ellipse inside the field of view)
    corners = np.concatenate([a[:, :6, :6].ravel(), a[:, -6:, -6:].ravel(),
                              a[:, :6, -6:].ravel(), a[:, -6:, :6].ravel()])
    assert abs(np.median(corners) + 1000) <= 2
    assert 9 <= corners.std() <= 14  # noise SD 12 (a little is clipped at -1024)
    assert a.max() > 500  # bone
    assert (a > 500).sum() > 50
    # the body: fat and soft tissue exist
    assert ((a > -150) & (a < -60)).sum() > 1000
    assert ((a > 20) & (a < 70)).sum() > 1000


def test_noise_free_image_is_exact():
    ct, lab = make_phantom(SHAPE, SPACING, seed=2, noise_hu=0.0)
    a, l = arr(ct), arr(lab)
    assert np.all(a[:, :4, :4] == -1000)
    assert np.all(a[:, -4:, -4:] == -1000)
    # noise-free liver parenchyma: texture of a few HU around the drawn mean
    assert np.percentile(a[l == LIVER_LABEL], 25) >= 85


def test_lesions_are_hypo_or_hyperdense(lps):
    ct, lab, info = lps
    a, l = arr(ct).astype(float), arr(lab)
    liver_med = np.median(a[l == LIVER_LABEL])
    for les in info.lesions:
        comp = [c for c in components(l == TUMOR_LABEL) if c[les.centre_index_zyx]][0]
        med = np.median(a[comp])
        if les.kind == "hypodense":
            assert med < liver_med - 20, (med, liver_med)
        else:
            assert med > liver_med + 20, (med, liver_med)


# ---------------------------------------------------------------------------------------------
# liver topology and position
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape,spacing,seed", [
    (SHAPE, SPACING, 0), (SHAPE, (3.0, 3.0, 3.0), 1), ((24, 64, 80), (5.0, 2.0, 2.0), 2),
    ((64, 128, 128), (2.5, 1.5, 1.5), 4), ((16, 48, 48), (4.0, 4.0, 4.0), 6),
])
def test_liver_is_one_component_without_holes(shape, spacing, seed):
    _, lab, info = make_phantom_with_info(shape, spacing, seed=seed)
    liver = arr(lab) > 0
    assert n_components(liver, fully_connected=False) == 1
    filled = arr(sitk.BinaryFillhole(sitk.Cast(lab > 0, sitk.sitkUInt8)))
    assert np.array_equal(filled > 0, liver)
    ks = np.flatnonzero(liver.any(axis=(1, 2)))
    assert ks[0] >= 2 and ks[-1] <= shape[0] - 3  # background slices above and below
    assert (ks[0], ks[-1]) == info.liver_slices
    # patient right = low x in LPS; the spine is posterior (high y), the liver anterior of it
    _, _, xs = np.nonzero(liver)
    assert xs.mean() < shape[2] / 2
    assert info.liver_centroid_mm[0] < 0
    assert liver[:, :, -shape[2] // 4:].sum() == 0  # nothing in the left quarter


def test_liver_slice_fraction():
    nz = SHAPE[0]
    _, _, info = make_phantom_with_info(SHAPE, SPACING, seed=1, liver_slice_fraction=(0.25, 0.75))
    k0, k1 = info.liver_slices
    assert 0.25 * (nz - 1) - 1 <= k0 and k1 <= 0.75 * (nz - 1) + 1
    assert k1 - k0 >= 0.4 * (nz - 1)
    with pytest.raises(ValueError):
        make_phantom(SHAPE, SPACING, liver_slice_fraction=(0.6, 0.4))


# ---------------------------------------------------------------------------------------------
# lesions
# ---------------------------------------------------------------------------------------------


def check_lesions(lab: sitk.Image, info, expected: int) -> None:
    l = arr(lab)
    comps = components(l == TUMOR_LABEL)
    assert len(comps) == expected == info.n_lesions  # also: no two lesions touch
    dilated = arr(sitk.BinaryDilate(sitk.Cast(lab == TUMOR_LABEL, sitk.sitkUInt8), [1, 1, 1],
                                    sitk.sitkBox))
    assert np.all(l[dilated > 0] > 0), "a lesion touches the liver surface"
    for les in info.lesions:
        assert l[les.centre_index_zyx] == TUMOR_LABEL
        comp = [c for c in comps if c[les.centre_index_zyx]]
        assert len(comp) == 1 and comp[0].sum() == les.n_voxels


def test_requested_lesion_diameters(lps):
    _, lab, info = lps
    check_lesions(lab, info, 2)
    vox = float(np.prod(SPACING))
    l = arr(lab)
    for les, requested in zip(info.lesions, (16.0, 8.0)):
        assert not les.shrunk and les.requested_diameter_mm == requested
        comp = [c for c in components(l == TUMOR_LABEL) if c[les.centre_index_zyx]][0]
        d_eq = (6.0 * comp.sum() * vox / math.pi) ** (1 / 3)
        assert abs(d_eq - requested) <= max(SPACING), (d_eq, requested)


@pytest.mark.parametrize("seed", [0, 7])
def test_lesion_count(seed):
    for n in (0, 1, 4):
        _, lab, info = make_phantom_with_info((48, 128, 128), (2.5, 1.5, 1.5), seed=seed, n_lesions=n)
        check_lesions(lab, info, n)
        for les in info.lesions:
            assert 3.0 - 1e-9 <= les.requested_diameter_mm <= 60.0


def test_lesion_that_cannot_fit_is_shrunk():
    _, lab, info = make_phantom_with_info(SHAPE, SPACING, seed=0, lesion_diameters_mm=[120.0])
    check_lesions(lab, info, 1)
    assert info.lesions[0].shrunk and info.lesions[0].diameter_mm < 120.0


def test_large_lesions_at_fine_spacing():
    _, lab, info = make_phantom_with_info((48, 160, 160), (3.0, 2.5, 2.5), seed=9,
                                          lesion_diameters_mm=[50.0, 25.0, 5.0])
    check_lesions(lab, info, 3)
    assert info.lesions[0].n_voxels > info.lesions[1].n_voxels > info.lesions[2].n_voxels


# ---------------------------------------------------------------------------------------------
# orientation
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("code", ["RAS", "PIR", "RAI", "SAL"])
def test_orientation_is_an_exact_reorientation(lps, code):
    ct_ref, lab_ref, info_ref = lps
    ct, lab, info = make_phantom_with_info(SHAPE, SPACING, seed=3, orientation=code,
                                           lesion_diameters_mm=[16.0, 8.0])
    assert sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(ct.GetDirection()) == code
    assert same_geometry(ct, lab)
    back_ct, back_lab = sitk.DICOMOrient(ct, "LPS"), sitk.DICOMOrient(lab, "LPS")
    assert np.array_equal(arr(back_ct), arr(ct_ref))
    assert np.array_equal(arr(back_lab), arr(lab_ref))
    assert same_geometry(back_ct, ct_ref) and same_geometry(back_lab, lab_ref)
    assert info.lesions == info_ref.lesions
    # same physical point, same voxel: the anatomy does not move
    for les in info.lesions:
        p = les.centre_mm
        assert lab[lab.TransformPhysicalPointToIndex(p)] == TUMOR_LABEL
        assert ct[ct.TransformPhysicalPointToIndex(p)] == ct_ref[ct_ref.TransformPhysicalPointToIndex(p)]


def test_invalid_arguments():
    for bad in ("XYZ", "LLS", "LP"):
        with pytest.raises(ValueError):
            make_phantom(SHAPE, SPACING, orientation=bad)
    with pytest.raises(ValueError):
        make_phantom(SHAPE, SPACING, dtype="uint8")
    with pytest.raises(ValueError):
        make_phantom((4, 96, 96), SPACING)
    with pytest.raises(ValueError):
        make_phantom(SHAPE, SPACING, n_lesions=-1)


def test_rotate_direction(lps):
    ct = lps[0]
    rot = rotate_direction(ct, 10.0)
    assert np.array_equal(arr(rot), arr(ct))
    assert rot.GetSize() == ct.GetSize() and rot.GetSpacing() == ct.GetSpacing()
    d = np.array(rot.GetDirection()).reshape(3, 3)
    assert not np.allclose(d, np.eye(3))
    assert np.allclose(d @ d.T, np.eye(3))
    c, s = math.cos(math.radians(10)), math.sin(math.radians(10))
    assert np.allclose(d, [[c, -s, 0], [s, c, 0], [0, 0, 1]])
    # every voxel moves by the same rotation about the physical z axis
    idx = (5, 70, 30)
    p0 = np.array(ct.TransformIndexToPhysicalPoint(idx))
    p1 = np.array(rot.TransformIndexToPhysicalPoint(idx))
    assert np.allclose(p1, d @ p0)
    assert np.allclose(rotate_direction(rot, -10.0).GetDirection(), ct.GetDirection())
    # the input is untouched
    assert ct.GetDirection() == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)

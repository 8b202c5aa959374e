"""Tests of LiverTumorSegTrainLib.metrics and .evaluate on real computations.

Expected values come from independent sources: ITK's LabelOverlapMeasures and Hausdorff filters,
closed-form geometry (shifted boxes, concentric spheres, boundary-voxel counts of boxes), hand
counts with numpy, and the phantom's own record of the lesions it painted.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import tracemalloc

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from LiverTumorSegLib.errors import LiverTumorSegError
from LiverTumorSegLib.labels import LIVER, TUMOR
from LiverTumorSegLib.phantom import make_phantom, make_phantom_with_info
from LiverTumorSegLib.segfile import write_seg_nrrd
from LiverTumorSegTrainLib.evaluate import add_parser, case_id, evaluate_folders, match_cases
from LiverTumorSegTrainLib.metrics import (
    GridMismatchError,
    case_metrics,
    lesion_detection,
    overlap,
    surface_distances,
)
from LiverTumorSegTrainLib.summary import aggregate, aggregate_groups, targets_markdown

ANISO = (2.5, 0.8, 0.7)  # (z, y, x) mm
PHANTOM_SPACING = (3.0, 2.6, 2.4)  # a field of view where 26 mm lesions fit unshrunk


# ----------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------

def _image(arr: np.ndarray, spacing_zyx=(1.0, 1.0, 1.0)) -> sitk.Image:
    img = sitk.GetImageFromArray(np.ascontiguousarray(arr).astype(np.uint8))
    img.SetSpacing([float(s) for s in reversed(spacing_zyx)])
    return img


def _ellipsoid(shape, centre_mm, radii_mm, spacing) -> np.ndarray:
    z, y, x = np.ogrid[tuple(slice(0, n) for n in shape)]
    return (((z * spacing[0] - centre_mm[0]) / radii_mm[0]) ** 2 + ((y * spacing[1] - centre_mm[1]) / radii_mm[1]) ** 2
            + ((x * spacing[2] - centre_mm[2]) / radii_mm[2]) ** 2) <= 1.0


def _blob(shape, seed, level=0.0) -> np.ndarray:
    noise = np.random.default_rng(seed).standard_normal(shape)
    return ndimage.gaussian_filter(noise, 2.0) > level


def _box_mask(shape, lo, hi) -> np.ndarray:
    m = np.zeros(shape, dtype=bool)
    m[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = True
    return m


def _numbers(d, prefix=""):
    """Flatten a metrics dict into {path: value}, skipping array-index positions (orientation-dependent)."""
    out = {}
    if isinstance(d, dict):
        for k, v in d.items():
            if k in ("centroid_index_zyx", "size_xyz", "spacing_zyx"):
                continue
            out.update(_numbers(v, f"{prefix}/{k}"))
    elif isinstance(d, list):
        for i, v in enumerate(d):
            out.update(_numbers(v, f"{prefix}[{i}]"))
    else:
        out[prefix] = d
    return out


def _assert_same(a: dict, b: dict) -> None:
    fa, fb = _numbers(a), _numbers(b)
    assert fa.keys() == fb.keys()
    for k in fa:
        x, y = fa[k], fb[k]
        if isinstance(x, float) and math.isnan(x):
            assert isinstance(y, float) and math.isnan(y), k
        elif isinstance(x, (float, int)) and not isinstance(x, bool):
            assert y == pytest.approx(x, rel=1e-9, abs=1e-9), k
        else:
            assert x == y, k


# ----------------------------------------------------------------------------------------------------
# overlap
# ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", [0, 1, 2])
def test_overlap_matches_itk_label_overlap_measures(seed):
    shape = (24, 40, 44)
    pred, ref = _blob(shape, seed, 0.02), _blob(shape, seed + 100, -0.02)
    m = overlap(pred, ref)
    f = sitk.LabelOverlapMeasuresImageFilter()
    f.Execute(_image(pred), _image(ref))
    assert m["dice"] == pytest.approx(f.GetDiceCoefficient(), rel=1e-12)
    assert m["jaccard"] == pytest.approx(f.GetJaccardCoefficient(), rel=1e-12)
    assert m["voe"] == pytest.approx(1.0 - f.GetJaccardCoefficient(), rel=1e-12)
    n_p, n_g, n_i = int(pred.sum()), int(ref.sum()), int((pred & ref).sum())
    assert m["rvd"] == pytest.approx((n_p - n_g) / n_g)  # textbook: positive = over-segmentation
    assert m["rvd_lits"] == pytest.approx((n_g - n_p) / n_p)  # medpy ravd(reference, prediction)
    assert (m["tp"], m["fp"], m["fn"], m["n_pred"], m["n_ref"]) == (n_i, n_p - n_i, n_g - n_i, n_p, n_g)


def test_overlap_empty_conventions():
    empty = np.zeros((4, 5, 6), dtype=bool)
    some = empty.copy()
    some[1:3, 1:3, 1:3] = True
    both = overlap(empty, empty)
    assert (both["dice"], both["jaccard"], both["voe"], both["rvd"], both["rvd_lits"]) == (1.0, 1.0, 0.0, 0.0, 0.0)
    fp = overlap(some, empty)  # tumour-free reference, tumour predicted
    assert (fp["dice"], fp["jaccard"], fp["voe"], fp["rvd_lits"]) == (0.0, 0.0, 1.0, -1.0) and math.isnan(fp["rvd"])
    miss = overlap(empty, some)
    assert (miss["dice"], miss["voe"], miss["rvd"]) == (0.0, 1.0, -1.0) and math.isnan(miss["rvd_lits"])
    with pytest.raises(ValueError, match="shape"):
        overlap(empty, np.zeros((4, 5, 7), dtype=bool))


# ----------------------------------------------------------------------------------------------------
# surface distances
# ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_msd_equals_itk_hausdorff_for_convex_objects(seed):
    """ITK's Hausdorff distance is between *all* voxels (physical points) of the two masks, ours between
    their surface voxels. For convex objects they agree: the voxel of A farthest from B is a boundary voxel
    of A lying outside B (distance to a convex set is convex, so it peaks on A's hull), and the voxel of B
    nearest to a point outside B is always a boundary voxel of B (an interior one has a 6-neighbour that is
    closer). So both pick the same pair. Ellipsoids here overlap partly or not at all, on an anisotropic grid.
    """
    rng = np.random.default_rng(seed)
    shape = (30, 60, 64)
    a = _ellipsoid(shape, rng.uniform([20, 15, 15], [55, 35, 30]), rng.uniform(6, 18, 3), ANISO)
    b = _ellipsoid(shape, rng.uniform([20, 15, 15], [55, 35, 30]), rng.uniform(6, 18, 3), ANISO)
    h = sitk.HausdorffDistanceImageFilter()
    h.Execute(_image(a, ANISO), _image(b, ANISO))
    assert surface_distances(a, b, ANISO)["msd"] == pytest.approx(h.GetHausdorffDistance(), rel=1e-9)


@pytest.mark.parametrize("shift_zyx", [(3, 0, 0), (0, 4, -2), (1, -2, 5)])
def test_msd_equals_itk_hausdorff_for_shifted_boxes(shift_zyx):
    shape = (24, 40, 40)
    a = _box_mask(shape, (6, 10, 10), (16, 28, 26))
    b = np.roll(a, shift_zyx, axis=(0, 1, 2))
    h = sitk.HausdorffDistanceImageFilter()
    h.Execute(_image(a, ANISO), _image(b, ANISO))
    expected = math.sqrt(sum((k * s) ** 2 for k, s in zip(shift_zyx, ANISO)))  # closed form too
    assert h.GetHausdorffDistance() == pytest.approx(expected, rel=1e-9)
    assert surface_distances(a, b, ANISO)["msd"] == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("seed", [0, 1])
def test_surface_distances_match_brute_force_on_random_blobs(seed):
    """All pairwise distances between surface points in mm (no distance transform), pooled both ways."""
    from scipy.spatial.distance import cdist

    shape = (16, 24, 28)
    pred, ref = _blob(shape, seed, 0.05), _blob(shape, seed + 50, 0.0)
    six = ndimage.generate_binary_structure(3, 1)

    def surface_points(mask):
        edge = mask & ~ndimage.binary_erosion(mask, six, border_value=0)
        return np.argwhere(edge) * np.asarray(ANISO)

    sp, sr = surface_points(pred), surface_points(ref)
    dist = cdist(sp, sr)
    pooled = np.concatenate([dist.min(axis=1), dist.min(axis=0)])
    m = surface_distances(pred, ref, ANISO)
    assert (m["n_surface_pred"], m["n_surface_ref"]) == (len(sp), len(sr))
    assert m["assd"] == pytest.approx(pooled.mean(), rel=1e-12)
    assert m["rmsd"] == pytest.approx(np.sqrt(np.mean(pooled ** 2)), rel=1e-12)
    assert m["msd"] == pytest.approx(pooled.max(), rel=1e-12)
    assert m["hd95"] == pytest.approx(np.percentile(pooled, 95), rel=1e-12)


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (2.0, 0.8, 0.8), (1.5, 1.0, 0.6)])
@pytest.mark.parametrize("r,d", [(10.0, 3.0), (12.0, 5.0)])
def test_concentric_spheres_distance_is_radius_difference(spacing, r, d):
    shape = tuple(int(round(44 / s)) for s in spacing)
    centre = [n * s / 2 for n, s in zip(shape, spacing)]
    inner = _ellipsoid(shape, centre, (r,) * 3, spacing)
    outer = _ellipsoid(shape, centre, (r + d,) * 3, spacing)
    m = surface_distances(inner, outer, spacing)
    tol = max(spacing)  # digitisation: within a voxel
    assert abs(m["assd"] - d) <= tol and abs(m["msd"] - d) <= tol and abs(m["hd95"] - d) <= tol
    assert m["assd"] <= m["hd95"] <= m["msd"]
    swapped = surface_distances(outer, inner, spacing)  # symmetric
    for key in ("assd", "rmsd", "msd", "hd95"):
        assert swapped[key] == pytest.approx(m[key], rel=1e-12)


@pytest.mark.parametrize("axis", [0, 1, 2])
@pytest.mark.parametrize("k", [1, 3])
def test_shifted_cube_msd_is_k_times_spacing(axis, k):
    shape = (20, 24, 28)
    a = _box_mask(shape, (5, 6, 7), (13, 14, 15))
    b = np.roll(a, k, axis=axis)
    assert surface_distances(a, b, ANISO)["msd"] == pytest.approx(k * ANISO[axis], abs=1e-12)
    # Spacing along other axes does not matter; along the shift axis it scales the distance.
    other = list(ANISO)
    other[(axis + 1) % 3] *= 3.0
    assert surface_distances(a, b, other)["msd"] == pytest.approx(k * ANISO[axis], abs=1e-12)
    scaled = [s * 2.0 for s in ANISO]
    m1, m2 = surface_distances(a, b, ANISO), surface_distances(a, b, scaled)
    for key in ("assd", "rmsd", "msd", "hd95"):
        assert m2[key] == pytest.approx(2.0 * m1[key], rel=1e-12)


@pytest.mark.parametrize("n_outliers", [50, 300])
def test_hd95_with_constructed_outliers(n_outliers):
    """Prediction = reference box + a one-voxel-thick plate of m voxels D mm above its top face.

    Pooled distances: every boundary voxel of the box (counted twice: once per direction) is at 0, every
    plate voxel at exactly D (straight down to the top face). With m below 5 % of the pool HD95 is 0 while
    MSD = D; above, HD95 = D. Box boundary counts come from the closed form a·b·c − (a−2)(b−2)(c−2).
    """
    spacing = (2.0, 0.9, 0.9)
    shape = (24, 30, 30)
    ref = _box_mask(shape, (2, 5, 5), (12, 25, 25))  # 10 × 20 × 20 voxels
    k = 4
    plate = np.zeros(shape, dtype=bool)
    rows, cols = (5, 10) if n_outliers == 50 else (15, 20)
    plate[11 + k, 5:5 + rows, 5:5 + cols] = True
    pred = ref | plate
    d_plate = k * spacing[0]
    s_box = 10 * 20 * 20 - 8 * 18 * 18
    pooled = np.concatenate([np.zeros(2 * s_box), np.full(rows * cols, d_plate)])
    m = surface_distances(pred, ref, spacing)
    assert m["n_surface_ref"] == s_box and m["n_surface_pred"] == s_box + rows * cols
    assert m["msd"] == pytest.approx(d_plate)
    assert m["hd95"] == pytest.approx(np.percentile(pooled, 95))
    assert m["assd"] == pytest.approx(pooled.mean())
    if n_outliers == 50:
        assert m["hd95"] == 0.0
    else:
        assert m["hd95"] == pytest.approx(d_plate)


def test_surface_empty_conventions():
    empty = np.zeros((6, 7, 8), dtype=bool)
    some = _box_mask(empty.shape, (1, 1, 1), (4, 4, 4))
    both = surface_distances(empty, empty, ANISO)
    assert (both["assd"], both["rmsd"], both["msd"], both["hd95"]) == (0.0, 0.0, 0.0, 0.0)
    for a, b in ((some, empty), (empty, some)):
        m = surface_distances(a, b, ANISO)
        assert all(math.isnan(m[k]) for k in ("assd", "rmsd", "msd", "hd95"))  # never 0 for a miss


def test_surface_voxels_touching_the_image_edge_count_as_boundary():
    """Outside the image is background: a mask filling the volume has a surface (its outer layer)."""
    full = np.ones((5, 6, 7), dtype=bool)
    smaller = _box_mask(full.shape, (1, 0, 0), (5, 6, 7))  # one slice less at z = 0
    m = surface_distances(full, smaller, (2.0, 1.0, 1.0))
    assert m["n_surface_pred"] == 5 * 6 * 7 - 3 * 4 * 5
    assert m["msd"] == pytest.approx(2.0)


def test_distances_work_on_the_bounding_box_only():
    """Two small objects in a 10-M-voxel volume: a full-volume float64 transform would need 80 MB."""
    shape = (40, 512, 512)
    pred = np.zeros(shape, dtype=bool)
    ref = np.zeros(shape, dtype=bool)
    pred[10:20, 100:130, 200:240] = True
    ref[12:22, 105:130, 205:250] = True
    tracemalloc.start()
    try:
        m = surface_distances(pred, ref, ANISO)
        lesion_detection(pred, ref, ANISO)
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 * 2**20, f"peak {peak / 2**20:.1f} MiB"
    box = (slice(8, 24), slice(98, 132), slice(198, 252))
    assert m == surface_distances(pred[box], ref[box], ANISO)  # cropping never changes the result


# ----------------------------------------------------------------------------------------------------
# case metrics: grids and orientation
# ----------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def phantom_pair():
    """Reference = phantom seed 3; prediction = another phantom (different liver, other lesions)."""
    kw = dict(shape_zyx=(30, 64, 72), spacing_zyx=PHANTOM_SPACING)
    _, ref = make_phantom(seed=3, lesion_diameters_mm=(8.0, 14.0, 26.0), **kw)
    _, pred = make_phantom(seed=4, lesion_diameters_mm=(12.0, 22.0), **kw)
    return pred, ref


def test_case_metrics_structures_and_counts(phantom_pair):
    pred, ref = phantom_pair
    m = case_metrics(pred, ref)
    p, g = sitk.GetArrayFromImage(pred), sitk.GetArrayFromImage(ref)
    liver, tumor = m["structures"]["liver"], m["structures"]["tumor"]
    assert liver["n_pred"] == np.count_nonzero(p > 0) and liver["n_ref"] == np.count_nonzero(g > 0)
    assert liver["tp"] == np.count_nonzero((p > 0) & (g > 0))
    assert tumor["tp"] == np.count_nonzero((p == 2) & (g == 2))
    assert 0.5 < liver["dice"] < 1.0 and liver["assd"] > 0
    assert m["lesions"]["n_ref"] == 3 and m["lesions"]["n_pred"] == 2
    only_liver = case_metrics(pred, ref, {"liver": (1, 2)})
    assert "lesions" not in only_liver and only_liver["structures"]["liver"] == liver


def test_case_metrics_same_in_any_orientation(phantom_pair):
    pred, ref = phantom_pair
    base = case_metrics(pred, ref)
    pred_o, ref_o = sitk.DICOMOrient(pred, "PIR"), sitk.DICOMOrient(ref, "PIR")
    assert pred_o.GetSize() != pred.GetSize()  # really permuted
    rotated = case_metrics(pred_o, ref_o)
    _assert_same(base, rotated)  # includes lesion centroids in LPS mm


def test_grid_mismatch_is_a_clear_error(phantom_pair):
    pred, ref = phantom_pair
    moved = sitk.Image(pred)
    moved.SetOrigin([o + 0.5 for o in pred.GetOrigin()])
    with pytest.raises(GridMismatchError, match="prediction and reference grids differ: origin") as info:
        case_metrics(moved, ref)
    assert isinstance(info.value, ValueError) and isinstance(info.value, LiverTumorSegError)
    nearly = sitk.Image(pred)
    nearly.SetOrigin([o + 5e-5 for o in pred.GetOrigin()])
    case_metrics(nearly, ref)  # within 1e-4 mm: the same grid
    with pytest.raises(ValueError, match="size"):
        case_metrics(pred[:, :, 1:], ref)
    ct = sitk.Cast(pred, sitk.sitkInt16) - 1000
    with pytest.raises(LiverTumorSegError, match="looks like a CT image, not a label map"):
        case_metrics(pred, ct)
    respaced = sitk.Image(pred)
    respaced.SetSpacing([s * 1.01 for s in pred.GetSpacing()])
    with pytest.raises(ValueError, match="spacing"):
        case_metrics(respaced, ref)


def test_all_background_case():
    empty = _image(np.zeros((8, 16, 16)), ANISO)
    m = case_metrics(empty, empty)
    for s in m["structures"].values():
        assert s["dice"] == 1.0 and s["assd"] == 0.0 and s["n_ref"] == 0
    assert m["lesions"]["n_ref"] == 0 and m["lesions"][">0"]["fp"] == 0


# ----------------------------------------------------------------------------------------------------
# lesion detection
# ----------------------------------------------------------------------------------------------------

def test_lesion_detection_hit_graze_and_false_positive():
    spacing = (2.0, 1.0, 1.0)  # voxel 2 mm³
    shape = (20, 60, 60)
    small = _box_mask(shape, (2, 5, 5), (4, 8, 8))         # 18 voxels = 36 mm³ → d 4.1 mm
    medium = _box_mask(shape, (8, 30, 30), (14, 42, 42))   # 864 voxels = 1728 mm³ → d 14.9 mm
    large = _box_mask(shape, (2, 40, 5), (12, 58, 25))     # 3600 voxels = 7200 mm³ → d 24.0 mm
    ref = small | medium | large
    graze = _box_mask(shape, (13, 40, 40), (18, 50, 50))   # overlaps medium by 1·2·2 = 4 voxels
    fp = _box_mask(shape, (16, 5, 40), (19, 10, 45))       # touches nothing
    pred = small | graze | fp | large
    d = lesion_detection(pred, ref, spacing)
    assert d["n_ref"] == 3 and d["n_pred"] == 4
    assert d[">0"] == {"tp": 3, "fn": 0, "tp_pred": 3, "fp": 1}
    assert d[">0.5"] == {"tp": 2, "fn": 1, "tp_pred": 2, "fp": 2}  # the grazing blob is a false positive now
    by_volume = {round(les["volume_mm3"]): les for les in d["lesions"]}
    assert set(by_volume) == {36, 1728, 7200}
    for volume, size in ((36, "small"), (1728, "medium"), (7200, "large")):
        les = by_volume[volume]
        assert les["diameter_mm"] == pytest.approx((6 * volume / math.pi) ** (1 / 3))
        assert les["size"] == size
    assert by_volume[1728]["iou"] == pytest.approx(4 / (864 + 500 - 4))  # graze: 5·10·10 voxels
    assert by_volume[1728]["detected"] == {">0": True, ">0.5": False}
    assert by_volume[36]["detected"] == {">0": True, ">0.5": True} and by_volume[36]["iou"] == 1.0

    two_refs = small | medium
    only_two = lesion_detection(small | graze | fp, two_refs, spacing)
    assert only_two[">0"]["tp"] / only_two["n_ref"] == 1.0   # recall at > 0
    assert only_two[">0.5"]["tp"] / only_two["n_ref"] == 0.5  # recall at > 0.5
    assert only_two[">0"]["fp"] == 1 and only_two[">0.5"]["fp"] == 2


def test_lesion_detection_26_connectivity_and_shared_blob():
    shape = (10, 20, 30)
    a = _box_mask(shape, (2, 2, 2), (6, 8, 8))
    b = _box_mask(shape, (2, 2, 10), (6, 8, 16))
    diagonal = np.zeros(shape, dtype=bool)
    diagonal[7, 12, 20] = diagonal[8, 13, 21] = True  # corner-touching voxels: one 26-connected lesion
    ref = a | b | diagonal
    # One predicted blob covering a, b and the 2-voxel gap: each lesion keeps IoU = |lesion| / (|lesion| + gap).
    pred = _box_mask(shape, (2, 2, 2), (6, 8, 16)) | diagonal
    d = lesion_detection(pred, ref, (1.0, 1.0, 1.0))
    assert d["n_ref"] == 3 and d["n_pred"] == 2
    ious = sorted(les["iou"] for les in d["lesions"])
    assert ious == pytest.approx(sorted([144 / (144 + 48), 144 / (144 + 48), 1.0]))
    assert d[">0.5"] == {"tp": 3, "fn": 0, "tp_pred": 2, "fp": 0}


def test_lesion_detection_matches_phantom_truth():
    shape, spacing = (30, 75, 90), (3.0, 1.8, 1.8)
    _, labels, info = make_phantom_with_info(shape_zyx=shape, spacing_zyx=spacing, seed=3,
                                             lesion_diameters_mm=(6.0, 12.0, 25.0))
    tumor = sitk.GetArrayFromImage(labels) == 2
    d = lesion_detection(tumor, tumor, spacing)
    assert d["n_ref"] == d["n_pred"] == info.n_lesions == 3
    assert d[">0.5"] == {"tp": 3, "fn": 0, "tp_pred": 3, "fp": 0}
    ours = sorted((les["n_voxels"], les["diameter_mm"]) for les in d["lesions"])
    truth = sorted(zip((les.n_voxels for les in info.lesions), info.lesion_voxel_diameters_mm()))
    assert [n for n, _ in ours] == [n for n, _ in truth]
    assert [dm for _, dm in ours] == pytest.approx([dm for _, dm in truth])
    assert sorted(les["size"] for les in d["lesions"]) == ["large", "medium", "small"]


# ----------------------------------------------------------------------------------------------------
# aggregate
# ----------------------------------------------------------------------------------------------------

def test_aggregate_pools_global_dice_and_follows_lits_conventions(phantom_pair):
    pred, ref = phantom_pair
    shape, spacing = (30, 64, 72), PHANTOM_SPACING
    _, tumor_free = make_phantom(shape_zyx=shape, spacing_zyx=spacing, seed=3, n_lesions=0)
    _, with_lesion = make_phantom(shape_zyx=shape, spacing_zyx=spacing, seed=3, lesion_diameters_mm=(14.0,))
    pairs = [(pred, ref), (ref, ref), (tumor_free, tumor_free), (with_lesion, tumor_free)]
    per_case = [case_metrics(p, g) for p, g in pairs]
    agg = aggregate(per_case)
    assert agg["n_cases"] == 4

    tp = sz = 0
    dices = []
    for p_img, g_img in pairs:
        p, g = sitk.GetArrayFromImage(p_img) == 2, sitk.GetArrayFromImage(g_img) == 2
        tp += np.count_nonzero(p & g)
        sz += np.count_nonzero(p) + np.count_nonzero(g)
        s = np.count_nonzero(p) + np.count_nonzero(g)
        dices.append(1.0 if s == 0 else 2 * np.count_nonzero(p & g) / s)
    tumor = agg["structures"]["tumor"]
    assert tumor["dice_global"] == pytest.approx(2 * tp / sz)
    assert tumor["dice_per_case"] == pytest.approx(np.mean(dices))
    assert dices[2] == 1.0 and dices[3] == 0.0  # tumour-free: 1 if predicted empty, 0 otherwise
    assert tumor["metrics"]["dice"]["sd"] == pytest.approx(np.std(dices, ddof=1))
    assert tumor["metrics"]["dice"]["median"] == pytest.approx(np.median(dices))
    assert (tumor["n_ref_empty"], tumor["n_false_positive_cases"], tumor["n_missed_cases"]) == (2, 1, 0)
    # Surface distances of the false-positive case are undefined: left out and counted, not scored 0.
    assd = tumor["metrics"]["assd"]
    assert assd["n"] == 3 and assd["n_excluded"] == 1
    assert assd["mean"] == pytest.approx(np.mean([c["structures"]["tumor"]["assd"] for c in per_case[:3]]))

    les = agg["lesions"]
    assert les["n_ref"] == 3 + 3 and les["n_pred"] == 2 + 3 + 0 + 1
    tp0 = per_case[0]["lesions"][">0"]["tp"] + 3
    assert les[">0"]["recall"] == pytest.approx(tp0 / 6)
    tp_pred = per_case[0]["lesions"][">0.5"]["tp_pred"] + 3
    assert les[">0.5"]["precision"] == pytest.approx(tp_pred / 6)
    assert les[">0.5"]["fp"] == 6 - tp_pred
    assert sum(les["by_size"][c]["n"] for c in ("small", "medium", "large")) == 6
    # Reference lesions 8, 14, 26 mm (twice): the perfect case 1 detects one of each class at both thresholds.
    assert [les["by_size"][c]["n"] for c in ("small", "medium", "large")] == [2, 2, 2]
    for c in ("small", "medium", "large"):
        case0 = per_case[0]["lesions"]["lesions"]
        hits = sum(lesion["size"] == c and lesion["detected"][">0.5"] for lesion in case0) + 1
        assert les["by_size"][c][">0.5"] == {"detected": hits, "recall": pytest.approx(hits / 2)}


def test_what_users_see_organ_outside_the_liver_false_lesions_and_tumour_outside_the_predicted_liver():
    """A 'spleen' labelled liver (with a 'tumour' in it) next to a correct liver: the organ volume outside the
    reference, the tumour outside the predicted liver, false lesions per scan and recall of lesions >= 10 mm."""
    spacing = (2.0, 1.0, 1.0)
    ref = np.zeros((20, 60, 80), np.uint8)
    ref[2:18, 5:45, 5:40] = 1
    ref[8:14, 15:30, 15:30] = 2  # 12 x 15 x 15 mm: >= 10 mm
    ref[4, 10:12, 10:12] = 2  # 2 x 2 x 2 mm: small, missed
    pred = ref.copy()
    pred[4, 10:12, 10:12] = 1
    pred[5:10, 10:30, 50:70] = 1  # a second organ: 5 x 20 x 20 voxels = 4 mL of "liver" that is not liver
    pred[6:8, 15:20, 55:60] = 2  # a "tumour" in it: outside the predicted liver (its largest component)
    pred[3, 40:42, 30:32] = 2  # a false lesion inside the liver
    case = {"case": "a", **case_metrics(_image(pred, spacing), _image(ref, spacing))}
    assert case["tumor_outside_pred_liver_ml"] == pytest.approx(2 * 5 * 5 * 2 / 1000)
    free = {"case": "b", **case_metrics(_image(ref == 1, spacing), _image(ref == 1, spacing))}  # tumour-free
    agg = aggregate([case, free])
    assert agg["structures"]["liver"]["outside_ref_ml"]["max"] == pytest.approx(5 * 20 * 20 * 2 / 1000)
    assert agg["structures"]["liver"]["outside_ref_ml"]["min"] == 0
    tumor = agg["structures"]["tumor"]
    assert tumor["dice_per_case_with_ref"] == pytest.approx(case["structures"]["tumor"]["dice"])
    assert tumor["dice_per_case"] == pytest.approx((case["structures"]["tumor"]["dice"] + 1) / 2)
    les = agg["lesions"]
    assert les["recall_10mm_plus"] == {"n": 1, ">0": 1.0, ">0.5": 1.0}
    assert les[">0"]["recall"] == 0.5
    assert (les["false_per_scan"]["max"], les["false_per_scan"]["median"]) == (2, 1)
    assert agg["tumor_outside_pred_liver_ml"]["total"] == pytest.approx(0.1)

    by_group = aggregate_groups([case, free], {"a": "source-1", "b": "source-2"})
    assert list(by_group) == ["source-1", "source-2"] and by_group["source-2"]["n_cases"] == 1
    table = targets_markdown({"all": agg, **by_group}).splitlines()
    assert len(table) == 5 and table[2].startswith("| all | 2 | ") and table[4].startswith("| source-2 | 1 | 1.000 |")


def test_aggregate_of_empty_masks_only():
    empty = _image(np.zeros((8, 16, 16)))
    agg = aggregate([case_metrics(empty, empty)])
    assert agg["structures"]["liver"]["dice_global"] == 1.0
    assert math.isnan(agg["lesions"][">0"]["recall"]) and math.isnan(agg["lesions"][">0"]["precision"])


# ----------------------------------------------------------------------------------------------------
# evaluate: matching, reports, CLI
# ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,expected", [
    ("volume-3.labels.nii.gz", "3"), ("segmentation-3.nii", "3"), ("volume-3.nii", "3"), ("3.seg.nrrd", "3"),
    ("case7_gt.nii.gz", "case7"), ("case7_seg.mha", "case7"), ("case7_Labels.nrrd", "case7"),
    ("case7_truth.nii", "case7"), ("case7_label.nii.gz", "case7"), ("liver_7.nii.gz", "liver_7"),
    ("hepaticvessel_12.nii.gz", "hepaticvessel_12"), ("volume-3.report.json", None), ("._liver_7.nii.gz", None),
])
def test_case_id(name, expected):
    assert case_id(name) == expected


def test_match_cases_prefers_label_maps(tmp_path, caplog):
    pred, ref = tmp_path / "pred", tmp_path / "ref"
    pred.mkdir(), ref.mkdir()
    for name in ("volume-0.labels.nii.gz", "volume-0.seg.nrrd", "volume-0.report.json", "volume-1.seg.nrrd",
                 "volume-5.labels.nii.gz"):
        (pred / name).write_bytes(b"")
    for name in ("segmentation-0.nii", "volume-0.nii", "segmentation-1.nii", "segmentation-2.nii"):
        (ref / name).write_bytes(b"")
    with caplog.at_level(logging.WARNING, logger="livertumorseg"):
        pairs = match_cases(pred, ref)
    assert [(c, p.name, r.name) for c, p, r in pairs] == [
        ("0", "volume-0.labels.nii.gz", "segmentation-0.nii"), ("1", "volume-1.seg.nrrd", "segmentation-1.nii")]
    text = caplog.text
    assert "volume-5.labels.nii.gz has no reference" in text and "segmentation-2.nii has no prediction" in text
    (pred / "volume-1_seg.nii.gz").write_bytes(b"")
    (pred / "volume-1.labels.nii.gz").write_bytes(b"")
    with pytest.raises(LiverTumorSegError, match="all give case id '1'"):
        match_cases(pred, ref)
    with pytest.raises(LiverTumorSegError, match="no prediction"):
        match_cases(pred / "volume-5.labels.nii.gz", ref)


def _write(img: sitk.Image, path) -> None:
    sitk.WriteImage(img, str(path))


@pytest.fixture()
def lits_folders(tmp_path):
    """LiTS-style reference folder and our-style prediction folder with 4 cases, one on the wrong grid."""
    shape, spacing = (20, 48, 48), (3.0, 2.5, 2.5)
    ref_dir, pred_dir = tmp_path / "ref", tmp_path / "pred"
    ref_dir.mkdir(), pred_dir.mkdir()
    refs, preds = [], []
    for i in range(4):
        ct, ref = make_phantom(shape_zyx=shape, spacing_zyx=spacing, seed=10 + i, lesion_diameters_mm=(12.0, 18.0))
        _, pred = make_phantom(shape_zyx=shape, spacing_zyx=spacing, seed=10 + i, lesion_diameters_mm=(12.0,))
        _write(ref, ref_dir / f"segmentation-{i}.nii")
        refs.append(ref)
        preds.append(pred)
    _write(ct, ref_dir / "volume-3.nii")  # a CT in the reference folder must not be taken for labels
    _write(preds[0], pred_dir / "volume-0.labels.nii.gz")
    write_seg_nrrd(preds[0], [LIVER, TUMOR], pred_dir / "volume-0.seg.nrrd")  # skipped: labels exist
    (pred_dir / "volume-0.report.json").write_text("{}", encoding="utf-8")
    _write(preds[1], pred_dir / "volume-1.labels.nii.gz")
    bad = sitk.Image(preds[2])
    bad.SetSpacing([s * 1.5 for s in preds[2].GetSpacing()])
    _write(bad, pred_dir / "volume-2.labels.nii.gz")
    write_seg_nrrd(preds[3], [LIVER, TUMOR], pred_dir / "volume-3.seg.nrrd")  # only a .seg.nrrd: read by name
    return pred_dir, ref_dir, preds, refs


def test_evaluate_folders_end_to_end(lits_folders, tmp_path):
    pred_dir, ref_dir, preds, refs = lits_folders
    prefix = tmp_path / "out" / "report"
    agg = evaluate_folders(pred_dir, ref_dir, prefix, progress=False)
    assert agg["n_cases"] == 3
    assert [f["case"] for f in agg["failures"]] == ["2"]
    assert agg["failures"][0]["error"].startswith("prediction and reference grids differ: spacing")
    assert "\n" not in agg["failures"][0]["error"]

    direct = aggregate([case_metrics(preds[i], refs[i]) for i in (0, 1, 3)])
    assert agg["structures"]["liver"]["dice_global"] == pytest.approx(direct["structures"]["liver"]["dice_global"])
    assert agg["structures"]["tumor"]["dice_per_case"] == pytest.approx(direct["structures"]["tumor"]["dice_per_case"])
    assert agg["lesions"][">0"] == direct["lesions"][">0"]

    with open(f"{prefix}.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 * 2 + 1
    row = next(r for r in rows if r["case"] == "3" and r["structure"] == "tumor")
    assert row["prediction"].endswith("volume-3.seg.nrrd") and row["reference"].endswith("segmentation-3.nii")
    assert float(row["dice"]) == pytest.approx(case_metrics(preds[3], refs[3])["structures"]["tumor"]["dice"])
    assert row["lesions_ref"] == "2" and row["lesions_pred"] == "1"
    assert next(r for r in rows if r["case"] == "2")["error"].startswith("prediction and reference grids differ")
    report = json.loads(open(f"{prefix}.json", encoding="utf-8").read())
    assert len(report["cases"]) == 3 and report["failures"][0]["case"] == "2"
    assert report["aggregate"]["structures"]["liver"]["dice_global"] == pytest.approx(
        agg["structures"]["liver"]["dice_global"])
    md = open(f"{prefix}.md", encoding="utf-8").read()
    assert "| liver |" in md and "Lesion detection" in md and "## Per case" in md and "| >0.5 |" in md

    with pytest.raises(LiverTumorSegError, match="--overwrite"):
        evaluate_folders(pred_dir, ref_dir, prefix, progress=False)
    evaluate_folders(pred_dir, ref_dir, prefix, overwrite=True, progress=False)
    assert sorted(p.name for p in prefix.parent.iterdir()) == ["report.csv", "report.json", "report.md"]


def _cli(argv):
    parser = argparse.ArgumentParser(prog="livertumorseg")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_evaluate_cli(lits_folders, tmp_path, capsys):
    pred_dir, ref_dir, preds, refs = lits_folders
    prefix = tmp_path / "cli"
    assert _cli(["evaluate", str(pred_dir), str(ref_dir), "-o", str(prefix), "--quiet"]) == 1
    out, err = capsys.readouterr()
    assert out.startswith("# Evaluation: 3 case(s), 1 failed") and "| tumor |" in out
    errors = [line for line in err.splitlines() if line.startswith("livertumorseg: error:")]
    assert len(errors) == 1 and errors[0].startswith("livertumorseg: error: 2: prediction and reference grids differ")

    assert _cli(["evaluate", str(pred_dir), str(ref_dir), "-o", str(prefix), "--quiet"]) == 1
    assert "--overwrite" in capsys.readouterr().err
    assert _cli(["evaluate", str(pred_dir), str(ref_dir), "-o", str(prefix), "--overwrite", "--quiet"]) == 1

    capsys.readouterr()
    # Single files, a custom structure list: exit 0, nothing written without -o.
    code = _cli(["evaluate", str(pred_dir / "volume-1.labels.nii.gz"), str(ref_dir / "segmentation-1.nii"),
                 "--structure", "liver=1,2", "--quiet"])
    out = capsys.readouterr().out
    assert code == 0 and "| liver |" in out and "tumor" not in out
    with pytest.raises(SystemExit):
        _cli(["evaluate", str(pred_dir), str(ref_dir), "--structure", "liver"])

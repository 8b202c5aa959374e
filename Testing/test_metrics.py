"""Tests of LiverTumorSegTrainLib.metrics and .evaluate on real computations.

Expected values come from independent sources: ITK's LabelOverlapMeasures and Hausdorff filters,
closed-form geometry (shifted boxes, concentric spheres, boundary-voxel counts of boxes), hand
counts with numpy, and the phantom's own record of the lesions it painted.
"""

from __future__ import annotations

import math
import tracemalloc

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from LiverTumorSegLib.errors import LiverTumorSegError
from LiverTumorSegLib.phantom import make_phantom_with_info
from LiverTumorSegTrainLib.metrics import (
    GridMismatchError,
    case_metrics,
    lesion_detection,
    overlap,
    surface_distances,
)

from conftest import label_image  # noqa: E402

ANISO = (2.5, 0.8, 0.7)  # (z, y, x) mm


# ----------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------



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
    f.Execute(label_image(pred), label_image(ref))
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
    h.Execute(label_image(a, ANISO), label_image(b, ANISO))
    assert surface_distances(a, b, ANISO)["msd"] == pytest.approx(h.GetHausdorffDistance(), rel=1e-9)


@pytest.mark.parametrize("shift_zyx", [(3, 0, 0), (0, 4, -2), (1, -2, 5)])
def test_msd_equals_itk_hausdorff_for_shifted_boxes(shift_zyx):
    shape = (24, 40, 40)
    a = _box_mask(shape, (6, 10, 10), (16, 28, 26))
    b = np.roll(a, shift_zyx, axis=(0, 1, 2))
    h = sitk.HausdorffDistanceImageFilter()
    h.Execute(label_image(a, ANISO), label_image(b, ANISO))
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
    empty = label_image(np.zeros((8, 16, 16)), ANISO)
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

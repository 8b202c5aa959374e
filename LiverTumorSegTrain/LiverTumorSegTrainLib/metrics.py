"""Segmentation metrics in physical units, with the conventions of the LiTS evaluation kit made explicit.

Published liver/tumour numbers are hard to compare because every system defines its metrics slightly
differently (per-slice vs per-volume Dice, sign of the RVD, what an empty mask scores, surface distances
set to 0 when a tumour is missed...). This module computes one well-defined set, states every
convention in the docstring of the function that applies it, and keeps the raw counts so that pooled
("global") numbers can be recomputed from per-case results.

All functions take numpy arrays in SimpleITK's (z, y, x) = (k, j, i) order with ``spacing_zyx`` in mm,
or ``SimpleITK.Image`` s; distances are in mm, volumes in mm³. Work is done on the bounding box of the
masks, so a 512×512×1000 scan never gets a full-size float temporary.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Mapping, Sequence

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from LiverTumorSegLib.errors import LiverTumorSegError
from LiverTumorSegLib.geometry import GRID_TOLERANCE, grid_difference
from LiverTumorSegLib.volumes import bounding_box

__all__ = [
    "DEFAULT_STRUCTURES",
    "DETECTION_THRESHOLDS",
    "GridMismatchError",
    "LabelMapError",
    "OVERLAP_METRICS",
    "SIZE_CLASSES",
    "SURFACE_METRICS",
    "case_metrics",
    "check_same_grid",
    "equivalent_diameter_mm",
    "lesion_detection",
    "overlap",
    "size_class",
    "surface_distances",
    "threshold_key",
]

#: LiTS label convention: liver = liver parenchyma + tumour, tumour = label 2.
DEFAULT_STRUCTURES: dict[str, tuple[int, ...]] = {"liver": (1, 2), "tumor": (2,)}

#: Lesion-detection overlap thresholds of the LiTS challenge: "any overlap" (> 0) and IoU > 0.5.
DETECTION_THRESHOLDS: tuple[float, ...] = (0.0, 0.5)

#: Size classes of reference lesions by equivalent-sphere diameter (mm): small < 10 ≤ medium ≤ 20 < large.
SIZE_CLASSES: tuple[str, ...] = ("small", "medium", "large")
SMALL_BELOW_MM, LARGE_ABOVE_MM = 10.0, 20.0

OVERLAP_METRICS: tuple[str, ...] = ("dice", "jaccard", "voe", "rvd", "rvd_lits")
SURFACE_METRICS: tuple[str, ...] = ("assd", "rmsd", "msd", "hd95")


_SIX_CONNECTED = ndimage.generate_binary_structure(3, 1)
_TWENTY_SIX_CONNECTED = np.ones((3, 3, 3), dtype=bool)


class GridMismatchError(LiverTumorSegError, ValueError):
    """Prediction and reference are not on the same voxel grid, so voxel-wise comparison is meaningless."""


class LabelMapError(LiverTumorSegError, ValueError):
    """An image given as a label map is not one (e.g. the CT volume was passed by mistake)."""


def threshold_key(t: float) -> str:
    """Dictionary/CSV key of a detection threshold: ``">0"``, ``">0.5"`` (detected means overlap > t)."""
    return f">{t:g}"


# --------------------------------------------------------------------------------------------------
# Volume overlap
# --------------------------------------------------------------------------------------------------


def overlap(pred: np.ndarray, ref: np.ndarray) -> dict:
    """Volume-overlap metrics of two boolean masks, plus the raw counts needed to pool them over cases.

    Returned keys: ``dice`` = 2|P∩G|/(|P|+|G|), ``jaccard`` = |P∩G|/|P∪G|, ``voe`` = 1 − jaccard,
    ``rvd`` = (|P|−|G|)/|G| (textbook relative volume difference: positive = over-segmentation),
    ``rvd_lits`` = (|G|−|P|)/|P| (what the LiTS kit reports as RVD: ``medpy.ravd(reference, prediction)``,
    opposite sign and the prediction as denominator), and the counts ``tp`` = |P∩G|, ``fp`` = |P\\G|,
    ``fn`` = |G\\P|, ``n_pred`` = |P|, ``n_ref`` = |G| (voxels).

    Conventions (LiTS per-case convention for empty masks):
    - both empty: dice = jaccard = 1, voe = 0, rvd = rvd_lits = 0 (a tumour-free case predicted
      tumour-free is perfect);
    - reference empty, prediction not: dice = jaccard = 0, voe = 1, rvd = NaN (undefined, |G| = 0),
      rvd_lits = −1;
    - prediction empty, reference not: dice = jaccard = 0, voe = 1, rvd = −1, rvd_lits = NaN.
    NaN values are left out of means by :func:`aggregate`, which reports how many were left out.
    """
    pred = np.asarray(pred, dtype=bool)
    ref = np.asarray(ref, dtype=bool)
    if pred.shape != ref.shape:
        raise ValueError(f"prediction and reference masks differ in shape: {pred.shape} vs {ref.shape}")
    n_pred = int(np.count_nonzero(pred))
    n_ref = int(np.count_nonzero(ref))
    tp = int(np.count_nonzero(pred & ref))
    union = n_pred + n_ref - tp
    if union == 0:
        dice = jaccard = 1.0
        rvd = rvd_lits = 0.0
    else:
        dice = 2.0 * tp / (n_pred + n_ref)
        jaccard = tp / union
        rvd = (n_pred - n_ref) / n_ref if n_ref else math.nan
        rvd_lits = (n_ref - n_pred) / n_pred if n_pred else math.nan
    return {"dice": dice, "jaccard": jaccard, "voe": 1.0 - jaccard, "rvd": rvd, "rvd_lits": rvd_lits,
            "tp": tp, "fp": n_pred - tp, "fn": n_ref - tp, "n_pred": n_pred, "n_ref": n_ref}


# --------------------------------------------------------------------------------------------------
# Surface distances
# --------------------------------------------------------------------------------------------------


def _is_set(slab: np.ndarray) -> np.ndarray:
    return slab


def _union_box(*arrays: np.ndarray, test=_is_set) -> tuple[slice, slice, slice] | None:
    """Bounding box of the voxels where ``test`` holds in any array, scanned slab by slab (no full-size
    temporary); ``test`` defaults to the boolean value of a mask."""
    boxes = [b for b in (bounding_box(a, test) for a in arrays) if b is not None]
    if not boxes:
        return None
    return tuple(slice(min(b[a].start for b in boxes), max(b[a].stop for b in boxes))
                 for a in range(3))  # type: ignore[return-value]


def _padded_crop(mask: np.ndarray, box: tuple[slice, slice, slice]) -> np.ndarray:
    """``mask[box]`` with one voxel of background all around (outside the image counts as background)."""
    out = np.zeros(tuple(s.stop - s.start + 2 for s in box), dtype=bool)
    out[1:-1, 1:-1, 1:-1] = mask[box]
    return out


def _surface(mask: np.ndarray) -> np.ndarray:
    """Boundary voxels: voxels of the mask with at least one 6-neighbour outside it (mask must be padded)."""
    return mask & ~ndimage.binary_erosion(mask, structure=_SIX_CONNECTED)


def _distances_to(target: np.ndarray, points: np.ndarray, spacing: tuple[float, float, float]) -> np.ndarray:
    """Distance (mm) from every voxel of ``points`` to the nearest voxel of ``target``.

    Uses the exact Euclidean feature transform (nearest target voxel, chosen with the anisotropic
    ``sampling``) and measures distances only at the query voxels: the same numbers as
    ``distance_transform_edt(~target, sampling)[points]`` without its full-box float64 temporaries
    (about 50 bytes per box voxel in scipy; this needs about 20).
    """
    nearest = ndimage.distance_transform_edt(~target, sampling=spacing, return_distances=False,
                                             return_indices=True)
    idx = np.nonzero(points)
    sq = np.zeros(idx[0].size)
    for axis in range(3):
        step = (nearest[axis][idx] - idx[axis]) * spacing[axis]
        sq += step * step
    return np.sqrt(sq)


def surface_distances(pred: np.ndarray, ref: np.ndarray, spacing_zyx: Sequence[float]) -> dict:
    """Symmetric surface distances (mm) between two boolean masks on the same (possibly anisotropic) grid.

    Definitions (those of medpy and of the LiTS kit's ``Surface`` class):
    - the surface of a mask is its set of boundary voxels: voxels of the mask with at least one
      6-neighbour outside the mask, where voxels outside the image count as outside;
    - for every surface voxel of one mask, its distance is the Euclidean distance (between voxel
      centres, in mm, using ``spacing_zyx``) to the nearest surface voxel of the other mask; pooling
      both directions gives the symmetric set D of |S_P| + |S_G| distances;
    - ``assd`` = mean(D) (average symmetric surface distance), ``rmsd`` = sqrt(mean(D²)),
      ``msd`` = max(D) (maximum symmetric surface distance = surface Hausdorff distance),
      ``hd95`` = 95th percentile of the pooled D with linear interpolation (``numpy.percentile``), as
      medpy's ``hd95``. Note that MONAI's ``compute_hausdorff_distance(percentile=95)`` instead takes the
      larger of the two *directed* 95th percentiles, which can be larger than this.
    Also returned: ``n_surface_pred``, ``n_surface_ref`` (voxels).

    Empty masks: both empty → all distances 0; exactly one empty → NaN (undefined). A missed tumour is
    *not* scored 0 (RA-UNet's in-script scorer did that, which gives a miss the best possible score);
    :func:`aggregate` leaves NaNs out of the means and reports how many cases that concerns.

    Distances come from ``scipy.ndimage.distance_transform_edt(..., sampling=spacing_zyx)`` (exact; its
    feature transform, so that only the surface voxels' distances are computed), on the bounding box of
    pred ∪ ref padded by one voxel, never on the whole volume: the nearest surface voxel of either mask
    always lies inside that box. Memory is about 20 bytes per box voxel, transiently.
    """
    pred = np.asarray(pred, dtype=bool)
    ref = np.asarray(ref, dtype=bool)
    if pred.shape != ref.shape or pred.ndim != 3:
        raise ValueError(f"expected two 3-D masks of the same shape, got {pred.shape} and {ref.shape}")
    spacing = tuple(float(s) for s in spacing_zyx)
    if len(spacing) != 3 or min(spacing) <= 0:
        raise ValueError(f"spacing_zyx must be 3 positive numbers, not {spacing_zyx}")
    box = _union_box(pred, ref)
    pred_box = _padded_crop(pred, box) if box is not None else None
    ref_box = _padded_crop(ref, box) if box is not None else None
    has_pred = box is not None and bool(pred_box.any())
    has_ref = box is not None and bool(ref_box.any())
    if not has_pred and not has_ref:
        return {"assd": 0.0, "rmsd": 0.0, "msd": 0.0, "hd95": 0.0, "n_surface_pred": 0, "n_surface_ref": 0}
    if not (has_pred and has_ref):
        n_p = int(np.count_nonzero(_surface(pred_box))) if has_pred else 0
        n_r = int(np.count_nonzero(_surface(ref_box))) if has_ref else 0
        return {"assd": math.nan, "rmsd": math.nan, "msd": math.nan, "hd95": math.nan,
                "n_surface_pred": n_p, "n_surface_ref": n_r}

    surf_pred = _surface(pred_box)
    surf_ref = _surface(ref_box)
    del pred_box, ref_box
    to_ref = _distances_to(surf_ref, surf_pred, spacing)
    to_pred = _distances_to(surf_pred, surf_ref, spacing)
    d = np.concatenate([to_ref, to_pred])
    return {"assd": float(d.mean()), "rmsd": float(np.sqrt(np.mean(d * d))), "msd": float(d.max()),
            "hd95": float(np.percentile(d, 95)), "n_surface_pred": int(to_ref.size),
            "n_surface_ref": int(to_pred.size)}


# --------------------------------------------------------------------------------------------------
# Lesion detection
# --------------------------------------------------------------------------------------------------


def equivalent_diameter_mm(volume_mm3: float | np.ndarray) -> float | np.ndarray:
    """Diameter of the sphere with the given volume: (6V/π)^(1/3); a size that ignores lesion shape."""
    return np.cbrt(6.0 * np.asarray(volume_mm3, dtype=float) / math.pi)


def size_class(diameter_mm: float) -> str:
    """``small`` (< 10 mm), ``medium`` (10–20 mm, both ends included) or ``large`` (> 20 mm)."""
    if diameter_mm < SMALL_BELOW_MM:
        return "small"
    return "large" if diameter_mm > LARGE_ABOVE_MM else "medium"


def lesion_detection(pred_lesion_mask: np.ndarray, ref_lesion_mask: np.ndarray,
                     spacing_zyx: Sequence[float],
                     thresholds: Sequence[float] = DETECTION_THRESHOLDS) -> dict:
    """Per-lesion detection of 3-D lesions (26-connected components), close to the LiTS challenge.

    Definition. Let G_j be a reference lesion and P_j the union of the predicted components that
    overlap G_j, without the voxels that lie in *other* reference lesions (so that one predicted blob
    covering two neighbouring lesions is not held against either; LiTS merges such lesions instead).
    The overlap of G_j is IoU_j = |G_j ∩ P_j| / |G_j ∪ P_j|, and G_j is *detected at threshold t* when
    IoU_j > t. At t = 0 this is "any overlap"; at t = 0.5 it is the LiTS "overlap > 0.5" criterion.
    A predicted component is a true positive at t when it overlaps at least one reference lesion that
    is detected at t; otherwise it is a false positive (so a blob that only grazes a lesion counts as a
    false positive at 0.5 but not at 0).

    Returns ``n_ref``, ``n_pred`` (component counts) and, per threshold key (``">0"``, ``">0.5"``):
    ``tp`` (detected reference lesions), ``fn`` = n_ref − tp, ``tp_pred`` (true-positive predicted
    components) and ``fp`` = n_pred − tp_pred. Recall = tp / n_ref and precision = tp_pred / n_pred
    (counted in the units where each is defined). ``lesions`` lists every reference lesion with
    ``n_voxels``, ``volume_mm3``, ``diameter_mm`` (equivalent-sphere diameter (6V/π)^(1/3)),
    ``size`` (small < 10 mm ≤ medium ≤ 20 mm < large), ``iou``, ``centroid_index_zyx`` (array index,
    fractional) and ``detected`` {threshold key: bool}, so that recall can be split by size; largest first.
    """
    pred = np.asarray(pred_lesion_mask, dtype=bool)
    ref = np.asarray(ref_lesion_mask, dtype=bool)
    if pred.shape != ref.shape or pred.ndim != 3:
        raise ValueError(f"expected two 3-D masks of the same shape, got {pred.shape} and {ref.shape}")
    spacing = tuple(float(s) for s in spacing_zyx)
    voxel_mm3 = float(np.prod(spacing))
    keys = [threshold_key(t) for t in thresholds]
    box = _union_box(pred, ref)
    if box is None:
        return {"n_ref": 0, "n_pred": 0, "lesions": [],
                **{k: {"tp": 0, "fn": 0, "tp_pred": 0, "fp": 0} for k in keys}}
    # Components never leave the union box, so labelling the crop labels the whole volume.
    ref_lab, n_ref = ndimage.label(ref[box], structure=_TWENTY_SIX_CONNECTED)
    pred_lab, n_pred = ndimage.label(pred[box], structure=_TWENTY_SIX_CONNECTED)
    ref_size = np.bincount(ref_lab.ravel(), minlength=n_ref + 1).astype(np.int64)
    pred_size = np.bincount(pred_lab.ravel(), minlength=n_pred + 1).astype(np.int64)

    # Sparse contingency table of (reference lesion, predicted component) overlaps.
    both = (ref_lab > 0) & (pred_lab > 0)
    codes = ref_lab[both].astype(np.int64) * (n_pred + 1) + pred_lab[both]
    pairs, counts = np.unique(codes, return_counts=True)
    pr, pp = pairs // (n_pred + 1), pairs % (n_pred + 1)

    inter = np.bincount(pr, weights=counts, minlength=n_ref + 1)        # |G_j ∩ P|
    in_any_ref = np.bincount(pp, weights=counts, minlength=n_pred + 1)  # voxels of P_i in any G
    pj_size = np.bincount(pr, weights=pred_size[pp], minlength=n_ref + 1)
    in_other_refs = np.bincount(pr, weights=in_any_ref[pp], minlength=n_ref + 1) - inter
    union = ref_size + (pj_size - in_other_refs) - inter
    iou = np.divide(inter, union, out=np.zeros(n_ref + 1), where=union > 0)

    result: dict = {"n_ref": int(n_ref), "n_pred": int(n_pred)}
    detected: dict[str, np.ndarray] = {}
    for t, key in zip(thresholds, keys):
        det = iou > t
        det[0] = False
        detected[key] = det
        tp_pred = int(np.unique(pp[det[pr]]).size)
        tp = int(np.count_nonzero(det))
        result[key] = {"tp": tp, "fn": int(n_ref) - tp, "tp_pred": tp_pred, "fp": int(n_pred) - tp_pred}

    volumes = ref_size[1:] * voxel_mm3
    diameters = equivalent_diameter_mm(volumes)
    offset = np.array([s.start for s in box], dtype=float)
    centroids = (np.array(ndimage.center_of_mass(ref_lab > 0, ref_lab, np.arange(1, n_ref + 1)), dtype=float)
                 .reshape(-1, 3) + offset)
    # Largest first (what a reader looks for), ties by position: an order that does not depend on the
    # raster order of the labelling, which changes with the array's orientation.
    order = sorted(range(n_ref), key=lambda j: (-int(ref_size[j + 1]), *centroids[j].round(6)))
    result["lesions"] = [
        {"n_voxels": int(ref_size[j + 1]), "volume_mm3": float(volumes[j]), "diameter_mm": float(diameters[j]),
         "size": size_class(float(diameters[j])), "iou": float(iou[j + 1]),
         "centroid_index_zyx": [float(c) for c in centroids[j]],
         "detected": {k: bool(detected[k][j + 1]) for k in keys}}
        for j in order]
    return result


# --------------------------------------------------------------------------------------------------
# Whole cases
# --------------------------------------------------------------------------------------------------


def check_same_grid(pred: sitk.Image, ref: sitk.Image, tolerance: float = GRID_TOLERANCE) -> None:
    """Raise :class:`GridMismatchError` unless size, spacing, origin and direction agree.

    Why: voxel-wise metrics silently compare the wrong voxels when a prediction was written on another
    grid (resampled, cropped, flipped), which looks like a bad model instead of a bad file.
    """
    for name, image in (("prediction", pred), ("reference", ref)):
        if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
            raise LabelMapError(f"{name} is not a 3-D scalar label map ({image.GetDimension()}-D, "
                                    f"{image.GetNumberOfComponentsPerPixel()} components)")
    diff = grid_difference(pred, ref, tolerance)
    if diff is not None:
        raise GridMismatchError(f"prediction and reference grids differ: {diff} (resample the prediction onto the "
                                f"reference grid, nearest neighbour)")


def _spacing_zyx(image: sitk.Image) -> tuple[float, float, float]:
    """Spacing in numpy (z, y, x) = (k, j, i) order; direction never matters for distances (orthonormal)."""
    return tuple(float(s) for s in reversed(image.GetSpacing()))  # type: ignore[return-value]


def case_metrics(pred: sitk.Image, ref: sitk.Image,
                 structures: Mapping[str, Sequence[int]] | None = None) -> dict:
    """All metrics of one case: overlap and surface metrics per structure, lesion detection for "tumor".

    ``structures`` maps a name to the label values that form its mask (default LiTS: liver = labels
    1 and 2, tumor = label 2). Images must be on the same grid (:func:`check_same_grid`); any
    orientation works, because distances use the spacing in numpy order and the direction (a rotation)
    preserves them. Only the bounding box of all labelled voxels of both images is processed.

    Raises :class:`GridMismatchError` for different grids and :class:`LabelMapError` for an image with
    negative values (a CT passed instead of its label map).

    Returns ``{"spacing_zyx", "size_xyz", "structures": {name: overlap() | surface_distances()},
    "lesions": lesion_detection()}`` (``lesions`` only when a structure is named "tumor"; each lesion
    also gets ``centroid_lps_mm``, its physical position).
    """
    structures = dict(DEFAULT_STRUCTURES if structures is None else structures)
    if not structures:
        raise ValueError("no structures to evaluate")
    check_same_grid(pred, ref)
    for name, image in (("prediction", pred), ("reference", ref)):
        low = sitk.MinimumMaximumImageFilter()
        low.Execute(image)
        if low.GetMinimum() < 0:  # every CT has air at about -1000 HU; a label map has no negative values
            raise LabelMapError(f"{name} has negative values (minimum {low.GetMinimum():g}): it looks like a CT "
                                f"image, not a label map; pass the label map (e.g. segmentation-N, not volume-N)")
    spacing = _spacing_zyx(ref)
    pa = sitk.GetArrayViewFromImage(pred)
    ra = sitk.GetArrayViewFromImage(ref)
    values = sorted({int(v) for vs in structures.values() for v in vs})
    box = _union_box(pa, ra, test=partial(np.isin, test_elements=values))
    if box is None:
        box = (slice(0, 1),) * 3  # nothing labelled anywhere: one background voxel gives the empty conventions
    pc, rc = pa[box], ra[box]

    out: dict = {"spacing_zyx": list(spacing), "size_xyz": list(ref.GetSize()), "structures": {}}
    for name, vals in structures.items():
        vals = [int(v) for v in vals]
        pm, rm = np.isin(pc, vals), np.isin(rc, vals)
        out["structures"][name] = {**overlap(pm, rm), **surface_distances(pm, rm, spacing)}
        if name == "tumor":
            det = lesion_detection(pm, rm, spacing)
            offset = np.array([s.start for s in box], dtype=float)
            for lesion in det["lesions"]:
                index_zyx = np.asarray(lesion["centroid_index_zyx"]) + offset
                lesion["centroid_index_zyx"] = [float(v) for v in index_zyx]
                lesion["centroid_lps_mm"] = list(ref.TransformContinuousIndexToPhysicalPoint(
                    [float(v) for v in index_zyx[::-1]]))
            # Equal-volume lesions: order by physical position, the same for every orientation.
            det["lesions"].sort(key=lambda les: (-les["n_voxels"], *np.round(les["centroid_lps_mm"], 6)))
            out["lesions"] = det
    if "liver" in structures and "tumor" in structures:
        organ = _largest_component_filled(np.isin(pc, [int(v) for v in structures["liver"]]))
        outside = np.count_nonzero(np.isin(pc, [int(v) for v in structures["tumor"]]) & ~organ)
        out["tumor_outside_pred_liver_ml"] = outside * float(np.prod(spacing)) / 1000.0
    return out


def _largest_component_filled(mask: np.ndarray) -> np.ndarray:
    """The largest face-connected component with its cavities filled: "the predicted liver" as the pipeline's
    post-processing defines it, so that tumour outside it (outside the organ, or in a second blob) can be counted."""
    lab, n = ndimage.label(mask, structure=_SIX_CONNECTED)
    if n == 0:
        return mask
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    return ndimage.binary_fill_holes(lab == int(sizes.argmax()))

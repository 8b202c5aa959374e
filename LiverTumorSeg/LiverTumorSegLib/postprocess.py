"""Channel bits -> final label map, with anatomical clean-up in physical units.

Organs keep their largest 3-D component with holes filled; lesions are kept only inside the slightly
dilated organ and above a minimum volume in mm³ (so the rules mean the same at any voxel size).
Morphology runs on the organ's bounding box only, and the label map is painted slab by slab in
place, so a 1000-slice scan needs no full-size temporaries.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .labels import LabelSpec
from .volumes import bounding_box, slabs

_SLAB = 32


@dataclass
class CropMask:
    """A boolean mask defined on a box ``[z0:z1, y0:y1, x0:x1]`` of the canonical volume."""

    mask: np.ndarray
    origin: tuple[int, int, int]

    def box(self) -> tuple[slice, slice, slice]:
        return tuple(slice(o, o + n) for o, n in zip(self.origin, self.mask.shape))  # type: ignore[return-value]


def _select(bits: np.ndarray, box: tuple[slice, ...], mask_bits: int, pad: int = 0) -> np.ndarray:
    """Boolean ``bits & mask_bits != 0`` over a box (with an empty border of ``pad``), built slab by slab."""
    shape = [sl.stop - sl.start + 2 * pad for sl in box]
    out = np.zeros(shape, dtype=bool)
    region = bits[box]
    inner = out[pad:shape[0] - pad, pad:shape[1] - pad, pad:shape[2] - pad] if pad else out
    for z in range(0, region.shape[0], _SLAB):
        np.not_equal(region[z:z + _SLAB] & region.dtype.type(mask_bits), 0, out=inner[z:z + _SLAB])
    return out


def _as_image(mask: np.ndarray, spacing_zyx: tuple[float, float, float] | None = None):
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(mask.view(np.uint8))
    if spacing_zyx is not None:
        img.SetSpacing(tuple(float(s) for s in spacing_zyx[::-1]))
    return img


def _component_sizes(mask: np.ndarray, fully_connected: bool):
    """Connected components (SimpleITK image) and their voxel counts (index = component label)."""
    import SimpleITK as sitk

    cc = sitk.ConnectedComponent(_as_image(mask), fully_connected)
    sizes = np.zeros(1, dtype=np.int64)
    for slab in slabs(sitk.GetArrayViewFromImage(cc)):  # bincount casts to int64: keep that slab-sized
        counts = np.bincount(slab.ravel())
        if counts.size > sizes.size:
            counts[:sizes.size] += sizes
            sizes = counts
        else:
            sizes[:counts.size] += counts
    return cc, sizes


def largest_component_filled(padded: np.ndarray) -> np.ndarray:
    """Largest face-connected component with enclosed cavities filled.

    ``padded`` must have an empty 1-voxel border, so that only truly enclosed cavities count as holes;
    the result is returned without it.
    """
    import SimpleITK as sitk

    if not padded.any():
        return padded[1:-1, 1:-1, 1:-1]
    cc, sizes = _component_sizes(padded, False)
    sizes[0] = 0
    largest = _as_image(sitk.GetArrayViewFromImage(cc) == int(sizes.argmax()))
    del cc
    filled = sitk.BinaryFillhole(largest, fullyConnected=False, foregroundValue=1)
    del largest
    return sitk.GetArrayViewFromImage(filled)[1:-1, 1:-1, 1:-1] > 0


def dilate(mask: np.ndarray, spacing_zyx: tuple[float, float, float], margin_mm: float) -> np.ndarray:
    """Binary dilation by a ball of ``margin_mm`` (a per-axis radius in voxels)."""
    import SimpleITK as sitk

    radius = [int(round(margin_mm / s)) for s in spacing_zyx[::-1]]
    if margin_mm <= 0 or not any(radius) or not mask.any():
        return mask
    out = sitk.BinaryDilate(_as_image(mask, spacing_zyx), radius, sitk.sitkBall, 0, 1)
    return sitk.GetArrayViewFromImage(out) > 0


def remove_small_components(mask: np.ndarray, spacing_zyx: tuple[float, float, float], min_mm3: float) -> np.ndarray:
    """Drop 26-connected components whose physical volume is below ``min_mm3``."""
    import SimpleITK as sitk

    min_voxels = int(math.ceil(min_mm3 / float(np.prod(spacing_zyx)) - 1e-9))
    if min_voxels <= 1 or not mask.any():
        return mask
    cc, sizes = _component_sizes(mask, True)
    keep = sizes >= min_voxels
    keep[0] = False
    return keep[sitk.GetArrayViewFromImage(cc)]


def component_confidence(mask: np.ndarray, probability: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(26-connected components of ``mask`` as an int array, mean probability of each component (index =
    component label; ``probability`` in 0..255 as the pipeline stores it, the result in 0..1))."""
    import SimpleITK as sitk

    cc = sitk.ConnectedComponent(_as_image(mask), True)
    comp = sitk.GetArrayFromImage(cc)
    counts = np.bincount(comp.ravel())
    sums = np.bincount(comp.ravel(), weights=np.asarray(probability, dtype=np.float64).ravel(), minlength=counts.size)
    return comp, np.divide(sums, 255.0 * counts, out=np.zeros(counts.size), where=counts > 0)


def remove_unconfident_components(mask: np.ndarray, probability: np.ndarray, min_confidence: float) -> np.ndarray:
    """Drop components whose mean probability is below ``min_confidence``: a lesion's confidence is what the
    network says of all of it, and a reader sees the same number next to each lesion in the report."""
    if min_confidence <= 0 or not mask.any():
        return mask
    comp, confidence = component_confidence(mask, probability)
    keep = confidence >= min_confidence
    keep[0] = False
    return keep[comp]


def finalize_labels(bits: np.ndarray, labels: tuple[LabelSpec, ...], spacing_zyx: tuple[float, float, float],
                    min_lesion_mm3: float, organ_margin_mm: float, min_lesion_confidence: float = 0.0,
                    lesion_probability: dict[int, np.ndarray] | None = None) -> None:
    """Turn ``bits`` (bit i set where label i was predicted) into label values, in place.

    Where labels overlap the later one wins (the authors' channels are nested: liver ⊇ tumour). With
    ``lesion_probability`` (label index -> 0..255 map on the same grid), lesion components whose mean
    probability is below ``min_lesion_confidence`` are dropped too.
    """
    organ_bits = [i for i, lab in enumerate(labels) if lab.role == "organ"]
    lesion_bits = [i for i, lab in enumerate(labels) if lab.role == "lesion"]
    bit = bits.dtype.type  # one bit per label, in the bits array's own integer type
    lesion_mask_bits = bit(sum(1 << i for i in lesion_bits))
    processed: dict[int, CropMask | None] = {}

    organ_union: CropMask | None = None
    for i in organ_bits:
        # tumour is liver tissue: include lesion predictions so a tumour never punches a hole in the organ
        box = bounding_box(bits, lambda slab: (slab & bit((1 << i) | lesion_mask_bits)) != 0)
        if box is None:
            processed[i] = None
            continue
        padded = _select(bits, box, (1 << i) | lesion_mask_bits, pad=1)
        processed[i] = CropMask(largest_component_filled(padded), tuple(s.start for s in box))
        del padded
    organs = [m for m in (processed[i] for i in organ_bits) if m is not None]
    if organs:
        margin = tuple(int(math.ceil(organ_margin_mm / s)) for s in spacing_zyx)
        z0 = [max(0, min(m.origin[a] for m in organs) - margin[a]) for a in range(3)]
        z1 = [min(bits.shape[a], max(m.origin[a] + m.mask.shape[a] for m in organs) + margin[a]) for a in range(3)]
        allowed = np.zeros([b - a for a, b in zip(z0, z1)], dtype=bool)
        for m in organs:
            allowed[tuple(slice(o - a, o - a + n) for o, a, n in zip(m.origin, z0, m.mask.shape))] |= m.mask
        organ_union = CropMask(dilate(allowed, spacing_zyx, organ_margin_mm), tuple(z0))
        del allowed

    for i in lesion_bits:
        if organ_bits:
            if organ_union is None:
                processed[i] = None
                continue
            box = organ_union.box()
            crop = _select(bits, box, 1 << i)
            crop &= organ_union.mask
        else:
            box = bounding_box(bits, lambda slab: (slab & bit(1 << i)) != 0)
            if box is None:
                processed[i] = None
                continue
            crop = _select(bits, box, 1 << i)
        crop = remove_small_components(crop, spacing_zyx, min_lesion_mm3)
        if lesion_probability is not None and i in lesion_probability:
            crop = remove_unconfident_components(crop, lesion_probability[i][box], min_lesion_confidence)
        processed[i] = CropMask(crop, tuple(s.start for s in box))

    _paint(bits, labels, processed)


def _paint(bits: np.ndarray, labels: tuple[LabelSpec, ...], processed: dict[int, CropMask | None]) -> None:
    """Write label values slab by slab, reading the raw bits of unprocessed labels before overwriting."""
    for z in range(0, bits.shape[0], _SLAB):
        zs = slice(z, min(bits.shape[0], z + _SLAB))
        raw = np.array(bits[zs])
        out = np.zeros_like(raw)
        for i, lab in enumerate(labels):
            if i not in processed:
                out[(raw & raw.dtype.type(1 << i)) != 0] = lab.value
                continue
            m = processed[i]
            if m is None:
                continue
            lo, hi = max(z, m.origin[0]), min(zs.stop, m.origin[0] + m.mask.shape[0])
            if lo >= hi:
                continue
            part = m.mask[lo - m.origin[0]:hi - m.origin[0]]
            y0, x0 = m.origin[1], m.origin[2]
            region = out[lo - z:hi - z, y0:y0 + part.shape[1], x0:x0 + part.shape[2]]
            region[part] = lab.value
        bits[zs] = out

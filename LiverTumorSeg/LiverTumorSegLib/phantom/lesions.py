"""The label map: the liver, and lesions placed inside it without touching each other or its edge."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import SimpleITK as sitk

from .anatomy import Anatomy
from .constants import LESION_MAX_MM, LESION_MIN_MM, LIVER_LABEL, SLAB_VOXELS, TUMOR_LABEL
from .info import LesionInfo


def slabs(n: int, plane_voxels: int) -> list[tuple[int, int]]:
    step = max(1, SLAB_VOXELS // max(1, plane_voxels))
    return [(k, min(n, k + step)) for k in range(0, n, step)]


def draw_liver(anat: Anatomy, labels: np.ndarray) -> tuple[slice, slice, slice]:
    """Writes the liver (label 1) and returns its bounding box padded by one voxel."""
    geo = anat.geo
    nz, ny, nx = geo.shape
    cx, cy = anat.liver_centre(np.array([anat.z_bot, anat.z_top]))
    r = anat.lv_bound
    k0, k1 = geo.index_range(0, anat.z_bot, anat.z_top)
    j0, j1 = geo.index_range(1, min(cy) - r, max(cy) + r)
    i0, i1 = geo.index_range(2, min(cx) - r, max(cx) + r)
    ys, xs = geo.y[j0:j1], geo.x[i0:i1]
    mask = np.zeros((k1 - k0, j1 - j0, i1 - i0), dtype=np.uint8)
    for a0, a1 in slabs(k1 - k0, mask.shape[1] * mask.shape[2]):
        zs = geo.z[k0 + a0:k0 + a1]
        m = anat.liver_shape(zs, ys, xs)
        m &= anat.liver_allowed(zs, ys, xs)
        mask[a0:a1] = m
    if not mask.any():
        raise RuntimeError("phantom liver is empty: field of view or slice count too small")

    # Topology guarantees (the design is star-shaped per slice, but cuts by other organs and
    # discretisation could leave a detached sliver or a pinhole): largest 6-connected component,
    # then 3-D hole filling with the same filter a test would use.
    kk, jj, ii = (np.flatnonzero(mask.any(axis=ax)) for ax in ((1, 2), (0, 2), (0, 1)))
    bb = (slice(kk[0], kk[-1] + 1), slice(jj[0], jj[-1] + 1), slice(ii[0], ii[-1] + 1))
    img = sitk.GetImageFromArray(np.pad(mask[bb], 1))
    cc = sitk.RelabelComponent(sitk.ConnectedComponent(img, False), sortByObjectSize=True)
    largest = sitk.Cast(sitk.Equal(cc, 1), sitk.sitkUInt8)
    filled = sitk.BinaryFillhole(largest, fullyConnected=False, foregroundValue=1)
    liver = sitk.GetArrayFromImage(filled)
    crop = (slice(k0 + bb[0].start - 1, k0 + bb[0].stop + 1),
            slice(j0 + bb[1].start - 1, j0 + bb[1].stop + 1),
            slice(i0 + bb[2].start - 1, i0 + bb[2].stop + 1))
    if min(s.start for s in crop) < 0 or any(s.stop > n for s, n in zip(crop, geo.shape)):
        raise RuntimeError("phantom liver touches the volume border")  # excluded by construction
    labels[crop] = liver * np.uint8(LIVER_LABEL)
    return crop


def _dilate_box(m: np.ndarray) -> np.ndarray:
    """3x3x3 (26-neighbour) binary dilation without scipy: separable max along each axis."""
    out = m.copy()
    for ax in range(3):
        src = out.copy()
        lo = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[ax], hi[ax] = slice(0, -1), slice(1, None)
        out[tuple(lo)] |= src[tuple(hi)]
        out[tuple(hi)] |= src[tuple(lo)]
    return out


@dataclass
class LesionPaint:
    block: tuple[slice, slice, slice]  # in full canonical indices
    weight: np.ndarray  # float32 soft weight (0..1) of the lesion intensity
    value: np.ndarray | float  # HU inside the lesion (may vary: enhancing rim)


_PAD = 4


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def place_lesions(anat: Anatomy, labels: np.ndarray, crop: tuple[slice, slice, slice],
                   rng: np.random.Generator, n_lesions: int | None,
                   diameters: Sequence[float] | None) -> tuple[list[LesionInfo], list[LesionPaint]]:
    """Places lesions largest first where the liver is deep enough, shrinking those that do not fit,
    so that each lesion is surrounded by liver and separated from the others. A random first
    placement can block a later lesion, so when one had to shrink a few other arrangements are
    tried and the least-shrunk one is kept."""
    geo = anat.geo
    sp = np.array(geo.spacing)
    max_sp = float(sp.max())
    # work on the liver crop padded by _PAD voxels so that every candidate's block fits in it
    liver_c = np.pad(labels[crop] > 0, _PAD)
    img = sitk.GetImageFromArray(liver_c.astype(np.uint8))
    img.SetSpacing(tuple(float(s) for s in sp[::-1]))
    depth = sitk.GetArrayFromImage(sitk.SignedMaurerDistanceMap(
        img, insideIsPositive=True, squaredDistance=False, useImageSpacing=True))
    depth[~liver_c] = -1.0
    margin = float(sp.min())  # pre-filter only (necessary, not sufficient): _try_place decides
    max_diam = max(0.0, 2.0 * (float(depth.max()) - margin))
    strict = diameters is not None or n_lesions is not None

    if diameters is not None:
        requested = [float(d) for d in diameters]
        if any(not d > 0 for d in requested):
            raise ValueError("lesion diameters must be positive")
    else:
        n = int(rng.integers(0, 5)) if n_lesions is None else int(n_lesions)
        hi = min(LESION_MAX_MM, max_diam)
        lo = min(max(LESION_MIN_MM, 2.0 * max_sp), hi)
        requested = [float(math.exp(rng.uniform(math.log(max(lo, 1e-3)), math.log(max(hi, 1e-3)))))
                     if hi > 0 else LESION_MIN_MM for _ in range(n)]
    kinds = ["hypodense" if rng.uniform() < 0.65 else "hyperdense" for _ in requested]

    best = None
    for _attempt in range(_PLACEMENT_ATTEMPTS):
        placed = _arrange(rng, liver_c, depth, sp, requested, margin)
        shrink = sum(requested[i] - 2.0 * p[1] for i, p in placed.items())
        shrink += sum(requested[i] for i in range(len(requested)) if i not in placed)
        if best is None or shrink < best[0] - 1e-9:
            best = (shrink, placed)
        if shrink < 1e-6:
            break
    placed = best[1]
    if strict and len(placed) < len(requested):
        raise RuntimeError(f"cannot fit {len(requested)} lesions inside the phantom liver "
                           f"({len(placed)} placed); ask for fewer or smaller lesions")

    offs = np.array([s.start for s in crop]) - _PAD
    tumour_c = np.zeros(liver_c.shape, bool)
    infos: dict[int, LesionInfo] = {}
    paints: list[LesionPaint] = []
    for idx in sorted(placed):
        (centre_idx, block_c, mask, ray_depth), r, e = placed[idx]
        tumour_c[block_c] |= mask
        centre_mm = (np.array(centre_idx) + offs - (np.array(geo.shape) - 1) / 2.0) * sp
        full_idx = tuple(int(c + o) for c, o in zip(centre_idx, offs))
        # image block in canonical indices, clipped to the volume (the padding may stick out)
        lo = [max(0, b.start + o) for b, o in zip(block_c, offs)]
        hi = [min(n, b.stop + o) for b, o, n in zip(block_c, offs, geo.shape)]
        inner = tuple(slice(l_ - b.start - o, h_ - b.start - o)
                      for l_, h_, b, o in zip(lo, hi, block_c, offs))
        block = tuple(slice(l_, h_) for l_, h_ in zip(lo, hi))
        ray_depth = ray_depth[inner]

        kind = kinds[idx]
        if kind == "hypodense":
            hu = float(rng.uniform(20.0, min(60.0, anat.liver_hu - 30.0)))
        else:
            hu = float(rng.uniform(max(150.0, anat.liver_hu + 35.0), 190.0))
        edge = 0.4 * geo.px
        weight = (1.0 / (1.0 + np.exp(-np.clip(ray_depth / edge, -30, 30)))).astype(np.float32)
        value: np.ndarray | float = hu
        if kind == "hypodense" and r >= 8.0 and rng.uniform() < 0.5:  # enhancing rim (metastasis)
            rim_w = max(1.0 * geo.px, 0.1 * r)
            value = (hu + rng.uniform(10.0, 25.0)
                     * np.exp(-(np.maximum(ray_depth, 0.0) / rim_w) ** 2)).astype(np.float32)
        paints.append(LesionPaint(block, weight, value))
        infos[idx] = LesionInfo(
            centre_mm=(float(centre_mm[2]), float(centre_mm[1]), float(centre_mm[0])),
            centre_index_zyx=full_idx,
            semi_axes_mm=tuple(float(v) for v in r * e),
            diameter_mm=float(2.0 * r), requested_diameter_mm=float(requested[idx]),
            n_voxels=int(np.count_nonzero(mask)), hu=hu, kind=kind)

    lab_c = labels[crop]
    lab_c[tumour_c[(slice(_PAD, -_PAD),) * 3]] = TUMOR_LABEL
    return [infos[i] for i in sorted(infos)], paints


_PLACEMENT_ATTEMPTS = 6


def _arrange(rng: np.random.Generator, liver_c: np.ndarray, depth: np.ndarray, sp: np.ndarray,
             requested: list[float], margin: float) -> dict:
    """One arrangement of all lesions, largest first: {index: (placement, radius, axis factors)}.
    Lesions that cannot be placed even at one voxel are missing from the result."""
    tumour_c = np.zeros(liver_c.shape, bool)
    placed: list[tuple[np.ndarray, float]] = []  # (crop-local centre in mm (z, y, x), bounding radius)
    out: dict = {}
    for idx in sorted(range(len(requested)), key=lambda i: -requested[i]):
        e = rng.uniform(0.85, 1.15, 3)
        e /= np.prod(e) ** (1.0 / 3.0)  # unit volume factor: equivalent diameter stays 2r
        rot = _random_rotation(rng)
        r = requested[idx] / 2.0
        result = None
        while result is None:
            r_max = r * float(e.max())
            result = _try_place(rng, liver_c, tumour_c, depth, placed, sp, r, e, rot, r_max, margin)
            if result is None and float(e.max()) > 1.0:
                e = np.ones(3)  # a sphere fits where a same-volume ellipsoid may not: try it first
                continue
            if result is None:
                if r < 0.25 * float(sp.min()):
                    result = _try_place(rng, liver_c, tumour_c, depth, placed, sp, r, e, rot,
                                        r_max, margin, force_deepest=True)
                    break
                r *= 0.9
        if result is None:
            continue
        centre_idx, block_c, mask, _rho, ray_depth = result
        tumour_c[block_c] |= mask
        placed.append((np.array(centre_idx) * sp, r * float(e.max())))
        out[idx] = ((centre_idx, block_c, mask, ray_depth), r, e)
    return out


def _try_place(rng, liver_c, tumour_c, depth, placed, sp, r, e, rot, r_max, margin,
               force_deepest: bool = False):
    """One attempt at a lesion of radius r: candidate centres deep enough in the liver and far
    enough from the other lesions, then an exact check of the voxelised lesion."""
    need = r_max + margin
    if force_deepest:
        cand = np.argsort(depth, axis=None)[::-1][:256]
    else:
        cand = np.flatnonzero(depth >= need)
        if cand.size == 0:
            return None
        if cand.size > 4096:
            cand = rng.choice(cand, 4096, replace=False)
    shape = np.array(liver_c.shape)
    czyx = np.stack(np.unravel_index(cand, liver_c.shape), axis=1)
    if placed and not force_deepest:
        pos = czyx * sp
        ok = np.ones(len(cand), bool)
        for c_loc, rr in placed:
            ok &= np.linalg.norm(pos - c_loc, axis=1) >= r_max + rr + margin
        czyx = czyx[ok]
    order = rng.permutation(len(czyx)) if not force_deepest else np.arange(len(czyx))
    half = np.ceil(r_max / sp).astype(int) + 3
    for t in order[:64]:
        c = czyx[t]
        lo, hi = c - half, c + half + 1
        if (lo < 0).any() or (hi > shape).any():
            continue
        block = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
        off = [(np.arange(a, b) - cc) * s for a, b, cc, s in zip(lo, hi, c, sp)]
        dz, dy, dx = off[0][:, None, None], off[1][None, :, None], off[2][None, None, :]
        # rotated coordinates in the lesion frame, then normalised radius
        q = np.zeros(tuple(hi - lo), np.float64)
        for row in range(3):
            comp = rot[0, row] * dz + rot[1, row] * dy + rot[2, row] * dx
            q = q + (comp / (r * e[row])) ** 2
        rho = np.sqrt(q)
        mask = rho <= 1.0
        dil = _dilate_box(mask)
        if not liver_c[block][dil].all() or tumour_c[block][_dilate_box(dil)].any():
            continue
        dist = np.sqrt(dz ** 2 + dy ** 2 + dx ** 2)
        ray = np.divide(dist, rho, out=np.full(rho.shape, r, float), where=rho > 1e-6)
        return tuple(int(v) for v in c), block, mask, rho, ray - dist
    return None


def unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def perturb(rng: np.random.Generator, d: np.ndarray, angle: float) -> np.ndarray:
    """Direction d turned by ``angle`` radians about a random axis perpendicular to it."""
    p = unit(np.cross(d, rng.normal(size=3)))
    return unit(d * math.cos(angle) + p * math.sin(angle))

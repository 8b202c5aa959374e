"""Hepatic vessels: branching tubes inside the liver, painted as liver in the labels."""

from __future__ import annotations

import numpy as np

from .anatomy import Anatomy, soft
from .lesions import perturb, unit


def draw_vessels(anat: Anatomy, labels: np.ndarray, crop: tuple[slice, slice, slice],
                  rng: np.random.Generator) -> np.ndarray:
    """Soft weights (0..1, float32, on the liver crop) of a portal and a hepatic venous tree.

    Vessels only change the image, never the labels (LiTS labels vessels inside the liver as liver).
    """
    geo = anat.geo
    s, px = anat.s, geo.px
    rx, ry, L = anat.lv_rx, anat.lv_ry, anat.L
    segments: list[tuple[np.ndarray, np.ndarray, float]] = []  # (start xyz, end xyz, radius)
    # vessels stay visible (>= ~1 pixel wide) unless the liver itself is only a few pixels across
    r_min = min(0.6 * px, 0.04 * min(rx, ry))

    def grow(p: np.ndarray, d: np.ndarray, length: float, radius: float, level: int) -> None:
        end = p + d * length
        segments.append((p, end, max(radius, r_min)))
        if level == 0:
            return
        for _ in range(2):
            nd = perturb(rng, d, rng.uniform(0.35, 0.8))
            grow(end, nd, length * rng.uniform(0.6, 0.8), radius * 0.72, level - 1)

    zc = anat.z_bot + 0.4 * L
    cx, cy = anat.liver_centre(np.array([zc]))
    hilum = np.array([cx[0] + 0.35 * rx, cy[0] + 0.1 * ry, zc])
    r0 = 5.5 * s
    for d, frac in (((-1.0, 0.1, 0.25), 0.45), ((0.8, -0.5, 0.3), 0.35)):
        grow(hilum, perturb(rng, unit(np.array(d)), rng.uniform(0.0, 0.25)),
             frac * rx + 0.1 * L, r0, 3)
    zt = anat.z_bot + 0.85 * L
    confluence = np.array([anat.ivc.cx, anat.ivc.cy, zt])
    for d in ((-1.0, -0.2, -0.5), (-0.3, -0.8, -0.4), (0.6, -0.8, -0.3)):
        grow(confluence, perturb(rng, unit(np.array(d)), rng.uniform(0.0, 0.25)),
             0.4 * max(rx, ry) + 0.1 * L, 4.5 * s, 2)

    shape_c = tuple(sl.stop - sl.start for sl in crop)
    wv = np.zeros(shape_c, np.float32)
    zc_, yc_, xc_ = geo.z[crop[0]], geo.y[crop[1]], geo.x[crop[2]]
    for a, b, r in segments:
        lo, hi = np.minimum(a, b) - r - 2 * px, np.maximum(a, b) + r + 2 * px
        ks = np.flatnonzero((zc_ >= lo[2]) & (zc_ <= hi[2]))
        js = np.flatnonzero((yc_ >= lo[1]) & (yc_ <= hi[1]))
        is_ = np.flatnonzero((xc_ >= lo[0]) & (xc_ <= hi[0]))
        if ks.size == 0 or js.size == 0 or is_.size == 0:
            continue
        blk = (slice(ks[0], ks[-1] + 1), slice(js[0], js[-1] + 1), slice(is_[0], is_[-1] + 1))
        dx = (xc_[blk[2]] - a[0])[None, None, :]
        dy = (yc_[blk[1]] - a[1])[None, :, None]
        dz = (zc_[blk[0]] - a[2])[:, None, None]
        v = b - a
        t = np.clip((dx * v[0] + dy * v[1] + dz * v[2]) / float(v @ v), 0.0, 1.0)
        dist = np.sqrt((dx - t * v[0]) ** 2 + (dy - t * v[1]) ** 2 + (dz - t * v[2]) ** 2)
        w = soft((r - dist).astype(np.float32), px)
        np.maximum(wv[blk], w, out=wv[blk])
    wv *= labels[crop] > 0
    return wv

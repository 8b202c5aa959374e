"""The CT image painted from the labels and the anatomy, slab by slab, in HU."""

from __future__ import annotations

import math

import numpy as np
import SimpleITK as sitk

from .anatomy import Anatomy, Blob, Geometry, soft
from .constants import AIR_HU, HU_MAX, HU_MIN
from .lesions import LesionPaint, slabs


def _paint_blob(img: np.ndarray, k0: int, k1: int, geo: Geometry, blob: Blob,
                value: float | np.ndarray, zweight: np.ndarray | None = None) -> None:
    """Blends ``value`` into the slab ``img`` (canonical slices k0:k1) inside ``blob``, with a
    one-pixel anti-aliased edge. ``value`` may be an array broadcastable to the blob's block."""
    blk = blob.block(geo, k0, k1, margin=2.0 * geo.px)
    if blk is None:
        return
    _, depth = blob.rho_and_depth(geo.z[blk[0]], geo.y[blk[1]], geo.x[blk[2]])
    w = soft(depth, geo.px)
    if zweight is not None:
        w *= zweight[blk[0].start - k0:blk[0].stop - k0, None, None]
    sub = img[blk[0].start - k0:blk[0].stop - k0, blk[1], blk[2]]
    if callable(value):
        value = value(blk)
    sub += (value - sub) * w


def paint_image(anat: Anatomy, labels: np.ndarray, crop: tuple[slice, slice, slice],
                 vessel_w: np.ndarray, lesion_paint: list[LesionPaint], noise_hu: float,
                 rng: np.random.Generator, out_dtype: type) -> np.ndarray:
    geo = anat.geo
    nz, ny, nx = geo.shape
    px, s = geo.px, anat.s
    y, x = geo.y, geo.x
    out = np.empty(geo.shape, out_dtype)

    fat_t = anat.fat_thickness(y, x)
    wall_in = fat_t + np.float32(anat.mus_t)
    theta = np.arctan2(y[:, None], x[None, :])
    phi = np.abs(np.angle(np.exp(1j * (theta - math.pi / 2))))  # angle from the posterior midline
    rib_ang = ((phi > 0.45) & (phi < math.pi - 0.35)).astype(np.float32)
    rib_zoff = (anat.rib_slope * phi - anat.rib_phase).astype(np.float32)
    rib_lo = fat_t + np.float32(0.5 * (anat.mus_t - anat.rib_t))
    rib_hi = rib_lo + np.float32(anat.rib_t)
    zl2d = (anat.dia_z - anat.dia_drop * ((x[None, :] / anat.a) ** 2 + (y[:, None] / anat.b) ** 2)
            ).astype(np.float32)
    bowel_plane = anat.bowel.plane(y, x)
    liver_plane = anat.lv_tex.plane(geo.y[crop[1]], geo.x[crop[2]])

    gap_kidney = max(4.0 * s, px)
    stomach_lumen = anat.stomach.grown(-max(3.0 * s, px))
    gas_level = anat.stomach.cy - 0.35 * anat.stomach.ay

    def stomach_value(blk: tuple[slice, slice, slice]) -> np.ndarray | float:
        if not anat.stomach_gas:
            return 10.0
        return np.where(y[blk[1]] < gas_level, -950.0, 10.0).astype(np.float32)[None, :, None]

    for k0, k1 in slabs(nz, ny * nx):
        zs = geo.z[k0:k1]
        depth = anat.body_depth(zs, y, x)
        img = np.full(depth.shape, AIR_HU, np.float32)
        img += np.float32(anat.fat_hu - AIR_HU) * soft(depth, px)
        w = soft(depth - fat_t, px)
        img += (np.float32(anat.muscle_hu) - img) * w

        if zs[-1] > anat.rib_z_lo:  # ribs: oblique partial rings in the body wall, periodic in z
            dz = np.mod(zs[:, None, None].astype(np.float32) + rib_zoff, anat.rib_period)
            dz -= np.float32(anat.rib_period / 2)
            np.abs(dz, out=dz)
            wz = soft(np.float32(anat.rib_wz / 2) - dz, 0.5 * geo.sz)
            wz *= (zs > anat.rib_z_lo)[:, None, None]
            wz *= rib_ang
            wz *= np.minimum(soft(depth - rib_lo, px), soft(rib_hi - depth, px))
            img += (np.float32(anat.rib_hu) - img) * wz
            del dz, wz

        # abdominal cavity: fat with bowel loops (and some gas), lungs above the diaphragm
        f = anat.bowel.evaluate(bowel_plane, zs)
        content = np.clip((f - np.float32(anat.bowel_thr)) / np.float32(0.3), 0.0, 1.0)
        content *= np.float32(anat.bowel_hu - anat.fat_hu)
        content += np.float32(anat.fat_hu)
        wg = np.clip((f - np.float32(anat.gas_thr)) / np.float32(0.2), 0.0, 1.0)
        content += (np.float32(-900.0) - content) * wg
        wl = soft(zs[:, None, None].astype(np.float32) - zl2d, geo.sz)
        content += (np.float32(anat.lung_hu) - content) * wl
        w = soft(depth - wall_in, px)
        img += (content - img) * w
        del f, content, wg, wl, w, depth

        for cortex, medulla, sinus in anat.kidneys:
            _paint_blob(img, k0, k1, geo, cortex.grown(gap_kidney), anat.fat_hu)
            _paint_blob(img, k0, k1, geo, cortex, anat.kidney_hu)
            _paint_blob(img, k0, k1, geo, medulla, anat.medulla_hu)
            _paint_blob(img, k0, k1, geo, sinus, -60.0)
        _paint_blob(img, k0, k1, geo, anat.heart, 120.0)
        _paint_blob(img, k0, k1, geo, anat.spleen, anat.spleen_hu)
        _paint_blob(img, k0, k1, geo, anat.stomach, 45.0)
        _paint_blob(img, k0, k1, geo, stomach_lumen, stomach_value)
        for blob in anat.psoas + anat.paraspinal:
            _paint_blob(img, k0, k1, geo, blob, anat.muscle_hu)
        _paint_blob(img, k0, k1, geo, anat.aorta, anat.aorta_hu)
        _paint_blob(img, k0, k1, geo, anat.ivc, anat.ivc_hu)
        _paint_blob(img, k0, k1, geo, anat.vbody, anat.cortex_hu)
        _paint_blob(img, k0, k1, geo, anat.vcancel, anat.spine_hu)
        dd = np.abs(np.mod(zs - anat.disc_phase, anat.disc_period) - anat.disc_period / 2)
        disc = np.clip(0.5 + (anat.disc_h / 2 - dd) / geo.sz, 0.0, 1.0).astype(np.float32)
        _paint_blob(img, k0, k1, geo, anat.vbody, anat.disc_hu, zweight=disc)
        _paint_blob(img, k0, k1, geo, anat.arch, anat.arch_hu)
        _paint_blob(img, k0, k1, geo, anat.canal, 15.0)
        _paint_blob(img, k0, k1, geo, anat.spinous, anat.arch_hu)

        # liver (hard edge = exactly the label), vessels, lesions
        a0, a1 = max(k0, crop[0].start), min(k1, crop[0].stop)
        if a0 < a1:
            sub = img[a0 - k0:a1 - k0, crop[1], crop[2]]
            liv = labels[a0:a1, crop[1], crop[2]] > 0
            tex = anat.lv_tex.evaluate(liver_plane, geo.z[a0:a1])
            tex *= np.float32(anat.lv_tex_amp)
            tex += np.float32(anat.liver_hu)
            np.copyto(sub, tex, where=liv)
            vw = vessel_w[a0 - crop[0].start:a1 - crop[0].start]
            sub += (np.float32(anat.vessel_hu) - sub) * vw
        for les in lesion_paint:
            b0, b1 = max(k0, les.block[0].start), min(k1, les.block[0].stop)
            if b0 >= b1:
                continue
            zsl = slice(b0 - les.block[0].start, b1 - les.block[0].start)
            sub = img[b0 - k0:b1 - k0, les.block[1], les.block[2]]
            w = les.weight[zsl] * (labels[b0:b1, les.block[1], les.block[2]] > 0)
            val = les.value[zsl] if isinstance(les.value, np.ndarray) else np.float32(les.value)
            sub += (val - sub) * w

        if noise_hu > 0:
            img += rng.standard_normal(img.shape, dtype=np.float32) * np.float32(noise_hu)
        if np.issubdtype(out_dtype, np.integer):
            np.rint(img, out=img)
        np.clip(img, HU_MIN, HU_MAX, out=img)
        out[k0:k1] = img
    return out


def to_image(arr: np.ndarray, geo: Geometry) -> sitk.Image:
    """Canonical LPS image: identity direction, volume centred on (0, 0, 0) mm."""
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(tuple(float(v) for v in geo.spacing[::-1]))
    img.SetOrigin(tuple(float(c[0]) for c in (geo.x, geo.y, geo.z)))
    img.SetDirection((1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
    return img

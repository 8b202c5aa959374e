"""The canonical grid and the randomly drawn anatomy (body, organs, liver shape) in millimetres."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


class Geometry:
    """Canonical grid: physical coordinates of voxel centres, volume centred on (0, 0, 0) mm."""

    def __init__(self, shape: tuple[int, int, int], spacing: tuple[float, float, float]) -> None:
        self.shape = shape
        self.spacing = spacing
        self.sz, self.sy, self.sx = spacing
        self.z, self.y, self.x = (
            (np.arange(n) - (n - 1) / 2.0) * s for n, s in zip(shape, spacing))
        self.px = 0.5 * (self.sy + self.sx)  # in-plane pixel size: width of anti-aliased edges
        self.voxel_ml = float(np.prod(spacing)) / 1000.0

    def index_range(self, axis: int, lo_mm: float, hi_mm: float) -> tuple[int, int]:
        """Half-open index range of voxel centres in [lo_mm, hi_mm] along an axis, clipped."""
        c = (self.z, self.y, self.x)[axis]
        s = self.spacing[axis]
        n = self.shape[axis]
        i0 = max(0, int(math.floor((lo_mm - c[0]) / s)))
        i1 = min(n, int(math.ceil((hi_mm - c[0]) / s)) + 1)
        return i0, max(i0, i1)


@dataclass
class Blob:
    """Ellipsoid (or an infinite elliptic tube when az is inf) rotated in-plane by ``angle``."""

    cx: float
    cy: float
    cz: float
    ax: float
    ay: float
    az: float = math.inf
    angle: float = 0.0

    def grown(self, d: float) -> "Blob":
        return Blob(self.cx, self.cy, self.cz, self.ax + d, self.ay + d, self.az + d, self.angle)

    def z_range(self) -> tuple[float, float]:
        return self.cz - self.az, self.cz + self.az

    def extent(self) -> float:
        return max(self.ax, self.ay)

    def block(self, geo: Geometry, k0: int, k1: int, margin: float) -> tuple[slice, slice, slice] | None:
        """Index block (within slab k0:k1) of the voxels that can be within ``margin`` of the blob."""
        if math.isfinite(self.az):
            zlo, zhi = self.z_range()
            a0, a1 = geo.index_range(0, zlo - margin, zhi + margin)
            a0, a1 = max(a0, k0), min(a1, k1)
        else:
            a0, a1 = k0, k1
        r = self.extent() + margin
        b0, b1 = geo.index_range(1, self.cy - r, self.cy + r)
        c0, c1 = geo.index_range(2, self.cx - r, self.cx + r)
        if a0 >= a1 or b0 >= b1 or c0 >= c1:
            return None
        return slice(a0, a1), slice(b0, b1), slice(c0, c1)

    def rho_and_depth(self, zs: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Normalised radius and approximate depth below the surface (mm, negative outside)."""
        ca, sa = math.cos(self.angle), math.sin(self.angle)
        dx = (xs - self.cx)[None, None, :]
        dy = (ys - self.cy)[None, :, None]
        u = (dx * ca + dy * sa).astype(np.float32)
        v = (-dx * sa + dy * ca).astype(np.float32)
        r2 = u * u + v * v
        q = (u / self.ax) ** 2 + (v / self.ay) ** 2
        if math.isfinite(self.az):
            w = ((zs - self.cz) / self.az).astype(np.float32)[:, None, None]
            q = q + w * w
            r2 = r2 + (((zs - self.cz).astype(np.float32))[:, None, None]) ** 2
        else:
            q = np.broadcast_to(q, (len(zs),) + q.shape[1:])
            r2 = np.broadcast_to(r2, q.shape)
        rho = np.sqrt(q)
        r = np.sqrt(r2)
        # depth along the ray from the centre: r/rho - r (the ray's radius minus the distance)
        ray = np.divide(r, rho, out=np.full(rho.shape, min(self.ax, self.ay), np.float32),
                        where=rho > 1e-4)
        return rho, ray - r


def soft(depth: np.ndarray, width: float) -> np.ndarray:
    """Anti-aliasing weight (partial volume) from a signed depth in mm: 0.5 at the surface."""
    w = depth * np.float32(1.0 / width)
    w += np.float32(0.5)
    np.clip(w, 0.0, 1.0, out=w)
    return w


class Anatomy:
    """All random anatomical parameters of one phantom, drawn once, in physical millimetres."""

    def __init__(self, geo: Geometry, rng: np.random.Generator, rng_liver: np.random.Generator,
                 liver_slice_fraction: tuple[float, float] | None) -> None:
        self.geo = geo
        nz, ny, nx = geo.shape
        u = rng.uniform

        # ---- body: real-size abdomen, scaled as a whole when the field of view is smaller
        a_real = u(150.0, 180.0)
        b_real = a_real * u(0.66, 0.78)
        self.amp_a, self.amp_b = u(0.0, 0.05), u(0.0, 0.05)
        grow = 1.0 + max(self.amp_a, self.amp_b)
        half_w, half_h = nx * geo.sx / 2.0, ny * geo.sy / 2.0
        self.s = s = min(1.0, 0.92 * half_w / (a_real * grow), 0.92 * half_h / (b_real * grow))
        self.a, self.b = a_real * s, b_real * s
        self.body_period = u(250.0, 450.0)
        self.phase_a, self.phase_b = u(0, 2 * math.pi), u(0, 2 * math.pi)
        px = geo.px
        self.fat_t0 = max(u(10.0, 25.0) * s, 1.5 * px)
        self.fat_mod = (u(0.0, 0.35), u(0, 2 * math.pi), u(0.0, 0.3), u(0, 2 * math.pi))
        self.rib_t = max(8.0 * s, 1.3 * px)
        self.mus_t = max(u(9.0, 14.0) * s, self.rib_t + 1.5 * px)
        self.fat_hu = u(-115.0, -85.0)
        self.muscle_hu = u(40.0, 55.0)
        self.bowel_hu = u(20.0, 40.0)

        # ---- cranio-caudal placement of the liver (defines the z scale of everything else)
        z = geo.z
        zlo, zhi = z[2], z[nz - 3]
        if liver_slice_fraction is not None:
            f0, f1 = (float(f) for f in liver_slice_fraction)
            if not 0.0 <= f0 < f1 <= 1.0:
                raise ValueError("liver_slice_fraction must satisfy 0 <= f0 < f1 <= 1, "
                                 f"not {liver_slice_fraction}")
            z_bot = max(zlo, z[0] + f0 * (z[-1] - z[0]))
            z_top = min(zhi, z[0] + f1 * (z[-1] - z[0]))
            if z_top - z_bot < 3 * geo.sz:
                raise ValueError("liver_slice_fraction leaves fewer than 3 slices for the liver "
                                 "(2 background slices are kept at each end)")
            rng_liver.uniform(), rng_liver.uniform(), rng_liver.uniform()  # keep the stream aligned
        else:
            l_real = rng_liver.uniform(140.0, 185.0)
            frac = rng_liver.uniform(0.6, 0.85)
            if zhi - zlo < l_real:  # short volume: let the liver fill most of it
                frac = 0.75 + 0.2 * (frac - 0.6) / 0.25
            length = min(l_real, frac * (zhi - zlo))
            z_bot = zlo + rng_liver.uniform(0.25, 0.75) * (zhi - zlo - length)
            z_top = z_bot + length
        self.z_bot, self.z_top = float(z_bot), float(z_top)
        self.L = L = self.z_top - self.z_bot
        self.zs = zs = min(1.2, L / 160.0)  # cranio-caudal scale of the other organs

        # ---- liver (its own stream, so other options do not change it)
        ul = rng_liver.uniform
        self.liver_hu = ul(90.0, 120.0)
        self.vessel_hu = ul(max(160.0, self.liver_hu + 50.0), 200.0)
        a, b = self.a, self.b
        # In a shrunken body (small field of view) the liver shrinks less than the rest, so that
        # tests on small phantoms still get a liver that holds lesions of realistic size.
        big = min(1.35, s ** -0.3)
        self.lv_cx, self.lv_cy = -ul(0.28, 0.36) * a, -ul(0.02, 0.15) * b
        self.lv_rx, self.lv_ry = ul(0.38, 0.52) * a * big, ul(0.45, 0.62) * b * big
        self.lv_angle = ul(-0.3, 0.2)
        self.lv_drift_x, self.lv_drift_y = ul(0.05, 0.20) * a, ul(-0.08, 0.08) * b
        self.lv_tm, self.lv_p = ul(0.55, 0.75), ul(0.45, 0.8)
        self.lv_amp = np.array([ul(0.0, 0.08)] + [ul(0.0, 0.14) / math.sqrt(k) for k in (2, 3, 4)])
        self.lv_phase = rng_liver.uniform(0, 2 * math.pi, 4)
        self.lv_twist = rng_liver.uniform(-math.pi, math.pi, 4)
        self.lv_wobble = (ul(0.0, 0.06), ul(0.5, 1.5), ul(0, 2 * math.pi))
        self.lv_bound = max(self.lv_rx, self.lv_ry) * (1.0 + self.lv_amp.sum()) * (1.0 + self.lv_wobble[0])
        self.lv_tex = _SmoothField(rng_liver, wavelength=(30.0 * s + 10.0), n_terms=4)
        self.lv_tex_amp = ul(2.0, 6.0)

        # ---- spine and great vessels
        self.spine_y = b * u(0.36, 0.42)
        self.rv_x, self.rv_y = 22.0 * s, 18.0 * s
        self.cortex_t = max(1.5 * s, 1.0 * px)
        self.spine_hu, self.cortex_hu = u(250.0, 400.0), u(650.0, 750.0)
        self.disc_hu, self.arch_hu = u(70.0, 100.0), u(450.0, 550.0)
        self.disc_period = 32.0 * zs
        self.disc_h = min(max(7.0 * zs, 1.01 * geo.sz), 0.4 * self.disc_period)
        self.disc_phase = u(0.0, self.disc_period)
        rc = max(8.0 * s, 1.5 * px)
        sy_ = self.spine_y
        self.canal = Blob(0.0, sy_ + self.rv_y + rc + 1.0 * s, 0.0, rc, rc)
        arch_t = max(5.0 * s, 1.2 * px)
        self.arch = Blob(0.0, self.canal.cy, 0.0, rc + arch_t, rc + arch_t)
        self.spinous = Blob(0.0, self.canal.cy + rc + arch_t + 8.0 * s, 0.0,
                             max(3.0 * s, 1.0 * px), 10.0 * s)
        self.paraspinal = [Blob(sgn * 30.0 * s, self.canal.cy + 4.0 * s, 0.0, 20.0 * s, 16.0 * s,
                                 angle=sgn * 0.3) for sgn in (-1, 1)]
        self.vbody = Blob(0.0, sy_, 0.0, self.rv_x, self.rv_y)
        self.vcancel = Blob(0.0, sy_, 0.0, self.rv_x - self.cortex_t, self.rv_y - self.cortex_t)
        r_ao = 11.0 * s
        self.aorta = Blob(0.3 * self.rv_x + r_ao, sy_ - self.rv_y - 0.8 * r_ao, 0.0, r_ao, r_ao)
        self.aorta_hu = u(150.0, 200.0)
        self.ivc = Blob(-(0.9 * self.rv_x + 13.0 * s), sy_ - self.rv_y - 4.5 * s, 0.0,
                         13.0 * s, 9.0 * s, angle=u(-0.3, 0.3))
        self.ivc_hu = u(120.0, 160.0)

        # ---- organs around the liver
        self.kidneys: list[tuple[Blob, Blob, Blob]] = []
        self.kidney_hu = u(150.0, 200.0)
        self.medulla_hu = self.kidney_hu - u(10.0, 40.0)
        top_r = self.z_bot + u(0.30, 0.50) * L
        for sgn, top in ((-1, top_r), (1, top_r + 15.0 * zs)):
            kx = sgn * u(0.34, 0.40) * a
            ky = sy_ + u(-0.06, 0.04) * b
            kaz = 55.0 * zs
            ang = -sgn * u(0.3, 0.6)
            cortex = Blob(kx, ky, top - kaz, 25.0 * s, 20.0 * s, kaz, ang)
            medulla = Blob(kx, ky, top - kaz, 17.0 * s, 13.0 * s, 0.7 * kaz, ang)
            sinus = Blob(kx - sgn * 8.0 * s, ky - 3.0 * s, top - kaz, 8.0 * s, 7.0 * s, 0.45 * kaz, ang)
            self.kidneys.append((cortex, medulla, sinus))
        self.spleen = Blob(u(0.50, 0.58) * a, u(0.12, 0.28) * b, self.z_bot + u(0.6, 0.8) * L,
                            22.0 * s, 42.0 * s, 50.0 * zs, angle=u(-0.9, -0.5))
        self.spleen_hu = self.liver_hu + u(5.0, 20.0)
        self.stomach = Blob(u(0.25, 0.35) * a, -u(0.15, 0.30) * b, self.z_bot + u(0.55, 0.8) * L,
                             35.0 * s, 25.0 * s, 45.0 * zs, angle=u(-0.5, 0.5))
        self.stomach_gas = u() < 0.7
        self.heart = Blob(0.08 * a, -0.15 * b, self.z_top + 55.0 * zs, 0.38 * a, 0.42 * b, 60.0 * zs,
                           angle=u(0.3, 0.7))
        psoas_top, psoas_len, psoas_r = self.z_bot + u(0.2, 0.4) * L, 120.0 * zs, 20.0 * s
        self.psoas = [Blob(sgn * (self.rv_x + 0.6 * psoas_r), sy_ - 2.0 * s, psoas_top - psoas_len,
                            psoas_r, 0.8 * psoas_r, psoas_len) for sgn in (-1, 1)]

        # ---- ribs, lungs and intra-abdominal fat/bowel
        self.rib_hu = u(600.0, 800.0)
        self.rib_period = max(u(26.0, 34.0) * zs, 4.0 * geo.sz)
        self.rib_wz = min(max(10.0 * zs, 1.01 * geo.sz), 0.5 * self.rib_period)
        # mm of z per radian away from the spine: ribs run obliquely downwards to the front, so one
        # slice cuts several short rib sections instead of one long arc
        self.rib_slope = u(30.0, 50.0) * zs
        self.rib_phase = u(0.0, self.rib_period)
        self.rib_z_lo = self.z_bot + u(0.15, 0.3) * L
        self.lung_hu = u(-870.0, -820.0)
        self.dia_z = self.z_top + u(-0.02, 0.05) * L
        self.dia_drop = u(0.2, 0.35) * L
        self.bowel = _SmoothField(rng, wavelength=45.0 * s + 10.0, n_terms=6)
        self.bowel_thr = u(0.2, 0.6)
        self.gas_thr = self.bowel_thr + u(1.3, 1.8)

        # ---- structures the liver must not overlap (grown by a small gap)
        gap = max(2.0 * s, 0.6 * px)
        self.liver_gap = gap
        # the IVC is excluded together with the strip behind it, so the liver may wrap around it
        # (as the caudate lobe does) without enclosing it in a slice
        ivc_back = Blob(self.ivc.cx, self.ivc.cy + self.ivc.ay, 0.0, self.ivc.ax, 2.0 * self.ivc.ay)
        self.liver_excl = [ivc_back.grown(gap), self.aorta.grown(gap), self.vbody.grown(gap),
                           self.spleen.grown(gap), self.stomach.grown(gap), self.heart.grown(gap)]
        self.liver_excl += [k[0].grown(gap) for k in self.kidneys]
        self.liver_excl += [p.grown(gap) for p in self.paraspinal + self.psoas]
        # posterior-medial half-plane n.p < d keeping the liver in front of / beside the spine
        n = np.array([0.6, 1.0]) / math.hypot(0.6, 1.0)
        support = n[0] * self.vbody.cx + n[1] * self.vbody.cy - math.hypot(n[0] * self.rv_x, n[1] * self.rv_y)
        self.hp_n, self.hp_d = n, support - gap

    # -- body -------------------------------------------------------------------------------------

    def body_axes(self, zs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ph = 2 * math.pi * zs / self.body_period
        a = self.a * (1.0 + self.amp_a * np.sin(ph + self.phase_a))
        b = self.b * (1.0 + self.amp_b * np.sin(ph + self.phase_b))
        return a, b

    def body_depth(self, zs: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
        """Depth below the skin (mm, negative outside the body) along rays from the body axis."""
        a, b = self.body_axes(zs)
        xx = xs.astype(np.float32)[None, None, :]
        yy = ys.astype(np.float32)[None, :, None]
        r = np.sqrt(xx * xx + yy * yy)
        c2 = np.divide(xx * xx, r * r, out=np.ones_like(r), where=r > 0)
        s2 = 1.0 - c2
        inv = np.sqrt(c2 / (a.astype(np.float32) ** 2)[:, None, None]
                      + s2 / (b.astype(np.float32) ** 2)[:, None, None])
        depth = np.reciprocal(inv, out=inv)
        depth -= r
        return depth

    def fat_thickness(self, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
        th = np.arctan2(ys[:, None], xs[None, :])
        a1, p1, a2, p2 = self.fat_mod
        return (self.fat_t0 * (1.0 + a1 * np.cos(th - p1) + a2 * np.cos(2 * th - p2))).astype(np.float32)

    # -- liver ------------------------------------------------------------------------------------

    def liver_profile(self, zs: np.ndarray) -> np.ndarray:
        t = (np.asarray(zs, dtype=float) - self.z_bot) / self.L
        g = np.zeros_like(t)
        tm, p = self.lv_tm, self.lv_p
        lo = (t > 0) & (t < tm)
        g[lo] = (t[lo] / tm) ** p
        hi = (t >= tm) & (t < 1)
        g[hi] = np.sqrt(np.clip(1.0 - ((t[hi] - tm) / (1.0 - tm)) ** 2, 0.0, None))
        amp, freq, ph = self.lv_wobble
        return g * (1.0 + amp * np.sin(2 * math.pi * freq * t + ph))

    def liver_centre(self, zs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        t = (np.asarray(zs, dtype=float) - self.z_bot) / self.L
        return self.lv_cx + self.lv_drift_x * (t - 0.5), self.lv_cy + self.lv_drift_y * (t - 0.5)

    def liver_shape(self, zs: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
        """Star-shaped (per slice) deformed ellipse: smooth, connected and hole-free by design."""
        t = ((zs - self.z_bot) / self.L)[:, None, None]
        g = self.liver_profile(zs).astype(np.float32)[:, None, None]
        cx, cy = self.liver_centre(zs)
        ca, sa = math.cos(self.lv_angle), math.sin(self.lv_angle)
        dx = (xs[None, None, :] - cx[:, None, None]).astype(np.float32)
        dy = (ys[None, :, None] - cy[:, None, None]).astype(np.float32)
        un = (dx * ca + dy * sa) / np.float32(self.lv_rx)
        vn = (-dx * sa + dy * ca) / np.float32(self.lv_ry)
        rho = np.sqrt(un * un + vn * vn)
        safe = np.maximum(rho, np.float32(1e-6))
        c1, s1 = un / safe, vn / safe
        ck, sk = c1, s1
        radius = np.ones(rho.shape, np.float32)
        for k in range(4):
            ph = (self.lv_phase[k] + self.lv_twist[k] * t).astype(np.float32)
            radius += np.float32(self.lv_amp[k]) * (ck * np.cos(ph) - sk * np.sin(ph))
            ck, sk = ck * c1 - sk * s1, sk * c1 + ck * s1
        return rho < g * radius

    def liver_allowed(self, zs: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
        """Where the liver may be: inside the abdominal cavity, away from the other organs."""
        depth = self.body_depth(zs, ys, xs)
        ok = depth > (self.fat_thickness(ys, xs) + np.float32(self.mus_t + self.liver_gap))[None]
        ok &= ((self.hp_n[0] * xs)[None, None, :] + (self.hp_n[1] * ys)[None, :, None]) < self.hp_d
        for blob in self.liver_excl:
            zlo, zhi = blob.z_range()
            kz = np.flatnonzero((zs >= zlo) & (zs <= zhi))
            if kz.size == 0:
                continue
            r = blob.extent()
            jy = np.flatnonzero(np.abs(ys - blob.cy) <= r)
            ix = np.flatnonzero(np.abs(xs - blob.cx) <= r)
            if jy.size == 0 or ix.size == 0:
                continue
            sl = (slice(kz[0], kz[-1] + 1), slice(jy[0], jy[-1] + 1), slice(ix[0], ix[-1] + 1))
            rho, _ = blob.rho_and_depth(zs[sl[0]], ys[sl[1]], xs[sl[2]])
            ok[sl] &= rho > 1.0
        return ok


class _SmoothField:
    """Cheap smooth random 3-D field: a sum of separable products of in-plane plane waves and
    z-cosines, evaluated as one small matrix product per slab (no 3-D FFT or filtering)."""

    def __init__(self, rng: np.random.Generator, wavelength: float, n_terms: int) -> None:
        k = 2 * math.pi / wavelength
        self.n = n_terms
        self.k1 = rng.normal(0.0, k, (n_terms, 2))
        self.k2 = rng.normal(0.0, k, (n_terms, 2))
        self.kz = rng.normal(0.0, k, n_terms)
        self.ph = rng.uniform(0, 2 * math.pi, (n_terms, 3))

    def plane(self, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
        yy, xx = ys[:, None], xs[None, :]
        out = np.empty((self.n, len(ys), len(xs)), np.float32)
        for i in range(self.n):
            out[i] = (np.cos(self.k1[i, 0] * xx + self.k1[i, 1] * yy + self.ph[i, 0])
                      * np.cos(self.k2[i, 0] * xx + self.k2[i, 1] * yy + self.ph[i, 1]))
        return out

    def evaluate(self, plane: np.ndarray, zs: np.ndarray) -> np.ndarray:
        """Field on (len(zs),) + plane.shape[1:], roughly unit variance."""
        q = np.cos(self.kz[None, :] * zs[:, None] + self.ph[None, :, 2]).astype(np.float32)
        q *= np.float32(2.0 / math.sqrt(self.n))
        flat = q @ plane.reshape(self.n, -1)
        return flat.reshape((len(zs),) + plane.shape[1:])

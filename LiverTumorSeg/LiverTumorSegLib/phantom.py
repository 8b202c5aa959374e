"""Synthetic abdominal CT phantoms with exact ground truth.

Real liver CT (LiTS, MSD, hospital data) cannot ship with the code, is slow to download, and its
labels are themselves imperfect human annotations. Tests, the demo, training smoke tests and the
benchmark need something else: a CT-like volume that is generated in milliseconds to seconds,
deterministically from a seed, in any size, spacing and orientation, and whose labels are *exactly*
known because the labels are drawn first and the image is painted from them. Such a phantom lets a
test assert that orientation handling, resampling, post-processing or a whole pipeline give the
right answer, which no real scan can do.

The phantom is built in a canonical frame: array axes (z, y, x) = (slice, row, column) of an LPS
image with identity direction, i.e. z grows towards the head, y from anterior to posterior, x from
the patient's right to the patient's left (the liver therefore sits at low x, the spine at high y).
All anatomy is described in physical millimetres so that it has a realistic size whatever the
spacing; when the field of view is too small for a real abdomen, the in-plane anatomy is scaled down
as a whole (and the cranio-caudal anatomy with the liver length) so that everything stays inside.

Label values follow the LiTS convention: 0 background, 1 liver (hepatic vessels inside the liver
included), 2 tumour. The liver label (1 or 2) is one 6-connected component without enclosed holes,
every lesion is surrounded by at least one voxel of liver, and lesions never touch each other.

Large volumes are painted in slabs of a few slices in float32, so a 512 x 512 x 300 phantom costs
little more memory than its int16/uint8 output arrays.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import SimpleITK as sitk

__all__ = [
    "BACKGROUND_LABEL",
    "LIVER_LABEL",
    "TUMOR_LABEL",
    "LesionInfo",
    "PhantomInfo",
    "make_phantom",
    "make_phantom_with_info",
    "rotate_direction",
]

#: Label values (LiTS convention).
BACKGROUND_LABEL = 0
LIVER_LABEL = 1
TUMOR_LABEL = 2

AIR_HU = -1000.0
HU_MIN, HU_MAX = -1024, 3071

#: Minimum and maximum diameter of randomly drawn lesions (mm).
LESION_MIN_MM, LESION_MAX_MM = 3.0, 60.0

#: Voxels per painting slab: large enough that numpy overhead is negligible, small enough that the
#: handful of float32 temporaries per slab stay at a few tens of MB.
_SLAB_VOXELS = 2_000_000

_DTYPES = {"int16": np.int16, "int32": np.int32, "float32": np.float32}


# --------------------------------------------------------------------------------------------------
# Public description of the ground truth
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LesionInfo:
    """One lesion as placed, so tests can check detection/size against the truth, not the image.

    Positions are physical LPS millimetres, which do not change when the images are reoriented.
    """

    centre_mm: tuple[float, float, float]  # physical (x, y, z), LPS
    centre_index_zyx: tuple[int, int, int]  # canonical (LPS, identity direction) array index
    semi_axes_mm: tuple[float, float, float]  # principal semi-axes (randomly rotated ellipsoid)
    diameter_mm: float  # equivalent-sphere diameter of the analytic ellipsoid
    requested_diameter_mm: float  # what was asked (or drawn); larger than diameter_mm if shrunk
    n_voxels: int
    hu: float  # core intensity before noise
    kind: str  # "hypodense" or "hyperdense"

    @property
    def shrunk(self) -> bool:
        """Whether the lesion had to be made smaller than requested to fit inside the liver."""
        return self.diameter_mm < self.requested_diameter_mm - 1e-6


@dataclass(frozen=True)
class PhantomInfo:
    """Ground-truth parameters of a phantom, for assertions that need more than the label image."""

    seed: int
    shape_zyx: tuple[int, int, int]
    spacing_zyx: tuple[float, float, float]
    orientation: str
    body_scale: float  # in-plane scale applied to a real-size abdomen to fit the field of view
    liver_hu: float  # mean parenchyma HU (before noise and texture)
    vessel_hu: float
    liver_slices: tuple[int, int]  # first and last canonical slice index containing liver
    liver_centroid_mm: tuple[float, float, float]  # physical (x, y, z)
    liver_volume_ml: float  # labels 1 and 2
    tumor_volume_ml: float
    lesions: tuple[LesionInfo, ...] = field(default_factory=tuple)

    @property
    def n_lesions(self) -> int:
        return len(self.lesions)

    def lesion_voxel_diameters_mm(self) -> list[float]:
        """Equivalent-sphere diameters of the voxelised lesions (from voxel counts)."""
        vox = float(np.prod(self.spacing_zyx))
        return [float((6.0 * les.n_voxels * vox / math.pi) ** (1.0 / 3.0)) for les in self.lesions]


# --------------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------------


def make_phantom(
    shape_zyx: tuple[int, int, int] = (64, 128, 128),
    spacing_zyx: tuple[float, float, float] = (2.5, 1.5, 1.5),
    seed: int = 0,
    orientation: str = "LPS",
    n_lesions: int | None = None,
    lesion_diameters_mm: Sequence[float] | None = None,
    noise_hu: float = 12.0,
    liver_slice_fraction: tuple[float, float] | None = None,
    dtype: str = "int16",
) -> tuple[sitk.Image, sitk.Image]:
    """Returns (ct, labels): ct in Hounsfield units (int16), labels uint8 with 0 background, 1 liver,
    2 tumor, both with identical geometry (size, spacing, origin, direction).

    ``shape_zyx``/``spacing_zyx`` describe the canonical LPS array (slices, rows, columns) before any
    reorientation. ``n_lesions=None`` draws 0..4 lesions from the seed; ``lesion_diameters_mm``
    overrides the count with explicit equivalent-sphere diameters (a lesion that cannot fit inside the
    liver is shrunk, see :func:`make_phantom_with_info`). ``noise_hu=0`` gives a noise-free image.
    ``liver_slice_fraction`` pins the cranio-caudal extent of the liver as fractions of the volume so a
    test can know where the liver is without reading the labels. ``orientation`` is any 3-letter code
    accepted by ``SimpleITK.DICOMOrient``; the reorientation is an exact axis permutation/flip, so
    the anatomy in physical space is the same for every orientation.
    """
    ct, labels, _ = make_phantom_with_info(
        shape_zyx=shape_zyx, spacing_zyx=spacing_zyx, seed=seed, orientation=orientation,
        n_lesions=n_lesions, lesion_diameters_mm=lesion_diameters_mm, noise_hu=noise_hu,
        liver_slice_fraction=liver_slice_fraction, dtype=dtype)
    return ct, labels


def make_phantom_with_info(
    shape_zyx: tuple[int, int, int] = (64, 128, 128),
    spacing_zyx: tuple[float, float, float] = (2.5, 1.5, 1.5),
    seed: int = 0,
    orientation: str = "LPS",
    n_lesions: int | None = None,
    lesion_diameters_mm: Sequence[float] | None = None,
    noise_hu: float = 12.0,
    liver_slice_fraction: tuple[float, float] | None = None,
    dtype: str = "int16",
) -> tuple[sitk.Image, sitk.Image, PhantomInfo]:
    """Like :func:`make_phantom`, plus a :class:`PhantomInfo` with the truth behind the labels
    (lesion centres and diameters, liver HU...), for tests that check sizes or detection.

    Independent random streams are used for the anatomy, the liver, the lesions, the vessels and the
    noise, so that e.g. asking for other lesions or no noise leaves the liver of a seed unchanged.

    A requested lesion that does not fit is shrunk (``LesionInfo.shrunk``) rather than allowed to
    cross the liver surface, because a tumour outside the liver would break the label convention the
    tests rely on. If explicitly requested lesions cannot be placed at all (not even as one voxel) a
    ``RuntimeError`` is raised; randomly drawn ones that do not fit are left out.
    """
    shape = tuple(int(n) for n in shape_zyx)
    spacing = tuple(float(s) for s in spacing_zyx)
    if len(shape) != 3 or len(spacing) != 3:
        raise ValueError("shape_zyx and spacing_zyx must have 3 elements (z, y, x)")
    if shape[0] < 8 or shape[1] < 16 or shape[2] < 16:
        raise ValueError(f"phantom shape {shape} too small: need at least 8 slices and 16x16 pixels")
    if min(spacing) <= 0:
        raise ValueError(f"spacing must be positive, not {spacing}")
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, not {dtype!r}")
    if noise_hu < 0:
        raise ValueError("noise_hu must be >= 0")
    if n_lesions is not None and n_lesions < 0:
        raise ValueError("n_lesions must be >= 0")
    orientation = _check_orientation(orientation)

    ss = np.random.SeedSequence(int(seed))
    rng_anat, rng_liver, rng_lesion, rng_vessel, rng_noise = (
        np.random.default_rng(s) for s in ss.spawn(5))

    geo = _Geometry(shape, spacing)
    anat = _Anatomy(geo, rng_anat, rng_liver, liver_slice_fraction)

    labels = np.zeros(shape, dtype=np.uint8)
    crop = _draw_liver(anat, labels)
    lesions, lesion_paint = _place_lesions(
        anat, labels, crop, rng_lesion, n_lesions, lesion_diameters_mm)
    vessel_w = _draw_vessels(anat, labels, crop, rng_vessel)
    ct = _paint_image(anat, labels, crop, vessel_w, lesion_paint, noise_hu, rng_noise,
                      _DTYPES[dtype])

    liver = labels > 0
    kk = np.flatnonzero(liver.any(axis=(1, 2)))
    n_liver = int(np.count_nonzero(liver))
    n_tumor = int(np.count_nonzero(labels == TUMOR_LABEL))
    cz = float(np.dot(liver.sum(axis=(1, 2)), geo.z)) / n_liver
    cy = float(np.dot(liver.sum(axis=(0, 2)), geo.y)) / n_liver
    cx = float(np.dot(liver.sum(axis=(0, 1)), geo.x)) / n_liver
    info = PhantomInfo(
        seed=int(seed), shape_zyx=shape, spacing_zyx=spacing, orientation=orientation,
        body_scale=anat.s, liver_hu=anat.liver_hu, vessel_hu=anat.vessel_hu,
        liver_slices=(int(kk[0]), int(kk[-1])), liver_centroid_mm=(cx, cy, cz),
        liver_volume_ml=n_liver * geo.voxel_ml, tumor_volume_ml=n_tumor * geo.voxel_ml,
        lesions=tuple(lesions))
    del liver

    ct_img = _to_image(ct, geo)
    del ct
    lab_img = _to_image(labels, geo)
    del labels
    if orientation != "LPS":
        ct_img = sitk.DICOMOrient(ct_img, orientation)
        lab_img = sitk.DICOMOrient(lab_img, orientation)
    return ct_img, lab_img, info


def _check_orientation(code: str) -> str:
    """Validates a DICOMOrient code up front: an invalid one would otherwise fail only after the
    (possibly long) generation, with an ITK warning on stderr."""
    c = str(code).upper()
    axes = {"L": 0, "R": 0, "P": 1, "A": 1, "S": 2, "I": 2}
    if len(c) != 3 or any(ch not in axes for ch in c) or len({axes[ch] for ch in c}) != 3:
        raise ValueError(f"orientation must be a 3-letter code with one of L/R, P/A, S/I each "
                         f"(e.g. 'LPS', 'RAS', 'PIR'), not {code!r}")
    return c


def rotate_direction(image: sitk.Image, degrees_about_z: float) -> sitk.Image:
    """Copy of ``image`` seen as an oblique acquisition: same voxel array, direction matrix (and
    origin) rotated about the physical z axis, to test code paths that must cope with
    non-axis-aligned inputs."""
    if image.GetDimension() != 3:
        raise ValueError("rotate_direction needs a 3-D image")
    th = math.radians(float(degrees_about_z))
    rot = np.array([[math.cos(th), -math.sin(th), 0.0],
                    [math.sin(th), math.cos(th), 0.0],
                    [0.0, 0.0, 1.0]])
    direction = np.asarray(image.GetDirection(), dtype=float).reshape(3, 3)
    out = sitk.Image(image)
    out.SetDirection(tuple(float(v) for v in (rot @ direction).ravel()))
    out.SetOrigin(tuple(float(v) for v in rot @ np.asarray(image.GetOrigin(), dtype=float)))
    return out


# --------------------------------------------------------------------------------------------------
# Geometry and random anatomy
# --------------------------------------------------------------------------------------------------


class _Geometry:
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
class _Blob:
    """Ellipsoid (or an infinite elliptic tube when az is inf) rotated in-plane by ``angle``."""

    cx: float
    cy: float
    cz: float
    ax: float
    ay: float
    az: float = math.inf
    angle: float = 0.0

    def grown(self, d: float) -> "_Blob":
        return _Blob(self.cx, self.cy, self.cz, self.ax + d, self.ay + d, self.az + d, self.angle)

    def z_range(self) -> tuple[float, float]:
        return self.cz - self.az, self.cz + self.az

    def extent(self) -> float:
        return max(self.ax, self.ay)

    def block(self, geo: _Geometry, k0: int, k1: int, margin: float) -> tuple[slice, slice, slice] | None:
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


def _soft(depth: np.ndarray, width: float) -> np.ndarray:
    """Anti-aliasing weight (partial volume) from a signed depth in mm: 0.5 at the surface."""
    w = depth * np.float32(1.0 / width)
    w += np.float32(0.5)
    np.clip(w, 0.0, 1.0, out=w)
    return w


class _Anatomy:
    """All random anatomical parameters of one phantom, drawn once, in physical millimetres."""

    def __init__(self, geo: _Geometry, rng: np.random.Generator, rng_liver: np.random.Generator,
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
        self.canal = _Blob(0.0, sy_ + self.rv_y + rc + 1.0 * s, 0.0, rc, rc)
        arch_t = max(5.0 * s, 1.2 * px)
        self.arch = _Blob(0.0, self.canal.cy, 0.0, rc + arch_t, rc + arch_t)
        self.spinous = _Blob(0.0, self.canal.cy + rc + arch_t + 8.0 * s, 0.0,
                             max(3.0 * s, 1.0 * px), 10.0 * s)
        self.paraspinal = [_Blob(sgn * 30.0 * s, self.canal.cy + 4.0 * s, 0.0, 20.0 * s, 16.0 * s,
                                 angle=sgn * 0.3) for sgn in (-1, 1)]
        self.vbody = _Blob(0.0, sy_, 0.0, self.rv_x, self.rv_y)
        self.vcancel = _Blob(0.0, sy_, 0.0, self.rv_x - self.cortex_t, self.rv_y - self.cortex_t)
        r_ao = 11.0 * s
        self.aorta = _Blob(0.3 * self.rv_x + r_ao, sy_ - self.rv_y - 0.8 * r_ao, 0.0, r_ao, r_ao)
        self.aorta_hu = u(150.0, 200.0)
        self.ivc = _Blob(-(0.9 * self.rv_x + 13.0 * s), sy_ - self.rv_y - 4.5 * s, 0.0,
                         13.0 * s, 9.0 * s, angle=u(-0.3, 0.3))
        self.ivc_hu = u(120.0, 160.0)

        # ---- organs around the liver
        self.kidneys: list[tuple[_Blob, _Blob, _Blob]] = []
        self.kidney_hu = u(150.0, 200.0)
        self.medulla_hu = self.kidney_hu - u(10.0, 40.0)
        top_r = self.z_bot + u(0.30, 0.50) * L
        for sgn, top in ((-1, top_r), (1, top_r + 15.0 * zs)):
            kx = sgn * u(0.34, 0.40) * a
            ky = sy_ + u(-0.06, 0.04) * b
            kaz = 55.0 * zs
            ang = -sgn * u(0.3, 0.6)
            cortex = _Blob(kx, ky, top - kaz, 25.0 * s, 20.0 * s, kaz, ang)
            medulla = _Blob(kx, ky, top - kaz, 17.0 * s, 13.0 * s, 0.7 * kaz, ang)
            sinus = _Blob(kx - sgn * 8.0 * s, ky - 3.0 * s, top - kaz, 8.0 * s, 7.0 * s, 0.45 * kaz, ang)
            self.kidneys.append((cortex, medulla, sinus))
        self.spleen = _Blob(u(0.50, 0.58) * a, u(0.12, 0.28) * b, self.z_bot + u(0.6, 0.8) * L,
                            22.0 * s, 42.0 * s, 50.0 * zs, angle=u(-0.9, -0.5))
        self.spleen_hu = self.liver_hu + u(5.0, 20.0)
        self.stomach = _Blob(u(0.25, 0.35) * a, -u(0.15, 0.30) * b, self.z_bot + u(0.55, 0.8) * L,
                             35.0 * s, 25.0 * s, 45.0 * zs, angle=u(-0.5, 0.5))
        self.stomach_gas = u() < 0.7
        self.heart = _Blob(0.08 * a, -0.15 * b, self.z_top + 55.0 * zs, 0.38 * a, 0.42 * b, 60.0 * zs,
                           angle=u(0.3, 0.7))
        psoas_top, psoas_len, psoas_r = self.z_bot + u(0.2, 0.4) * L, 120.0 * zs, 20.0 * s
        self.psoas = [_Blob(sgn * (self.rv_x + 0.6 * psoas_r), sy_ - 2.0 * s, psoas_top - psoas_len,
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
        ivc_back = _Blob(self.ivc.cx, self.ivc.cy + self.ivc.ay, 0.0, self.ivc.ax, 2.0 * self.ivc.ay)
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


# --------------------------------------------------------------------------------------------------
# Labels: liver, lesions; vessels
# --------------------------------------------------------------------------------------------------


def _slabs(n: int, plane_voxels: int) -> list[tuple[int, int]]:
    step = max(1, _SLAB_VOXELS // max(1, plane_voxels))
    return [(k, min(n, k + step)) for k in range(0, n, step)]


def _draw_liver(anat: _Anatomy, labels: np.ndarray) -> tuple[slice, slice, slice]:
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
    for a0, a1 in _slabs(k1 - k0, mask.shape[1] * mask.shape[2]):
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
class _LesionPaint:
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


def _place_lesions(anat: _Anatomy, labels: np.ndarray, crop: tuple[slice, slice, slice],
                   rng: np.random.Generator, n_lesions: int | None,
                   diameters: Sequence[float] | None) -> tuple[list[LesionInfo], list[_LesionPaint]]:
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
    paints: list[_LesionPaint] = []
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
        paints.append(_LesionPaint(block, weight, value))
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


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def _perturb(rng: np.random.Generator, d: np.ndarray, angle: float) -> np.ndarray:
    """Direction d turned by ``angle`` radians about a random axis perpendicular to it."""
    p = _unit(np.cross(d, rng.normal(size=3)))
    return _unit(d * math.cos(angle) + p * math.sin(angle))


def _draw_vessels(anat: _Anatomy, labels: np.ndarray, crop: tuple[slice, slice, slice],
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
            nd = _perturb(rng, d, rng.uniform(0.35, 0.8))
            grow(end, nd, length * rng.uniform(0.6, 0.8), radius * 0.72, level - 1)

    zc = anat.z_bot + 0.4 * L
    cx, cy = anat.liver_centre(np.array([zc]))
    hilum = np.array([cx[0] + 0.35 * rx, cy[0] + 0.1 * ry, zc])
    r0 = 5.5 * s
    for d, frac in (((-1.0, 0.1, 0.25), 0.45), ((0.8, -0.5, 0.3), 0.35)):
        grow(hilum, _perturb(rng, _unit(np.array(d)), rng.uniform(0.0, 0.25)),
             frac * rx + 0.1 * L, r0, 3)
    zt = anat.z_bot + 0.85 * L
    confluence = np.array([anat.ivc.cx, anat.ivc.cy, zt])
    for d in ((-1.0, -0.2, -0.5), (-0.3, -0.8, -0.4), (0.6, -0.8, -0.3)):
        grow(confluence, _perturb(rng, _unit(np.array(d)), rng.uniform(0.0, 0.25)),
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
        w = _soft((r - dist).astype(np.float32), px)
        np.maximum(wv[blk], w, out=wv[blk])
    wv *= labels[crop] > 0
    return wv


# --------------------------------------------------------------------------------------------------
# Image
# --------------------------------------------------------------------------------------------------


def _paint_blob(img: np.ndarray, k0: int, k1: int, geo: _Geometry, blob: _Blob,
                value: float | np.ndarray, zweight: np.ndarray | None = None) -> None:
    """Blends ``value`` into the slab ``img`` (canonical slices k0:k1) inside ``blob``, with a
    one-pixel anti-aliased edge. ``value`` may be an array broadcastable to the blob's block."""
    blk = blob.block(geo, k0, k1, margin=2.0 * geo.px)
    if blk is None:
        return
    _, depth = blob.rho_and_depth(geo.z[blk[0]], geo.y[blk[1]], geo.x[blk[2]])
    w = _soft(depth, geo.px)
    if zweight is not None:
        w *= zweight[blk[0].start - k0:blk[0].stop - k0, None, None]
    sub = img[blk[0].start - k0:blk[0].stop - k0, blk[1], blk[2]]
    if callable(value):
        value = value(blk)
    sub += (value - sub) * w


def _paint_image(anat: _Anatomy, labels: np.ndarray, crop: tuple[slice, slice, slice],
                 vessel_w: np.ndarray, lesion_paint: list[_LesionPaint], noise_hu: float,
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

    for k0, k1 in _slabs(nz, ny * nx):
        zs = geo.z[k0:k1]
        depth = anat.body_depth(zs, y, x)
        img = np.full(depth.shape, AIR_HU, np.float32)
        img += np.float32(anat.fat_hu - AIR_HU) * _soft(depth, px)
        w = _soft(depth - fat_t, px)
        img += (np.float32(anat.muscle_hu) - img) * w

        if zs[-1] > anat.rib_z_lo:  # ribs: oblique partial rings in the body wall, periodic in z
            dz = np.mod(zs[:, None, None].astype(np.float32) + rib_zoff, anat.rib_period)
            dz -= np.float32(anat.rib_period / 2)
            np.abs(dz, out=dz)
            wz = _soft(np.float32(anat.rib_wz / 2) - dz, 0.5 * geo.sz)
            wz *= (zs > anat.rib_z_lo)[:, None, None]
            wz *= rib_ang
            wz *= np.minimum(_soft(depth - rib_lo, px), _soft(rib_hi - depth, px))
            img += (np.float32(anat.rib_hu) - img) * wz
            del dz, wz

        # abdominal cavity: fat with bowel loops (and some gas), lungs above the diaphragm
        f = anat.bowel.evaluate(bowel_plane, zs)
        content = np.clip((f - np.float32(anat.bowel_thr)) / np.float32(0.3), 0.0, 1.0)
        content *= np.float32(anat.bowel_hu - anat.fat_hu)
        content += np.float32(anat.fat_hu)
        wg = np.clip((f - np.float32(anat.gas_thr)) / np.float32(0.2), 0.0, 1.0)
        content += (np.float32(-900.0) - content) * wg
        wl = _soft(zs[:, None, None].astype(np.float32) - zl2d, geo.sz)
        content += (np.float32(anat.lung_hu) - content) * wl
        w = _soft(depth - wall_in, px)
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


def _to_image(arr: np.ndarray, geo: _Geometry) -> sitk.Image:
    """Canonical LPS image: identity direction, volume centred on (0, 0, 0) mm."""
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(tuple(float(v) for v in geo.spacing[::-1]))
    img.SetOrigin(tuple(float(c[0]) for c in (geo.x, geo.y, geo.z)))
    img.SetDirection((1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
    return img

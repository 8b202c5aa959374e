"""``make_phantom``: a CT phantom and its exact labels, in any shape, spacing and orientation."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import SimpleITK as sitk

from .anatomy import Anatomy, Geometry
from .constants import DTYPES, TUMOR_LABEL
from .info import PhantomInfo
from .lesions import draw_liver, place_lesions
from .painting import paint_image, to_image
from .vessels import draw_vessels


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
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, not {dtype!r}")
    if noise_hu < 0:
        raise ValueError("noise_hu must be >= 0")
    if n_lesions is not None and n_lesions < 0:
        raise ValueError("n_lesions must be >= 0")
    orientation = _check_orientation(orientation)

    ss = np.random.SeedSequence(int(seed))
    rng_anat, rng_liver, rng_lesion, rng_vessel, rng_noise = (
        np.random.default_rng(s) for s in ss.spawn(5))

    geo = Geometry(shape, spacing)
    anat = Anatomy(geo, rng_anat, rng_liver, liver_slice_fraction)

    labels = np.zeros(shape, dtype=np.uint8)
    crop = draw_liver(anat, labels)
    lesions, lesion_paint = place_lesions(
        anat, labels, crop, rng_lesion, n_lesions, lesion_diameters_mm)
    vessel_w = draw_vessels(anat, labels, crop, rng_vessel)
    ct = paint_image(anat, labels, crop, vessel_w, lesion_paint, noise_hu, rng_noise,
                      DTYPES[dtype])

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

    ct_img = to_image(ct, geo)
    del ct
    lab_img = to_image(labels, geo)
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

"""Refuse images the model cannot meaningfully segment, before spending minutes on them.

A CT model given an MR, a single slice, a colour screenshot, or CT stored without its rescale
slope/intercept produces confident garbage; a one-line reason with the fix is far more useful.
"""

from __future__ import annotations

import numpy as np

from .errors import InputImageError

#: Abdominal CT always contains fat (about -100 HU) or air (-1000 HU)
_LOW_HU = -50.0
#: Physical HU range of CT (with extended-scale and padding values)
_HU_RANGE = (-32768.0, 40000.0)


def _sample(array: np.ndarray, max_voxels: int = 2_000_000) -> np.ndarray:
    """A strided subsample: range checks need not read a 500 MB volume voxel by voxel."""
    step = max(1, int(round((array.size / max_voxels) ** (1 / 3))))
    return array[::step, ::step, ::step]


#: image metadata key by which a dataset reader declares the HU range the image really holds ("LO HI")
HU_VALID_KEY = "LiverTumorSeg_hu_valid"


def declared_valid_hu(image) -> tuple[float, float] | None:
    """The HU range an image's source declared (LiTS-derived data is stored clipped to [-45, 160]: fat and air
    read -45, so "no voxel below -50 HU" does not mean MR there); None for ordinary images."""
    if not image.HasMetaDataKey(HU_VALID_KEY):
        return None
    try:
        lo, hi = (float(v) for v in image.GetMetaData(HU_VALID_KEY).split())
    except ValueError:
        return None
    return lo, hi


#: plausible CT voxel spacing in mm: in-plane, and between slices (thick-slice CT reaches 10 mm)
IN_PLANE_MM = (0.2, 5.0)
SLICE_MM = (0.2, 15.0)
#: longest plausible extent of a CT along one axis (mm): a whole-body scan is about 2 m long
MAX_EXTENT_MM = 2500.0


def _mm(values) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"


def validate_geometry(image) -> None:
    """Refuse grids no CT has: non-positive or absurd spacing, direction cosines that are not a rotation
    (the output's direction would differ from the input's), a field of view of many metres."""
    from .geometry import CanonicalFrame

    spacing = tuple(float(s) for s in image.GetSpacing())
    if not all(np.isfinite(spacing)) or min(spacing) <= 0:
        raise InputImageError(f"voxel spacing {_mm(spacing)} mm is not positive; fix the image header")
    direction = np.asarray(image.GetDirection(), dtype=float).reshape(3, 3)
    if not np.all(np.isfinite(direction)) or not np.allclose(direction.T @ direction, np.eye(3), atol=1e-3):
        raise InputImageError(f"the direction cosines {_mm(direction.ravel())} are not orthonormal (skewed or "
                              f"singular axes); fix the image header (ImageOrientationPatient)")
    frame = CanonicalFrame.of_image(image)
    dz, dy, dx = frame.spacing_zyx
    if not (IN_PLANE_MM[0] <= min(dy, dx) and max(dy, dx) <= IN_PLANE_MM[1]):
        raise InputImageError(f"in-plane voxel spacing {_mm((dy, dx))} mm is outside what CT uses "
                              f"({IN_PLANE_MM[0]:g}-{IN_PLANE_MM[1]:g} mm); fix the image header (pixel spacing)")
    if not SLICE_MM[0] <= dz <= SLICE_MM[1]:
        raise InputImageError(f"slice spacing {dz:.4g} mm is outside what CT uses ({SLICE_MM[0]:g}-{SLICE_MM[1]:g} "
                              f"mm); fix the image header (slice thickness / spacing)")
    extent = [n * s for n, s in zip(image.GetSize(), spacing)]
    if max(extent) > MAX_EXTENT_MM:
        raise InputImageError(f"the image spans {_mm(extent)} mm, more than any body; fix the image header "
                              f"(voxel spacing) or the image size")


def validate_options(n_labels: int, thresholds=None, min_lesion_mm3=None, min_lesion_confidence=None,
                     organ_margin_mm=None) -> None:
    """Refuse post-processing options that cannot mean anything (NaN, a probability outside (0, 1), a negative
    volume), whichever front end they came from."""
    from .errors import LiverTumorSegError

    if thresholds is not None:
        thresholds = tuple(thresholds)
        if len(thresholds) != n_labels:
            raise LiverTumorSegError(f"{n_labels} thresholds needed (one per label), got {len(thresholds)}; give one "
                                     f"probability per label, e.g. {','.join(['0.5'] * n_labels)}")
        if not all(isinstance(t, (int, float)) and 0.0 < float(t) < 1.0 for t in thresholds):
            raise LiverTumorSegError(f"thresholds {thresholds} must be probabilities strictly between 0 and 1; give "
                                     f"e.g. {','.join(['0.5'] * n_labels)}")
    for name, value, low, high in (("minimum lesion volume (mm3)", min_lesion_mm3, 0.0, float("inf")),
                                   ("minimum lesion confidence", min_lesion_confidence, 0.0, 1.0),
                                   ("organ margin (mm)", organ_margin_mm, 0.0, 100.0)):
        if value is None:
            continue
        if not (isinstance(value, (int, float)) and np.isfinite(value) and low <= value and
                (value < high if high == 1.0 else value <= high)):
            bound = "[0, 1)" if high == 1.0 else (f"[0, {high:g}]" if np.isfinite(high) else ">= 0")
            raise LiverTumorSegError(f"{name} is {value!r}; give a number {bound}")


def validate_ct(image, allow_non_ct: bool = False, modality: str | None = None) -> None:
    """Raise InputImageError naming the problem and the fix if ``image`` is not a 3-D CT volume in HU."""
    import SimpleITK as sitk

    dim = image.GetDimension()
    if dim == 2:
        raise InputImageError("input is a 2-D image (a single slice); give a 3-D CT volume "
                              "(a DICOM series folder or a NIfTI/NRRD volume)")
    if dim != 3:
        raise InputImageError(f"input is {dim}-D (e.g. a time series or several volumes in one file); "
                              f"extract one 3-D CT volume first")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputImageError(f"input has {image.GetNumberOfComponentsPerPixel()} values per voxel (colour or "
                              f"vector image); CT must be a scalar volume in Hounsfield units")
    size = image.GetSize()
    if min(size) < 1 or image.GetNumberOfPixels() == 0:
        raise InputImageError("input volume is empty (0 voxels); check the file")
    if sorted(size)[0] < 2:
        raise InputImageError(f"input has size {size}: only one slice; give a CT volume with several slices")
    validate_geometry(image)
    if modality and modality.strip().upper() not in ("CT", ""):
        if not allow_non_ct:
            raise InputImageError(f"DICOM modality is {modality.strip()}, not CT; this model segments CT only "
                                  f"(pass --allow-non-ct to force)")
    array = sitk.GetArrayViewFromImage(image)
    if array.dtype.kind == "f":
        bad = int(np.count_nonzero(~np.isfinite(array)))
        if bad:
            raise InputImageError(f"input contains {bad} NaN or infinite voxels; fix the export "
                                  f"(or fill them with -1000 HU) and try again")
    sample = _sample(array)
    lo, hi = float(sample.min()), float(sample.max())
    if lo == hi and float(array.min()) == float(array.max()):
        raise InputImageError(f"input volume is empty: every voxel is {lo:g}; check the file")
    if allow_non_ct:
        return
    if lo < _HU_RANGE[0] or hi > _HU_RANGE[1]:
        raise InputImageError(f"intensities {lo:g}..{hi:g} are outside the CT range; is this CT in Hounsfield units? "
                              f"(pass --allow-non-ct to force)")
    valid = declared_valid_hu(image)
    low = _LOW_HU if valid is None else max(_LOW_HU, valid[0] + 1.0)  # data stored clipped: fat reads the floor
    low_fraction = float(np.count_nonzero(sample < low)) / sample.size
    if low_fraction < 0.001:
        raise InputImageError(
            f"input does not look like CT in Hounsfield units (minimum {lo:g}, no fat or air below {_LOW_HU:g}); "
            f"is it MR, or CT stored without rescale slope/intercept? Segment CT only (or pass --allow-non-ct)")

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
    spacing = image.GetSpacing()
    if min(spacing) <= 0 or max(spacing) > 50:
        raise InputImageError(f"implausible voxel spacing {spacing} mm; fix the image header")
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
    low_fraction = float(np.count_nonzero(sample < _LOW_HU)) / sample.size
    if low_fraction < 0.001:
        raise InputImageError(
            f"input does not look like CT in Hounsfield units (minimum {lo:g}, no fat or air below {_LOW_HU:g}); "
            f"is it MR, or CT stored without rescale slope/intercept? Segment CT only (or pass --allow-non-ct)")

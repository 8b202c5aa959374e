"""What a phantom's ground truth is, described for tests: lesions, their sizes and centres."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np


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

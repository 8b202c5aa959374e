"""Exact moves between an image's voxel grid and the model's canonical axial frame.

Canonical frame: NumPy axes (z, y, x) with z from feet to head, rows anterior to posterior and
columns patient-right to patient-left, i.e. an identity ITK/DICOM (LPS) direction, the way axial CT
is displayed radiologically. Any input direction is brought there by an axis permutation and flips
only. Those are NumPy views, so reorienting costs no memory and no interpolation, and writing
into the canonical view of an output array writes straight into the input's own grid: the inverse
is exact by construction.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class CanonicalFrame:
    """How to view an image's array (ITK order reversed: k, j, i) in the canonical (z, y, x) frame."""

    #: ``np.transpose`` order taking the array to canonical axes
    axes: tuple[int, int, int]
    #: canonical axes that are flipped after the transpose
    flips: tuple[bool, bool, bool]
    #: voxel spacing along canonical (z, y, x) in mm
    spacing_zyx: tuple[float, float, float]

    @classmethod
    def from_direction(cls, direction: tuple[float, ...] | np.ndarray,
                       spacing_xyz: tuple[float, float, float]) -> "CanonicalFrame":
        """The permutation/flips that best align index axes with L, P, S (also for oblique scans)."""
        d = np.asarray(direction, dtype=float).reshape(3, 3)  # columns: physical direction of index axes i, j, k
        # The assignment of index axes to physical axes maximising alignment (robust at 45 degrees).
        best = max(itertools.permutations(range(3)), key=lambda p: sum(abs(d[p[a], a]) for a in range(3)))
        index_axis_of_physical = {best[a]: a for a in range(3)}
        axes, flips, spacing = [], [], []
        for physical in (2, 1, 0):  # canonical NumPy axes z, y, x = physical S, P, L
            a = index_axis_of_physical[physical]
            axes.append(2 - a)  # NumPy axis of ITK index axis a
            flips.append(bool(d[physical, a] < 0))
            spacing.append(float(spacing_xyz[a]))
        return cls(tuple(axes), tuple(flips), tuple(spacing))

    @classmethod
    def of_image(cls, image) -> "CanonicalFrame":
        return cls.from_direction(image.GetDirection(), image.GetSpacing())

    def view(self, array: np.ndarray) -> np.ndarray:
        """Canonical view of an array on the image grid (no copy; writes go through)."""
        v = np.transpose(array, self.axes)
        slices = tuple(slice(None, None, -1) if f else slice(None) for f in self.flips)
        return v[slices]

    def canonical_shape(self, array_shape: tuple[int, int, int]) -> tuple[int, int, int]:
        return tuple(array_shape[a] for a in self.axes)  # type: ignore[return-value]

    @property
    def is_identity(self) -> bool:
        return self.axes == (0, 1, 2) and not any(self.flips)


def resampled_size(size: int, spacing: float, target_spacing: float) -> int:
    """Number of samples covering the same physical extent at ``target_spacing``."""
    return max(1, int(round(size * spacing / target_spacing)))


def padded_size(size: int, multiple: int) -> int:
    return -(-size // multiple) * multiple


def slice_axis(direction) -> int:
    """ITK index axis of the axial slices: the one the canonical frame takes for z (feet to head). The lesion
    report, the module's slice ranges and the pipeline all use this one rule."""
    frame = CanonicalFrame.from_direction(direction, (1.0, 1.0, 1.0))
    return 2 - frame.axes[0]


#: geometry differences (mm for origin and spacing, cosines for direction) treated as float noise
GRID_TOLERANCE = 1e-4


def grid_difference(a, b, tolerance: float = GRID_TOLERANCE) -> str | None:
    """What differs between two images' grids beyond float noise ("size (..) vs (..)"), or None if they match."""
    if a.GetSize() != b.GetSize():
        return f"size {a.GetSize()} vs {b.GetSize()}"
    for what, va, vb in (("spacing", a.GetSpacing(), b.GetSpacing()), ("origin", a.GetOrigin(), b.GetOrigin()),
                         ("direction", a.GetDirection(), b.GetDirection())):
        if not np.allclose(va, vb, rtol=0, atol=tolerance):
            return f"{what} {tuple(round(v, 6) for v in va)} vs {tuple(round(v, 6) for v in vb)}"
    return None

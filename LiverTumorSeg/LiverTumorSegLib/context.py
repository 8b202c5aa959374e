"""The 2.5-D context stack: a slice and its neighbours at fixed physical offsets.

Counting neighbours in slice indices makes a network see different anatomy on a 0.6 mm and a 5 mm scan.
A model with ``context_step_mm`` sees the slices at ``z + j * step`` mm (j = -k..k), linearly interpolated
between the stored slices; one without it keeps the old meaning (``j`` whole slices). Training and the
inference pipeline both build their input stacks here, so the two can never disagree.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

#: reads the slices at the given integer indices: (n,) -> (n, H, W)
SliceReader = Callable[[np.ndarray], np.ndarray]


def context_step_slices(context_step_mm: float | None, slice_spacing_mm: float) -> float:
    """The context step in (fractional) slices of a scan with this slice spacing; 1 for slice-counted models."""
    if context_step_mm is None:
        return 1.0
    return float(context_step_mm) / float(slice_spacing_mm)


def context_positions(zs: np.ndarray, k: int, step_slices: float, n_slices: int) -> np.ndarray:
    """(len(zs), 2k+1) slice positions of each centre's context, clamped to the scan (edges repeat)."""
    offsets = np.arange(-k, k + 1, dtype=np.float64) * step_slices
    positions = np.asarray(zs, dtype=np.float64)[:, None] + offsets[None, :]
    return np.clip(positions, 0.0, n_slices - 1.0)


def read_context(read: SliceReader, positions: np.ndarray, n_slices: int) -> np.ndarray:
    """float32 slices at (fractional) ``positions`` (any shape), by linear interpolation along z.

    Whole-number positions return the stored slice itself, bit for bit: a slice-counted model sees exactly
    what it always saw, and the centre slice of a millimetre model is never blurred.
    """
    flat = np.asarray(positions, dtype=np.float64).ravel()
    lower = np.floor(flat).astype(np.int64)
    frac = flat - lower
    exact = frac < 1e-6
    lower[~exact & (frac > 1 - 1e-6)] += 1  # float noise just below a whole slice
    exact |= frac > 1 - 1e-6
    out = np.array(read(lower), dtype=np.float32)  # a copy: blending below writes into it
    blend = np.flatnonzero(~exact)
    if blend.size:
        upper = np.minimum(lower[blend] + 1, n_slices - 1)
        a = out[blend]
        b = np.asarray(read(upper), dtype=np.float32)
        w = frac[blend].astype(np.float32).reshape((-1,) + (1,) * (a.ndim - 1))
        out[blend] = a + w * (b - a)
    return out.reshape(np.shape(positions) + out.shape[1:])

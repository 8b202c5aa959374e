"""Whole-volume scans that never allocate a full-size temporary: a 512²×1000 scan is 262 M voxels.

Bounding boxes and counts are computed slab by slab (about 16 M voxels at a time), so the memory they
need is bounded whatever the length of the scan.
"""

from __future__ import annotations

from typing import Callable, Iterator

import numpy as np

#: Voxels processed at once; bounds the temporaries of a scan (~16 MB of booleans).
SLAB_VOXELS = 1 << 24

#: maps a slab of the volume to a boolean array of the same shape
Test = Callable[[np.ndarray], np.ndarray]


def slabs(array: np.ndarray) -> Iterator[np.ndarray]:
    """Views of consecutive blocks along the first axis."""
    step = max(1, SLAB_VOXELS // max(1, int(np.prod(array.shape[1:]))))
    for start in range(0, array.shape[0], step):
        yield array[start:start + step]


def bounding_box(array: np.ndarray, test: Test,
                 margin: tuple[int, int, int] = (0, 0, 0)) -> tuple[slice, slice, slice] | None:
    """Slices of the box holding every voxel where ``test`` is true, grown by ``margin``; None if none."""
    projections = [np.zeros(n, dtype=bool) for n in array.shape]
    start = 0
    for slab in slabs(array):
        hit = test(slab)
        projections[0][start:start + slab.shape[0]] = hit.any(axis=(1, 2))
        projections[1] |= hit.any(axis=(0, 2))
        projections[2] |= hit.any(axis=(0, 1))
        start += slab.shape[0]
    if not projections[0].any():
        return None
    box = []
    for axis, proj in enumerate(projections):
        idx = np.flatnonzero(proj)
        box.append(slice(max(0, int(idx[0]) - margin[axis]), min(array.shape[axis], int(idx[-1]) + 1 + margin[axis])))
    return tuple(box)  # type: ignore[return-value]


def count_where(array: np.ndarray, test: Test) -> int:
    return int(sum(np.count_nonzero(test(slab)) for slab in slabs(array)))

"""3D Slicer segmentation files (``.seg.nrrd``): named, coloured segments with SNOMED terminology.

SimpleITK's physical space *is* LPS (DICOM patient coordinates), and files written here always use
``space: left-posterior-superior``, so the voxel-to-LPS matrix comes from the image's direction,
spacing and origin without any sign flip, for any direction (permuted, flipped or oblique).
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import SimpleITK as sitk

from .atomicfile import atomic_path, check_written_image
from .labels import LabelSpec
from .volumes import bounding_box, slabs

#: Slicer's extent of an empty labelmap (``Segment<N>_Extent:=0 -1 0 -1 0 -1``), as slicerio writes it too.
EMPTY_EXTENT = (0, -1, 0, -1, 0, -1)


def _values_outside(arr: np.ndarray, allowed: Sequence[int]) -> list[int]:
    """Sorted distinct values of ``arr`` not in ``allowed``, scanning slab by slab.

    uint8 maps (the usual case) use a 256-entry lookup table, about twice as fast as ``np.unique``, which
    would also sort a full copy if applied to the whole volume at once.
    """
    found: set[int] = set()
    if arr.dtype == np.uint8:
        ok = np.zeros(256, dtype=bool)
        ok[[v for v in allowed if 0 <= v <= 255]] = True
        for slab in slabs(arr):
            bad = ~ok[slab]
            if bad.any():
                found.update(np.unique(slab[bad]).tolist())
    else:
        for slab in slabs(arr):
            found.update(np.unique(slab).tolist())
        found -= set(allowed)
    return sorted(int(v) for v in found)


def ijk_to_lps_matrix(image: sitk.Image) -> np.ndarray:
    """4×4 voxel (i, j, k) → LPS matrix of an image: ``[D·diag(spacing) | origin]``.

    ITK physical space is LPS, so this is exact for any direction (permuted, flipped or oblique).
    """
    if image.GetDimension() != 3:
        raise ValueError(f"expected a 3-D image, got {image.GetDimension()}-D")
    direction = np.array(image.GetDirection(), dtype=float).reshape(3, 3)
    matrix = np.eye(4)
    matrix[:3, :3] = direction @ np.diag(image.GetSpacing())
    matrix[:3, 3] = image.GetOrigin()
    return matrix


def _terminology_fields(terminology: str) -> dict:
    """Segment fields that make slicerio write ``TerminologyEntry:<terminology>`` verbatim.

    slicerio's dict form is preferred (it is what its readers and matchers understand), but the dict does
    not keep every string (e.g. a region modifier without a region), so fall back to a raw tag then.
    """
    if not terminology:
        return {}
    try:
        from slicerio.segmentation import terminology_entry_from_string, terminology_entry_to_string

        entry = terminology_entry_from_string(terminology)
        if terminology_entry_to_string(entry) == terminology:
            return {"terminology": entry}
    except (ImportError, IndexError, KeyError):
        pass
    return {"tags": {"TerminologyEntry": terminology}}


def write_seg_nrrd(labels: sitk.Image, specs: Sequence[LabelSpec], path: str | os.PathLike,
                   overwrite: bool = False, compression_level: int = 6) -> None:
    """Write a label map as a 3D Slicer segmentation (``.seg.nrrd``) with one segment per spec.

    Why this and not a plain labelmap: Slicer then loads named, coloured segments with SNOMED
    terminology directly into the Segment Editor. Every spec becomes a segment even when the map lacks
    its value (an empty "Tumor" still shows up, so users see that none was found and can paint one).

    All segments share layer 0 (a label map cannot overlap). Their ``Extent`` is the bounding box of all
    non-zero voxels of that layer, the same for every segment, because Slicer allocates a shared layer
    with the extent of the layer's *first* segment: per-segment extents would crop (or, for an empty first
    segment, drop) the other segments of the layer when the file is loaded. An all-empty layer gets
    Slicer's empty extent ``0 -1 0 -1 0 -1``.

    ``compression_level`` is gzip's (1 fastest, 9 smallest); the default 6 is zlib's usual balance (on a
    512×512×300 liver/tumour map: level 1 0.5 s/1.1 MB, 6 0.9 s/0.45 MB, 9 1.5 s/0.32 MB).

    Raises ValueError if the map holds a non-zero value that no spec describes (Slicer would silently
    hide those voxels) or if specs repeat a name or value.
    """
    import slicerio

    if labels.GetDimension() != 3 or labels.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError("write_seg_nrrd needs a 3-D scalar label map")
    names = [s.name for s in specs]
    values = [int(s.value) for s in specs]
    if len(set(names)) != len(names) or len(set(values)) != len(values):
        raise ValueError(f"label specs must have distinct names and values, got {list(zip(names, values))}")

    arr = sitk.GetArrayViewFromImage(labels)  # (k, j, i), no copy
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"label map must have an integer pixel type, not {labels.GetPixelIDTypeAsString()}")
    unknown = _values_outside(arr, [0, *values])
    if unknown:
        raise ValueError(f"label map contains values {unknown} that no label spec describes "
                         f"(specs: {dict(zip(names, values))})")
    if arr.dtype != np.uint8:
        arr = arr.astype(np.uint8)  # values are all in 0..255 (checked above: LabelSpec values are 1..255)

    voxels = arr.transpose(2, 1, 0)  # [i, j, k] view, slicerio's default index order 'F'
    box = bounding_box(voxels, lambda slab: slab != 0)
    extent = list(EMPTY_EXTENT) if box is None else [v for s in box for v in (s.start, s.stop - 1)]

    segments = []
    for spec in specs:
        segment = {
            "id": spec.name,
            "name": spec.name,
            "nameAutoGenerated": False,
            "color": [c / 255.0 for c in spec.color],
            "colorAutoGenerated": False,
            "labelValue": int(spec.value),
            "layer": 0,
            "extent": list(extent),
        }
        segment.update(_terminology_fields(spec.terminology))
        segments.append(segment)

    segmentation = {
        "voxels": voxels,
        "ijkToLPS": ijk_to_lps_matrix(labels),
        "encoding": "gzip",
        "masterRepresentation": "Binary labelmap",
        "containedRepresentationNames": ["Binary labelmap"],
        "referenceImageExtentOffset": [0, 0, 0],
        "segments": segments,
    }
    with atomic_path(path, overwrite=overwrite, check=check_written_image) as temp:
        slicerio.write_segmentation(temp, segmentation, compression_level=compression_level)


def _raw_segment_tags(path: str) -> tuple[list[int], dict[int, str]]:
    """Segment indices found in the NRRD header, and index → exact ``TerminologyEntry`` tag value.

    slicerio turns the tag into a dict, which does not always convert back to the same string, so the
    exact string is taken from the header itself.
    """
    import re

    import nrrd

    header = nrrd.read_header(path)
    indices: set[int] = set()
    terms: dict[int, str] = {}
    for key, value in header.items():
        match = re.match(r"Segment([0-9]+)_(.+)$", key)
        if not match:
            continue
        index = int(match.group(1))
        indices.add(index)
        if match.group(2) != "Tags":
            continue
        for tag in str(value).split("|"):
            tag_key, _, tag_value = tag.strip().partition(":")
            if tag_key == "TerminologyEntry":
                terms[index] = tag_value
    return sorted(indices), terms


def read_seg_nrrd_labels(path: str | os.PathLike) -> tuple[sitk.Image, list[dict]]:
    """Read a ``.seg.nrrd`` as a uint8 label map on the file's grid plus its segment descriptions.

    Used by tests and training readers, which need one label value per voxel. The label map holds, for
    every voxel, the ``labelValue`` of its layer-0 segment (0 elsewhere, also for values that no segment
    claims, as Slicer shows them). Each segment dict has ``id``, ``name``, ``labelValue``, ``layer``,
    ``color`` (0–1 floats), ``terminology`` (Slicer's TerminologyEntry string, "" if none) and ``extent``.

    Raises ValueError if segments are stored in several layers (they overlap, so no single label map can
    hold them) or if a label value does not fit in uint8.
    """
    import slicerio

    path = str(path)
    segmentation = slicerio.read_segmentation(path)
    voxels = segmentation["voxels"]
    segments = segmentation.get("segments", [])

    layers = sorted({int(s.get("layer", 0)) for s in segments})
    if any(layer != 0 for layer in layers) or (voxels.ndim == 4 and np.any(voxels[1:])):
        raise ValueError(f"{path}: segments overlap (they are stored in several layers: {layers}), "
                         f"so they cannot be represented as one label map")
    if voxels.ndim == 4:
        voxels = voxels[0]
    if voxels.ndim != 3:
        raise ValueError(f"{path}: expected 3-D voxels, got shape {voxels.shape}")

    label_values = [int(s.get("labelValue", 1)) for s in segments]
    if any(not 0 <= v <= 255 for v in label_values):
        raise ValueError(f"{path}: label values {label_values} do not fit in a uint8 label map")

    arr = np.asarray(voxels).transpose(2, 1, 0)  # [i, j, k] -> (k, j, i), ITK/numpy order
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{path}: voxel type {arr.dtype} is not an integer type")
    if arr.dtype == np.uint8:
        lut = np.zeros(256, dtype=np.uint8)
        lut[label_values] = label_values
        out = lut[arr]  # values that no segment claims become 0
    else:
        out = np.where(np.isin(arr, label_values), arr, 0).astype(np.uint8)
    image = sitk.GetImageFromArray(np.ascontiguousarray(out))

    matrix = np.asarray(segmentation["ijkToLPS"], dtype=float)
    axes = matrix[:3, :3]
    spacing = np.linalg.norm(axes, axis=0)
    image.SetSpacing([float(s) for s in spacing])
    image.SetDirection([float(v) for v in (axes / spacing).ravel()])
    image.SetOrigin([float(v) for v in matrix[:3, 3]])

    # Exact terminology strings: slicerio lists segments in increasing SegmentN index order.
    header_indices, raw_terms = _raw_segment_tags(path)
    result = []
    for index, segment in zip(header_indices, segments):
        if index in raw_terms:
            terminology = raw_terms[index]
        elif "terminology" in segment:
            from slicerio.segmentation import terminology_entry_to_string

            terminology = terminology_entry_to_string(segment["terminology"])
        else:
            terminology = ""
        result.append({
            "id": segment.get("id", ""),
            "name": segment.get("name", segment.get("id", "")),
            "labelValue": int(segment.get("labelValue", 1)),
            "layer": int(segment.get("layer", 0)),
            "color": [float(c) for c in segment.get("color", [])],
            "terminology": terminology,
            "extent": [int(e) for e in segment.get("extent", EMPTY_EXTENT)],
        })
    return image, result

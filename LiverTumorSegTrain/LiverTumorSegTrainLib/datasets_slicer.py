"""3D Slicer exports: a CT beside a ``.seg.nrrd`` whose segments are found by name or terminology."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from LiverTumorSegLib.errors import LiverTumorSegError
from LiverTumorSegLib.geometry import GRID_TOLERANCE
from LiverTumorSegLib.imageio import read_image_file

from .datasets_common import (
    _LABEL_LIKE_END,
    _LIVER_CODES,
    _NOT_LIVER_WORDS,
    _SEG_SUFFIX,
    _TUMOR_CODES,
    _TUMOR_WORDS,
    LIVER_TUMOR,
    LabeledCase,
    _image_like,
    _last_line,
    _natural,
    _strip_suffix,
)

# ---- 3D Slicer exports ----------------------------------------------------------------------------


def _ct_candidates(names: list[str]) -> dict[str, str]:
    """Stem → file name of the volumes in a folder that can be a CT (not segmentations or label maps)."""
    out: dict[str, str] = {}
    for name in names:
        low = name.lower()
        stem = _strip_suffix(name)
        if stem is None or low.endswith(_SEG_SUFFIX) or stem.lower().endswith(_LABEL_LIKE_END) \
                or stem.lower().startswith("segmentation"):
            continue
        out.setdefault(stem, name)  # names are sorted: .mha < .nii < .nii.gz < .nrrd, any one will do
    return out


def _find_slicer(root: Path, listing, include_unlabelled: bool) -> list[LabeledCase]:
    """``<case>.seg.nrrd`` beside ``<case>.nrrd|.nii.gz|.nii|.mha``, or Slicer's ``Segmentation.seg.nrrd``
    beside the folder's only CT."""
    cases = []
    for folder, _, names in listing:
        segs = [n for n in names if n.lower().endswith(_SEG_SUFFIX)]
        if not segs:
            continue
        cts = _ct_candidates(names)
        used = set()
        for seg in segs:
            stem = seg[: -len(_SEG_SUFFIX)]
            if stem in cts:
                ct_stem = stem
            elif stem.lower() == "segmentation" and len(cts) == 1:
                ct_stem = next(iter(cts))
            else:
                continue
            used.add(ct_stem)
            cases.append(LabeledCase(ct_stem, "slicer", LIVER_TUMOR, folder / cts[ct_stem], folder / seg))
        if include_unlabelled:
            cases.extend(LabeledCase(s, "slicer", LIVER_TUMOR, folder / n) for s, n in cts.items() if s not in used)
    cases.sort(key=lambda c: _natural(str(c.image_path.relative_to(root))))
    return cases


def segment_role(segment: dict) -> str | None:
    """"liver", "tumor" or None for a slicerio segment dict: by name if it says, else by terminology.

    Names are what users see and edit, so they win; Slicer's automatic names ("Segment_1") say
    nothing, and then the SNOMED type code decides.
    """
    name = str(segment.get("name", "")).lower()
    if _TUMOR_WORDS.search(name):
        return "tumor"
    if "liver" in name and not _NOT_LIVER_WORDS.search(name):
        return "liver"
    term = segment.get("terminology") or {}
    code = term.get("type", ["", "", ""])
    if len(code) >= 2 and code[0] in ("SCT", "SRT"):
        if code[1] in _TUMOR_CODES:
            return "tumor"
        if code[1] in _LIVER_CODES:
            return "liver"
    return None


def _load_slicer(case: LabeledCase) -> tuple[sitk.Image, sitk.Image | None]:
    """Compose liver/tumour segments from all layers (tumour over liver) and place them on the CT grid."""
    import slicerio

    ct = read_image_file(case.image_path)
    if case.label_path is None:
        return ct, None
    try:
        seg = slicerio.read_segmentation(str(case.label_path))
    except (OSError, ValueError, KeyError) as e:
        raise LiverTumorSegError(f"case {case.case_id}: cannot read {case.label_path}: {_last_line(e)}") from None
    voxels = np.asarray(seg["voxels"])
    if voxels.ndim == 3:
        voxels = voxels[np.newaxis]
    if voxels.ndim != 4:
        raise LiverTumorSegError(f"case {case.case_id}: {case.label_path} has voxels of shape {voxels.shape}")
    roles = {"liver": np.zeros(voxels.shape[1:], dtype=bool), "tumor": np.zeros(voxels.shape[1:], dtype=bool)}
    seen = {"liver": 0, "tumor": 0}
    for segment in seg.get("segments", []):
        role = segment_role(segment)
        if role is None:
            continue
        layer = int(segment.get("layer", 0))
        if not 0 <= layer < voxels.shape[0]:
            raise LiverTumorSegError(f"case {case.case_id}: segment {segment.get('name')!r} is in layer {layer}, "
                                     f"but {case.label_path} has {voxels.shape[0]} layer(s)")
        roles[role] |= voxels[layer] == int(segment.get("labelValue", 1))
        seen[role] += 1
    if not seen["liver"]:
        names = [s.get("name", s.get("id", "?")) for s in seg.get("segments", [])]
        raise LiverTumorSegError(f"case {case.case_id}: no liver segment in {case.label_path} (segments: {names}); "
                                 f"name one 'Liver' or give it the SNOMED liver terminology")
    labels_ijk = np.where(roles["tumor"], np.uint8(2), np.where(roles["liver"], np.uint8(1), np.uint8(0)))
    matrix = np.asarray(seg["ijkToLPS"], dtype=float)
    return ct, _onto_grid(case, labels_ijk.transpose(2, 1, 0), matrix, ct)


def _onto_grid(case: LabeledCase, labels_kji: np.ndarray, ijk_to_lps: np.ndarray, ct: sitk.Image) -> sitk.Image:
    """A label array on its own grid (given by ``ijk_to_lps``) placed onto the CT grid.

    Slicer saves segmentations cropped to the segments' extent: same spacing and direction as the CT,
    origin shifted by whole voxels. Then the labels are pasted exactly. Any other grid is resampled
    (nearest neighbour) with a warning, because it can move boundaries by up to half a voxel.
    """
    axes = ijk_to_lps[:3, :3]
    spacing = np.linalg.norm(axes, axis=0)
    direction = axes / spacing
    origin = ijk_to_lps[:3, 3]
    same_axes = (np.allclose(spacing, ct.GetSpacing(), rtol=0, atol=GRID_TOLERANCE)
                 and np.allclose(direction.ravel(), ct.GetDirection(), rtol=0, atol=GRID_TOLERANCE))
    offset = np.asarray(ct.TransformPhysicalPointToContinuousIndex([float(v) for v in origin]))
    rounded = np.rint(offset).astype(int)
    ct_shape_ijk = np.asarray(ct.GetSize())
    if same_axes and np.all(np.abs(offset - rounded) < 1e-3):
        out = np.zeros(ct_shape_ijk[::-1], dtype=np.uint8)
        lo = np.maximum(rounded, 0)  # (i, j, k) in CT indices
        hi = np.minimum(rounded + np.asarray(labels_kji.shape[::-1]), ct_shape_ijk)
        if np.any(hi <= lo):
            warnings.warn(f"case {case.case_id}: the segmentation lies entirely outside the CT", stacklevel=3)
            return _image_like(out, ct)
        src = tuple(slice(a - r, b - r) for a, b, r in zip(lo[::-1], hi[::-1], rounded[::-1]))
        dst = tuple(slice(a, b) for a, b in zip(lo[::-1], hi[::-1]))
        out[dst] = labels_kji[src]
        lost = int(np.count_nonzero(labels_kji)) - int(np.count_nonzero(out[dst]))
        if lost:
            warnings.warn(f"case {case.case_id}: {lost} labelled voxels lie outside the CT and were dropped",
                          stacklevel=3)
        return _image_like(out, ct)
    warnings.warn(f"case {case.case_id}: {case.label_path} is not on the CT grid (spacing, direction or a "
                  f"fractional voxel shift differ); resampled with nearest neighbour", stacklevel=3)
    own = sitk.GetImageFromArray(np.ascontiguousarray(labels_kji))
    own.SetSpacing([float(s) for s in spacing])
    own.SetDirection([float(v) for v in direction.ravel()])
    own.SetOrigin([float(v) for v in origin])
    return sitk.Resample(own, ct, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)

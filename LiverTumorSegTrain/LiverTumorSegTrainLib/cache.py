"""Preprocess each training case once into memory-mappable slices at the model's spacing.

Reading and resampling a NIfTI or DICOM CT takes seconds; a training run draws tens of thousands of
slices. So every case is brought once into the pipeline's canonical frame (the same exact
reorientation inference uses) and in-plane spacing, and stored as int16 HU + uint8 labels ``.npy``
files with an index of its liver and tumour slices. The cache key covers the source files and every
setting that changes the stored arrays, so a changed setting or a replaced file is never served stale.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np

CACHE_VERSION = 1


@dataclass
class CachedCase:
    """One preprocessed case: canonical (z, y, x) arrays at the model grid, opened memory-mapped."""

    case_id: str
    image: np.ndarray  # int16 HU
    labels: np.ndarray  # uint8 label values
    spacing_zyx: tuple[float, float, float]
    organ_slices: np.ndarray  # z indices with any label
    lesion_slices: np.ndarray  # z indices with a lesion label
    weight: float = 1.0  # loss weight (pseudo-labelled cases < 1)


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "livertumorseg" / "preprocessed"


def _file_signature(path: Path | None) -> list:
    if path is None:
        return [None]
    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return [[str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns] for p in files]


def cache_key(case, spacing_mm: float | None, lesion_values: tuple[int, ...],
              clip_hu: tuple[float, float] | None = None, spacing_z_mm: float | None = None, region=None) -> str:
    """Hash of the source files and of every setting that changes the cached arrays."""
    settings = {"version": CACHE_VERSION, "case": case.case_id, "kind": case.kind,
                "image": _file_signature(case.image_path), "label": _file_signature(case.label_path),
                "labels": list(case.label_names), "spacing": spacing_mm, "lesions": list(lesion_values)}
    if clip_hu is not None:  # absent otherwise, so caches made before clipping existed stay valid
        settings["clip_hu"] = [float(v) for v in clip_hu]
    if spacing_z_mm is not None:
        settings["spacing_z"] = float(spacing_z_mm)
    if region is not None:
        settings["region"] = region.key()
    blob = json.dumps(settings, sort_keys=True)
    return hashlib.sha1(blob.encode()).hexdigest()[:20]


def _resample_case(ct, labels, spacing_mm: float | None, clip_hu: tuple[float, float] | None = None
                   ) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
    """Canonical orientation (exact), then in-plane linear resampling exactly as inference does it
    (clipped to ``clip_hu`` first for models with ``window_before_resampling``)."""
    import SimpleITK as sitk
    import torch

    from LiverTumorSegLib.geometry import CanonicalFrame, resampled_size
    from LiverTumorSegLib.inference import resize

    frame = CanonicalFrame.of_image(ct)
    volume = frame.view(sitk.GetArrayViewFromImage(ct))
    lab = frame.view(sitk.GetArrayViewFromImage(labels))
    z, h, w = volume.shape
    sz, sy, sx = frame.spacing_zyx
    lo, hi = (-np.inf, np.inf) if clip_hu is None else (float(clip_hu[0]), float(clip_hu[1]))
    if spacing_mm is None:
        if clip_hu is not None:
            volume = np.rint(np.clip(volume, lo, hi))
        return np.ascontiguousarray(volume, dtype=np.int16), np.ascontiguousarray(lab, dtype=np.uint8), (sz, sy, sx)
    size = (resampled_size(h, sy, spacing_mm), resampled_size(w, sx, spacing_mm))
    out_img = np.empty((z,) + size, dtype=np.int16)
    out_lab = np.empty((z,) + size, dtype=np.uint8)
    values = np.arange(int(lab.max()) + 1)
    for z0 in range(0, z, 16):
        with torch.inference_mode():
            slab = torch.from_numpy(np.ascontiguousarray(volume[z0:z0 + 16], dtype=np.float32)).unsqueeze(1)
            if clip_hu is not None:
                slab = slab.clamp(lo, hi)
            out_img[z0:z0 + 16] = resize(slab, size)[:, 0].round().clamp(-32768, 32767).short().numpy()
            # labels: linear interpolation of each value's indicator, then the most likely value
            lab_slab = torch.from_numpy(np.ascontiguousarray(lab[z0:z0 + 16], dtype=np.int64))
            onehot = (lab_slab.unsqueeze(1) == torch.from_numpy(values).view(1, -1, 1, 1)).float()
            out_lab[z0:z0 + 16] = resize(onehot, size).argmax(dim=1).to(torch.uint8).numpy()
    return out_img, out_lab, (sz, h * sy / size[0], w * sx / size[1])  # effective spacing of that grid


def resample_slices(image: np.ndarray, labels: np.ndarray, spacing_zyx, spacing_z_mm: float):
    """Linear resampling along z to ``spacing_z_mm`` (3-D models' grid; the pipeline maps back the same way),
    labels by their values' interpolated indicators, a block of rows at a time."""
    import torch
    import torch.nn.functional as F

    from LiverTumorSegLib.geometry import resampled_size

    z = image.shape[0]
    nz = resampled_size(z, spacing_zyx[0], spacing_z_mm)
    if nz == z:
        return image, labels, tuple(spacing_zyx)
    out_img = np.empty((nz,) + image.shape[1:], dtype=image.dtype)
    out_lab = np.empty((nz,) + labels.shape[1:], dtype=labels.dtype)
    values = torch.arange(int(labels.max()) + 1).view(1, -1, 1, 1, 1)
    for y0 in range(0, image.shape[1], 32):
        with torch.inference_mode():
            block = torch.from_numpy(np.ascontiguousarray(image[:, y0:y0 + 32], dtype=np.float32))[None, None]
            size = (nz,) + tuple(block.shape[-2:])
            out_img[:, y0:y0 + 32] = F.interpolate(block, size=size, mode="trilinear",
                                                   align_corners=False)[0, 0].round().numpy()
            lab = torch.from_numpy(np.ascontiguousarray(labels[:, y0:y0 + 32], dtype=np.int64))[None, None]
            onehot = (lab == values).float()
            out_lab[:, y0:y0 + 32] = F.interpolate(onehot, size=size, mode="trilinear",
                                                   align_corners=False)[0].argmax(0).numpy()
    return out_img, out_lab, (z * spacing_zyx[0] / nz, spacing_zyx[1], spacing_zyx[2])


def _stage_crop(ct, image, lab, spacing, spacing_mm, clip_hu, spacing_z_mm, region):
    """The resampled case cropped to its (reference or predicted) liver, as ``stage_regions`` describes."""
    from .stage_regions import crop_to_region, predicted_organ

    if region.liver_model is None:
        organ = lab > 0
    else:  # the predicted liver, brought to the same grid exactly as the labels were
        _, organ_labels, inplane = _resample_case(ct, predicted_organ(ct, region.liver_model), spacing_mm, clip_hu)
        if spacing_z_mm is not None:
            _, organ_labels, _ = resample_slices(organ_labels, organ_labels, inplane, spacing_z_mm)
        organ = organ_labels > 0
    return crop_to_region(image, lab, organ, spacing, region)


def _save_atomically(target: Path, image: np.ndarray, labels: np.ndarray, meta: dict) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        np.save(tmp / "image.npy", image)
        np.save(tmp / "labels.npy", labels)
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")
        try:
            os.replace(tmp, target)
        except OSError:  # another process (DDP rank, parallel run) finished the same case first
            if not (target / "meta.json").exists():
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def open_cached(folder: Path, weight: float = 1.0) -> CachedCase:
    meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    return CachedCase(case_id=meta["case_id"], image=np.load(folder / "image.npy", mmap_mode="r"),
                      labels=np.load(folder / "labels.npy", mmap_mode="r"),
                      spacing_zyx=tuple(meta["spacing_zyx"]), organ_slices=np.asarray(meta["organ_slices"], int),
                      lesion_slices=np.asarray(meta["lesion_slices"], int), weight=weight)


def prepare_cases(cases: Iterable, cache_dir: str | Path | None, spacing_mm: float | None,
                  lesion_values: tuple[int, ...], weight: float = 1.0, progress: bool = True,
                  clip_hu: tuple[float, float] | None = None, spacing_z_mm: float | None = None,
                  region=None) -> list[CachedCase]:
    """Preprocess (once) and open every case; returns memory-mapped cases in input order. With ``region`` (a
    ``stage_regions.StageRegion``) each case is cropped to its liver's box, as a later cascade stage sees it; a
    case without liver is left out."""
    from tqdm import tqdm

    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    cases = list(cases)
    out = []
    for case in tqdm(cases, desc="preprocessing", unit="case", disable=not progress or not cases):
        key = cache_key(case, spacing_mm, lesion_values, clip_hu, spacing_z_mm, region)
        folder = cache / f"{case.case_id}-{key}"
        if not (folder / "meta.json").exists():
            ct, labels = case.load()
            if labels is None:
                raise ValueError(f"case {case.case_id} has no labels; it cannot be used for training")
            image, lab, spacing = _resample_case(ct, labels, spacing_mm, clip_hu)
            if spacing_z_mm is not None:
                image, lab, spacing = resample_slices(image, lab, spacing, spacing_z_mm)
            if region is not None:
                cropped = _stage_crop(ct, image, lab, spacing, spacing_mm, clip_hu, spacing_z_mm, region)
                if cropped is None:
                    continue
                image, lab = cropped
            lesion = np.isin(lab, lesion_values)
            meta = {"case_id": case.case_id, "spacing_zyx": list(spacing), "shape": list(image.shape),
                    "organ_slices": np.flatnonzero(lab.any(axis=(1, 2))).tolist(),
                    "lesion_slices": np.flatnonzero(lesion.any(axis=(1, 2))).tolist(),
                    "source": str(case.image_path), "version": CACHE_VERSION}
            _save_atomically(folder, image, lab, meta)
        out.append(open_cached(folder, weight))
    return out

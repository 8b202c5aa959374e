"""The one inference pipeline: CT ``SimpleITK.Image`` in, label map on exactly the same grid out.

The CLI, the Slicer module, the Segment Editor effect and training validation all call ``segment``,
so what training measures is what users get.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from .errors import LiverTumorSegError
from .geometry import CanonicalFrame
from .inference import InferencePlan, ProgressCallback, make_plan, predict_bits
from .labels import LabelSpec
from .modelfile import SegmentationModel, load_model
from .postprocess import finalize_labels
from .validation import validate_ct
from .volumes import slabs

#: half-open index ranges per ITK axis: ((i0, i1), (j0, j1), (k0, k1))
IndexBox = tuple[tuple[int, int], tuple[int, int], tuple[int, int]]

if TYPE_CHECKING:  # torch is imported lazily: Slicer imports this package at startup
    pass


@dataclass
class SegmentationResult:
    """The label map plus what ran and how long each stage took (for reports and benchmarks)."""

    labels: "SimpleITK.Image"  # noqa: F821 (lazy import)
    model: SegmentationModel
    plan: InferencePlan
    seconds: dict[str, float] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        return {"device": str(self.plan.device), "precision": self.plan.precision,
                "batch_size": self.plan.batch_size, "model_grid_yx": list(self.plan.model_size_yx),
                "seconds": {k: round(v, 3) for k, v in self.seconds.items()}}


def run_segmentation(image, model: SegmentationModel | str | os.PathLike, device: str = "auto",
                     batch_size: int | None = None, precision: str = "auto",
                     progress: ProgressCallback | None = None, thresholds: tuple[float, ...] | None = None,
                     min_lesion_mm3: float | None = None, organ_margin_mm: float | None = None,
                     allow_non_ct: bool = False, modality: str | None = None,
                     region: IndexBox | None = None, keep_labels: Sequence[str] | None = None) -> SegmentationResult:
    """Segment a CT volume; see ``segment``. Also returns the plan that ran and stage timings."""
    import SimpleITK as sitk

    from .environment import resolve_device

    if region is not None:
        return _segment_region(image, region, model, device=device, batch_size=batch_size, precision=precision,
                               progress=progress, thresholds=thresholds, min_lesion_mm3=min_lesion_mm3,
                               organ_margin_mm=organ_margin_mm, allow_non_ct=allow_non_ct, modality=modality,
                               keep_labels=keep_labels)
    t0 = time.perf_counter()
    validate_ct(image, allow_non_ct=allow_non_ct, modality=modality)
    torch_device = resolve_device(device)
    if not isinstance(model, SegmentationModel):
        model = load_model(model)
    cfg = model.config
    if thresholds is not None and len(thresholds) != len(cfg.labels):
        raise LiverTumorSegError(f"{len(cfg.labels)} thresholds needed (one per label: "
                                 f"{', '.join(lab.name for lab in cfg.labels)}), got {len(thresholds)}")
    seconds = {"validate": time.perf_counter() - t0}

    t = time.perf_counter()
    frame = CanonicalFrame.of_image(image)
    volume = frame.view(sitk.GetArrayViewFromImage(image))  # no copy: a strided view of the input
    out = np.zeros(sitk.GetArrayViewFromImage(image).shape, dtype=np.uint8)
    out_canonical = frame.view(out)  # writes land on the input grid: the inverse transform is exact
    plan = make_plan(model, volume.shape, frame.spacing_zyx, torch_device, precision, batch_size)
    plan = predict_bits(model, volume, out_canonical, plan, thresholds, progress)
    seconds["inference"] = time.perf_counter() - t

    t = time.perf_counter()
    finalize_labels(out_canonical, cfg.labels, frame.spacing_zyx,
                    cfg.min_lesion_mm3 if min_lesion_mm3 is None else min_lesion_mm3,
                    cfg.organ_margin_mm if organ_margin_mm is None else organ_margin_mm)
    if keep_labels is not None:
        _keep_only(out, cfg.labels, keep_labels)
    labels = sitk.GetImageFromArray(out)
    del out
    labels.CopyInformation(image)
    seconds["postprocess"] = time.perf_counter() - t
    seconds["total"] = time.perf_counter() - t0
    return SegmentationResult(labels, model, plan, seconds)


def _keep_only(out: np.ndarray, labels: Sequence[LabelSpec], keep: Sequence[str]) -> None:
    """Drop labels the user did not ask for; a dropped lesion stays part of its organ ("liver only")."""
    names = {k.lower() for k in keep}
    unknown = names - {lab.name.lower() for lab in labels}
    if unknown:
        raise LiverTumorSegError(f"unknown label(s) {', '.join(sorted(unknown))}; this model has "
                                 f"{', '.join(lab.name for lab in labels)}")
    organ = next((lab for lab in labels if lab.role == "organ" and lab.name.lower() in names), None)
    lut = np.arange(256, dtype=np.uint8)
    for lab in labels:
        if lab.name.lower() not in names:
            lut[lab.value] = organ.value if organ is not None and lab.role == "lesion" else 0
    for slab in slabs(out):
        slab[...] = lut[slab]


def _segment_region(image, region: IndexBox, model, **options: Any) -> SegmentationResult:
    """Segment only a box of the image (an ROI or a slice range); outside it stays background."""
    import SimpleITK as sitk

    size = image.GetSize()
    try:
        box = [(int(a), int(b)) for a, b in region]
    except (TypeError, ValueError):
        box = []
    if len(box) != 3 or any(not 0 <= a < b <= n for (a, b), n in zip(box, size)):
        raise LiverTumorSegError(f"region {region} is not a box inside the image of size {tuple(size)} "
                                 f"(give ((i0, i1), (j0, j1), (k0, k1)) with 0 <= start < stop <= size)")
    start = [a for a, _ in box]
    extent = [b - a for a, b in box]
    result = run_segmentation(sitk.RegionOfInterest(image, extent, start), model, **options)
    full = sitk.Image(size, sitk.sitkUInt8)
    full.CopyInformation(image)
    result.labels = sitk.Paste(full, result.labels, extent, [0, 0, 0], start)
    return result


def segment(image, model: SegmentationModel | str | os.PathLike, device: str = "auto", batch_size: int | None = None,
            precision: str = "auto", progress: ProgressCallback | None = None, **options: Any):
    """Segment a 3-D CT ``SimpleITK.Image`` in Hounsfield units.

    Returns a uint8 label map with the input's size, spacing, origin and direction (values from the
    model's labels: 0 background, 1 liver, 2 tumor for the liver models). ``progress(done, total)``
    is called after every batch of slices; returning False cancels. Options: ``thresholds``,
    ``min_lesion_mm3``, ``organ_margin_mm`` override the model file's values; ``allow_non_ct``
    skips the CT plausibility check; ``modality`` is the DICOM modality when known; ``region``
    = ((i0, i1), (j0, j1), (k0, k1)) restricts the work to that index box (an ROI or slice range);
    ``keep_labels`` = names of the labels to output (e.g. ["Liver"]: tumour counted as liver).
    """
    return run_segmentation(image, model, device=device, batch_size=batch_size, precision=precision,
                            progress=progress, **options).labels

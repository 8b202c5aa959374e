"""The one inference pipeline: CT ``SimpleITK.Image`` in, label map on exactly the same grid out.

The CLI, the Slicer module, the Segment Editor effect and training validation all call ``segment``,
so what training measures is what users get.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import LiverTumorSegError
from .geometry import CanonicalFrame
from .inference import InferencePlan, ProgressCallback, make_plan, predict_bits
from .modelfile import SegmentationModel, load_model
from .postprocess import finalize_labels
from .validation import validate_ct

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
                     allow_non_ct: bool = False, modality: str | None = None) -> SegmentationResult:
    """Segment a CT volume; see ``segment``. Also returns the plan that ran and stage timings."""
    import SimpleITK as sitk

    from .environment import resolve_device

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
    labels = sitk.GetImageFromArray(out)
    del out
    labels.CopyInformation(image)
    seconds["postprocess"] = time.perf_counter() - t
    seconds["total"] = time.perf_counter() - t0
    return SegmentationResult(labels, model, plan, seconds)


def segment(image, model: SegmentationModel | str | os.PathLike, device: str = "auto", batch_size: int | None = None,
            precision: str = "auto", progress: ProgressCallback | None = None, **options: Any):
    """Segment a 3-D CT ``SimpleITK.Image`` in Hounsfield units.

    Returns a uint8 label map with the input's size, spacing, origin and direction (values from the
    model's labels: 0 background, 1 liver, 2 tumor for the liver models). ``progress(done, total)``
    is called after every batch of slices; returning False cancels. Options: ``thresholds``,
    ``min_lesion_mm3``, ``organ_margin_mm`` override the model file's values; ``allow_non_ct``
    skips the CT plausibility check; ``modality`` is the DICOM modality when known.
    """
    return run_segmentation(image, model, device=device, batch_size=batch_size, precision=precision,
                            progress=progress, **options).labels

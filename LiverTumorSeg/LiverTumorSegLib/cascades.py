"""Running a cascade: each stage where the previous stage found its organ, all labels on one map.

RA-UNet finds the liver in 2-D, segments it in 3-D inside that box, then the tumour inside the liver; the
ResUNet cascade segments the liver, then the tumour on liver-masked input. Each stage is an ordinary model
(any network and inferer, spacing, window) run through the ordinary pipeline on the region its link asks
for: the previous stage's organ box grown by a margin, optionally with the input masked to that organ and
the stage's labels kept inside it. Inside the region a later stage ran on, its answer for its own labels
replaces the earlier stages' (RA-UNet's 3-D liver replaces the 2-D liver it was boxed by), and its labels paint
over the earlier stages' other labels where it found something (the tumour over the liver).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .modelfile import SegmentationModel, StageLink
from .volumes import bounding_box


def _organ_mask(labels: np.ndarray, stage: SegmentationModel) -> np.ndarray:
    values = [lab.value for lab in stage.config.labels if lab.role in ("organ", "lesion")]
    return np.isin(labels, values)


def _grown_box(mask: np.ndarray, spacing_xyz, margin_mm: float) -> list[tuple[int, int]] | None:
    """ITK-order (i, j, k) half-open index ranges of ``mask``'s box (NumPy k, j, i order) grown by the margin."""
    margin = [int(math.ceil(margin_mm / s)) for s in spacing_xyz[::-1]]  # numpy order
    box = bounding_box(mask, lambda slab: slab, tuple(margin))
    if box is None:
        return None
    return [(sl.start, sl.stop) for sl in box[::-1]]


def _grown_mask(mask: np.ndarray, spacing_xyz, margin_mm: float) -> np.ndarray:
    from .postprocess import dilate

    return dilate(mask, tuple(float(s) for s in spacing_xyz[::-1]), margin_mm)


def _paint(region: np.ndarray, stage_labels: np.ndarray, stage: SegmentationModel) -> np.ndarray:
    own = np.isin(region, [lab.value for lab in stage.config.labels])
    return np.where(stage_labels > 0, stage_labels, np.where(own, 0, region))


def segment_cascade(image, model: SegmentationModel, threshold_sets: list, run_stage, **options: Any) -> list:
    """Label maps (one per threshold set of the last stage) of a cascade, and per-stage summaries.

    ``run_stage(image, stage, threshold_sets, **options)`` runs one single-network stage through the pipeline
    and returns its results (``pipeline._segment_volume``). Returns ``(labels, lesion_probability, stages)``
    per threshold set: label arrays on the input grid, probability arrays, and what each stage did.
    """
    import SimpleITK as sitk

    last_stage = SegmentationModel(model.network, model.config, model.source, model.localizer, link=model.link)
    stages = [*model.stages_before, last_stage]
    spacing = image.GetSpacing()
    shape = sitk.GetArrayViewFromImage(image).shape
    combined = np.zeros(shape, dtype=np.uint8)
    probabilities: dict[str, np.ndarray] = {}
    summaries, previous, last_results = [], None, None
    options.pop("keep_labels", None)
    for index, stage in enumerate(stages):
        link: StageLink | None = stage.link if index else None
        last = index == len(stages) - 1
        box = mask = None
        if link is not None and previous is not None:
            organ = _organ_mask(combined, previous)
            box = _grown_box(organ, spacing, link.margin_mm)
            if box is None:  # the previous stage found nothing: nothing to look at
                summaries.append({"stage": stage.config.name, "region": None, "skipped": "no organ found before"})
                previous = stage
                continue
            if link.region == "mask" or link.mask_input:
                mask = _grown_mask(organ, spacing, link.margin_mm)
        crop = image if box is None else sitk.RegionOfInterest(image, [b - a for a, b in box], [a for a, _ in box])
        if mask is not None and link.mask_input:
            sub = mask[tuple(slice(a, b) for a, b in box[::-1])]
            array = sitk.GetArrayFromImage(crop)
            low = stage.config.window_hu[0]
            array[~sub] = np.asarray(low, dtype=array.dtype) if array.dtype.kind in "iu" else low
            masked = sitk.GetImageFromArray(array)
            masked.CopyInformation(crop)
            crop = masked
        stage_options = options if index == 0 else {**options, "allow_non_ct": True}  # CT-ness: judged on the whole
        results = run_stage(crop, stage, threshold_sets if last else [None], **stage_options)
        where = tuple(slice(None) for _ in range(3)) if box is None else tuple(slice(a, b) for a, b in box[::-1])
        if last:
            last_results = (results, where, mask)
        else:
            stage_labels = sitk.GetArrayViewFromImage(results[0].labels)
            if mask is not None and link.region == "mask":
                stage_labels = np.where(mask[where], stage_labels, 0)
            combined[where] = _paint(combined[where], stage_labels, stage)
        summaries.append({"stage": stage.config.name, "labels": [lab.name for lab in stage.config.labels],
                          "region_ijk": None if box is None else [list(b) for b in box],
                          "region": "whole" if link is None else link.region})
        previous = stage
    outputs = []
    if last_results is None:  # the last stage was skipped: the earlier stages' labels stand
        return [(combined.copy(), probabilities, summaries) for _ in threshold_sets]
    results, where, mask = last_results
    for result in results:
        labels = combined.copy()
        stage_labels = sitk.GetArrayViewFromImage(result.labels)
        if mask is not None and model.link is not None and model.link.region == "mask":
            stage_labels = np.where(mask[where], stage_labels, 0)
        labels[where] = _paint(labels[where], stage_labels, last_stage)
        probs = {}
        for name, prob in result.lesion_probability.items():
            full = np.zeros(shape, dtype=np.uint8)
            full[where] = sitk.GetArrayViewFromImage(prob)
            if mask is not None and model.link.region == "mask":
                full[where] = np.where(mask[where], full[where], 0)
            probs[name] = full
        outputs.append((labels, probs, summaries))
    return outputs

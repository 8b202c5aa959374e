"""The one inference pipeline: CT ``SimpleITK.Image`` in, label map on exactly the same grid out.

The CLI, the Slicer module, the Segment Editor effect and training validation all call ``segment``,
so what training measures is what users get.
"""

from __future__ import annotations

import os
import time
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from .errors import LiverTumorSegError
from .geometry import CanonicalFrame
from .inference import InferencePlan, ProgressCallback, bits_dtype, make_plan, predict_bits
from .labels import LabelSpec
from .modelfile import SegmentationModel, load_model
from .postprocess import finalize_labels
from .validation import validate_ct, validate_options
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
    #: per lesion label name: its probability on the input grid (uint8, 0..255 = 0..1), for per-lesion confidence
    lesion_probability: dict[str, "SimpleITK.Image"] = field(default_factory=dict)  # noqa: F821
    #: cascades: what each stage did (its labels and the region it ran on)
    stages: list[dict] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {"device": str(self.plan.device), "precision": self.plan.precision,
                "batch_size": self.plan.batch_size, "model_grid_yx": list(self.plan.model_size_yx),
                "localized_region": self.plan.region, **({"stages": self.stages} if self.stages else {}),
                "seconds": {k: round(v, 3) for k, v in self.seconds.items()}}


def run_segmentation(image, model: SegmentationModel | str | os.PathLike, device: str = "auto",
                     batch_size: int | None = None, precision: str = "auto",
                     progress: ProgressCallback | None = None, thresholds: tuple[float, ...] | None = None,
                     min_lesion_mm3: float | None = None, organ_margin_mm: float | None = None,
                     allow_non_ct: bool = False, modality: str | None = None,
                     region: IndexBox | None = None, keep_labels: Sequence[str] | None = None,
                     use_localizer: bool = True, min_lesion_confidence: float | None = None) -> SegmentationResult:
    """Segment a CT volume; see ``segment``. Also returns the plan that ran and stage timings."""
    if region is not None:
        return _segment_region(image, region, model, device=device, batch_size=batch_size, precision=precision,
                               progress=progress, thresholds=thresholds, min_lesion_mm3=min_lesion_mm3,
                               organ_margin_mm=organ_margin_mm, allow_non_ct=allow_non_ct, modality=modality,
                               keep_labels=keep_labels, use_localizer=use_localizer,
                               min_lesion_confidence=min_lesion_confidence)
    return _segment_volume(image, model, [thresholds], device=device, batch_size=batch_size, precision=precision,
                           progress=progress, min_lesion_mm3=min_lesion_mm3, organ_margin_mm=organ_margin_mm,
                           allow_non_ct=allow_non_ct, modality=modality, keep_labels=keep_labels,
                           use_localizer=use_localizer, min_lesion_confidence=min_lesion_confidence)[0]


def segment_at_thresholds(image, model: SegmentationModel, threshold_sets: Sequence[tuple[float, ...] | None],
                          device: str = "auto", **options: Any) -> list["SimpleITK.Image"]:  # noqa: F821
    """One label map per tuple of ``threshold_sets``, each equal to ``segment(image, model, thresholds=t)``,
    from a single network pass: threshold calibration on validation volumes would otherwise rerun the
    network once per candidate. Options as ``segment`` (no ``region``)."""
    return [result.labels for result in _segment_volume(image, model, list(threshold_sets), device=device, **options)]


def _segment_volume(image, model: SegmentationModel | str | os.PathLike,
                    threshold_sets: list[tuple[float, ...] | None], device: str = "auto",
                    batch_size: int | None = None, precision: str = "auto",
                    progress: ProgressCallback | None = None, min_lesion_mm3: float | None = None,
                    organ_margin_mm: float | None = None, allow_non_ct: bool = False, modality: str | None = None,
                    keep_labels: Sequence[str] | None = None, use_localizer: bool = True,
                    min_lesion_confidence: float | None = None) -> list[SegmentationResult]:
    import SimpleITK as sitk

    from .environment import configure_threads, resolve_device

    t0 = time.perf_counter()
    validate_ct(image, allow_non_ct=allow_non_ct, modality=modality)
    torch_device = resolve_device(device)
    if torch_device.type == "cpu":
        configure_threads()
    if not isinstance(model, SegmentationModel):
        model = load_model(model)
    if model.stages_before:
        return _segment_cascade(image, model, threshold_sets, t0, device=device, batch_size=batch_size,
                                precision=precision, progress=progress, min_lesion_mm3=min_lesion_mm3,
                                organ_margin_mm=organ_margin_mm, allow_non_ct=allow_non_ct, modality=modality,
                                keep_labels=keep_labels, use_localizer=use_localizer,
                                min_lesion_confidence=min_lesion_confidence)
    cfg = model.config
    for thresholds in threshold_sets:
        validate_options(len(cfg.labels), thresholds, min_lesion_mm3, min_lesion_confidence, organ_margin_mm)
    seconds = {"validate": time.perf_counter() - t0}

    t = time.perf_counter()
    frame = CanonicalFrame.of_image(image)
    volume = frame.view(sitk.GetArrayViewFromImage(image))  # no copy: a strided view of the input
    shape = sitk.GetArrayViewFromImage(image).shape
    outs = [np.zeros(shape, dtype=bits_dtype(len(cfg.labels))) for _ in threshold_sets]
    outs_canonical = [frame.view(out) for out in outs]  # writes land on the input grid: the inverse is exact
    plan = make_plan(model, volume.shape, frame.spacing_zyx, torch_device, precision, batch_size)
    z_range, box, done_before = None, None, 0
    if model.localizer is not None and use_localizer:
        found = locate(model, volume, frame.spacing_zyx, plan, precision, progress)
        seconds["localize"] = time.perf_counter() - t
        done_before = found.slices_run
        if found.z_range is None:
            warnings.warn("the localiser found no liver; segmenting the whole volume", RuntimeWarning)
        else:
            z_range, box = found.z_range, found.box

    def fine_progress(done: int, total: int):
        return None if progress is None else progress(done_before + done, done_before + total)

    lesion_indices = [i for i, lab in enumerate(cfg.labels) if lab.role == "lesion"]
    probs = {i: np.zeros(shape, dtype=np.uint8) for i in lesion_indices}  # pages are only touched where written
    probs_canonical = {i: frame.view(p) for i, p in probs.items()}
    if cfg.inferer == "sliding_window":  # a 3-D network: patches of the (localised) volume
        from .sliding_window import predict_bits_volume

        plan = predict_bits_volume(model, volume, frame.spacing_zyx, list(zip(outs_canonical, threshold_sets)), plan,
                                   fine_progress, z_range, probability_outs=list(probs_canonical.items()))
        box = None
    else:
        plan = predict_bits(model, volume, list(zip(outs_canonical, threshold_sets)), plan, fine_progress, z_range,
                            box, probability_outs=list(probs_canonical.items()))
    plan.region = None if z_range is None else {
        "slices": list(z_range), "box_yx": None if box is None else [[box[0].start, box[0].stop],
                                                                    [box[1].start, box[1].stop]]}
    seconds["inference"] = time.perf_counter() - t

    t = time.perf_counter()
    label_maps = []
    while outs:  # one array at a time: the input-sized buffers are freed as their images are made
        out, out_canonical = outs.pop(0), outs_canonical.pop(0)
        finalize_labels(out_canonical, cfg.labels, frame.spacing_zyx,
                        cfg.min_lesion_mm3 if min_lesion_mm3 is None else min_lesion_mm3,
                        cfg.organ_margin_mm if organ_margin_mm is None else organ_margin_mm,
                        cfg.min_lesion_confidence if min_lesion_confidence is None else min_lesion_confidence,
                        probs_canonical)
        if keep_labels is not None:
            _keep_only(out, cfg.labels, keep_labels)
        labels = sitk.GetImageFromArray(out if out.dtype == np.uint8 else out.astype(np.uint8))  # label values
        del out, out_canonical
        labels.CopyInformation(image)
        label_maps.append(labels)
    probability_images = {}
    for i in lesion_indices:
        probability_images[cfg.labels[i].name] = sitk.GetImageFromArray(probs.pop(i))
        probability_images[cfg.labels[i].name].CopyInformation(image)
    seconds["postprocess"] = time.perf_counter() - t
    seconds["total"] = time.perf_counter() - t0
    return [SegmentationResult(labels, model, plan, seconds, probability_images) for labels in label_maps]


def _segment_cascade(image, model: SegmentationModel, threshold_sets: list, t0: float,
                     **options: Any) -> list[SegmentationResult]:
    """A cascade's stages through this same pipeline (see ``cascades``), composed on the input grid."""
    import SimpleITK as sitk

    from .cascades import segment_cascade

    keep = options.get("keep_labels")
    outputs = segment_cascade(image, model, threshold_sets, _segment_volume, **options)
    results = []
    for labels, probabilities, stages in outputs:
        if keep is not None:
            _keep_only(labels, model.output_labels, keep)
        label_image = sitk.GetImageFromArray(labels)
        label_image.CopyInformation(image)
        prob_images = {}
        for name, array in probabilities.items():
            prob_images[name] = sitk.GetImageFromArray(array)
            prob_images[name].CopyInformation(image)
        frame = CanonicalFrame.of_image(image)
        plan = make_plan(model, frame.canonical_shape(labels.shape), frame.spacing_zyx,
                         _device(options.get("device", "auto")), options.get("precision", "auto"),
                         options.get("batch_size"))
        results.append(SegmentationResult(label_image, model, plan, {"total": time.perf_counter() - t0},
                                          prob_images, stages))
    return results


def _device(name: str):
    from .environment import resolve_device

    return resolve_device(name)


@dataclass
class Located:
    """Where the localiser found the organ: a slice range and a box of the fine model's grid."""

    z_range: tuple[int, int] | None
    box: tuple[slice, slice] | None
    slices_run: int


#: the localiser looks at one slice every this many mm (its box only needs the organ's extent)
LOCALIZER_Z_STEP_MM = 4.0


def locate(model: SegmentationModel, volume: np.ndarray, spacing_zyx: tuple[float, float, float],
           plan: InferencePlan, precision: str = "auto", progress: ProgressCallback | None = None) -> Located:
    """Coarse stage: run the small localiser on every few slices at its low resolution, keep its largest
    organ component, and turn that component's extent (+ margin) into a slice range and a box of the
    fine model's grid. Everything here happens on the localiser's small grid: no full-size arrays."""
    import math

    from .inference import predict_model_grid
    from .postprocess import largest_component_filled

    loc = model.localizer
    n, h, w = volume.shape
    step = max(1, int(round(LOCALIZER_Z_STEP_MM / spacing_zyx[0])))
    zs = np.arange(0, n, step)
    loc_plan = make_plan(loc, volume.shape, spacing_zyx, plan.device, precision, None)
    bits = predict_model_grid(loc, volume, loc_plan, zs, progress=None if progress is None else
                              (lambda d, t: progress(d, t + n)))
    organ_bits = sum(1 << i for i, lab in enumerate(loc.config.labels) if lab.role in ("organ", "lesion"))
    mask = (bits & bits.dtype.type(organ_bits)) != 0
    if not mask.any():
        return Located(None, None, len(zs))
    hl, wl = loc_plan.model_size_yx
    organ = largest_component_filled(np.pad(mask, 1))
    zz = np.flatnonzero(organ.any(axis=(1, 2)))
    yy = np.flatnonzero(organ.any(axis=(0, 2)))
    xx = np.flatnonzero(organ.any(axis=(0, 1)))
    margin = model.config.localizer_margin_mm
    mz = int(math.ceil(margin / spacing_zyx[0]))
    z0 = max(0, int(zs[zz[0]]) - step - mz)
    z1 = min(n, int(zs[zz[-1]]) + step + mz + 1)
    hm, wm = plan.model_size_yx  # both grids span the same field of view: edges scale linearly
    my, mx = margin * hm / (h * spacing_zyx[1]), margin * wm / (w * spacing_zyx[2])
    y0, y1 = max(0, math.floor(yy[0] * hm / hl - my)), min(hm, math.ceil((yy[-1] + 1) * hm / hl + my))
    x0, x1 = max(0, math.floor(xx[0] * wm / wl - mx)), min(wm, math.ceil((xx[-1] + 1) * wm / wl + mx))
    box = (slice(y0, y1), slice(x0, x1)) if model.config.localizer_crop_inplane else None
    return Located((z0, z1), box, len(zs))


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
        raise LiverTumorSegError(f"region {region} is not a box inside the image of size {tuple(size)}; give "
                                 f"((i0, i1), (j0, j1), (k0, k1)) with 0 <= start < stop <= size")
    start = [a for a, _ in box]
    extent = [b - a for a, b in box]
    # "Is this CT?" is asked of the whole image: a box inside the liver holds no fat or air, and is still CT
    validate_ct(image, allow_non_ct=options.get("allow_non_ct", False), modality=options.get("modality"))
    options = {**options, "allow_non_ct": True}
    result = run_segmentation(sitk.RegionOfInterest(image, extent, start), model, **options)
    full = sitk.Image(size, sitk.sitkUInt8)
    full.CopyInformation(image)
    result.labels = sitk.Paste(full, result.labels, extent, [0, 0, 0], start)
    result.lesion_probability = {name: sitk.Paste(full, p, extent, [0, 0, 0], start)
                                 for name, p in result.lesion_probability.items()}
    return result


def segment(image, model: SegmentationModel | str | os.PathLike, device: str = "auto", batch_size: int | None = None,
            precision: str = "auto", progress: ProgressCallback | None = None, **options: Any):
    """Segment a 3-D CT ``SimpleITK.Image`` in Hounsfield units.

    Returns a uint8 label map with the input's size, spacing, origin and direction (values from the
    model's labels: 0 background, 1 liver, 2 tumor for the liver models). ``progress(done, total)``
    is called after every batch of slices; returning False cancels. Options: ``thresholds``, ``min_lesion_mm3``,
    ``min_lesion_confidence``, ``organ_margin_mm`` override the model file's values; ``allow_non_ct``
    skips the CT plausibility check; ``modality`` is the DICOM modality when known; ``region``
    = ((i0, i1), (j0, j1), (k0, k1)) restricts the work to that index box (an ROI or slice range);
    ``keep_labels`` = names of the labels to output (e.g. ["Liver"]: tumour counted as liver).
    """
    return run_segmentation(image, model, device=device, batch_size=batch_size, precision=precision,
                            progress=progress, **options).labels

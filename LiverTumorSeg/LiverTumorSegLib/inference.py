"""Batched 2.5-D slice inference on a canonical volume, writing per-voxel channel bits.

Each batch is built from only the slices it needs (plus context), resampled, windowed, run, mapped
back to the input's in-plane grid and thresholded on the device, so memory stays bounded by the
batch whatever the length of the scan: no float copy of the whole volume is ever made. The same loop
runs a coarse localiser on the model grid and the fine model on a crop of it.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from .context import context_positions, context_step_slices, read_context
from .errors import LiverTumorSegError, SegmentationCancelled
from .geometry import padded_size, resampled_size
from .modelfile import SegmentationModel
from .options import PRECISIONS

if TYPE_CHECKING:  # torch is imported lazily: Slicer imports this package at startup
    import torch

log = logging.getLogger(__name__)

#: ``progress(done_slices, total_slices)``; returning False cancels the run
ProgressCallback = Callable[[int, int], "bool | None"]



@dataclass
class InferencePlan:
    """What will actually run, decided once per call and reported back to the user."""

    device: "torch.device"
    precision: str
    batch_size: int
    model_size_yx: tuple[int, int]
    padded_size_yx: tuple[int, int]
    resample: bool
    #: the scan's slice spacing (mm): context offsets in millimetres become slice positions with it
    slice_spacing_mm: float = 1.0
    #: where the fine model ran after localisation (slices, box of the model grid); None: everywhere
    region: dict | None = None


def choose_precision(precision: str, device: "torch.device") -> str:
    """``auto``: mixed precision on GPUs (tensor cores); fp32 on CPUs until measured otherwise."""
    import torch

    if precision not in PRECISIONS:
        raise LiverTumorSegError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "fp32"


def default_batch_size(device: "torch.device", size_yx: tuple[int, int]) -> int:
    """GPUs need big batches. On CPUs only small inputs gain from batching (measured on 2 cores, width-16
    REC-UNet in the whole pipeline: 288² slices take 23.9 s per CT at batch 1 vs 27.4-28.1 s at batch 2 and
    26.5 s at 3; a 160x192 input alone runs 42 ms/slice at batch 4 vs 52 at 1 and 51 at 8)."""
    pixels = size_yx[0] * size_yx[1]
    if device.type == "cuda":
        return max(1, min(64, (16 * 512 * 512) // pixels))
    return max(1, min(16, (2 * 256 * 256) // pixels))


def make_plan(model: SegmentationModel, canonical_shape: tuple[int, int, int], spacing_zyx: tuple[float, ...],
              device: "torch.device", precision: str = "auto", batch_size: int | None = None) -> InferencePlan:
    cfg = model.config
    _, h, w = canonical_shape
    if cfg.spacing_yx_mm is None:
        size = (h, w)
    else:
        size = (resampled_size(h, spacing_zyx[1], cfg.spacing_yx_mm[0]),
                resampled_size(w, spacing_zyx[2], cfg.spacing_yx_mm[1]))
    padded = (padded_size(size[0], cfg.size_multiple), padded_size(size[1], cfg.size_multiple))
    if batch_size is not None and batch_size < 1:
        raise LiverTumorSegError(f"batch size must be >= 1, not {batch_size}; give a positive number of slices")
    if cfg.spatial_dims == 3:  # patches of the sliding-window inferer per network call
        batch_size = batch_size or (4 if device.type == "cuda" else 1)
    return InferencePlan(device=device, precision=choose_precision(precision, device),
                         batch_size=batch_size or default_batch_size(device, padded),
                         model_size_yx=size, padded_size_yx=padded, resample=size != (h, w),
                         slice_spacing_mm=float(spacing_zyx[0]))


def _is_out_of_memory(error: BaseException) -> bool:
    import torch

    if isinstance(error, torch.OutOfMemoryError):
        return True
    text = str(error).lower()
    return isinstance(error, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def resize(t: "torch.Tensor", size: tuple[int, int]) -> "torch.Tensor":
    """Linear in-plane resampling between grids covering the same physical extent."""
    import torch.nn.functional as F

    if tuple(t.shape[-2:]) == tuple(size):
        return t
    shrinking = size[0] < t.shape[-2] or size[1] < t.shape[-1]
    return F.interpolate(t, size=size, mode="bilinear", align_corners=False, antialias=shrinking)


def normalize_hu(t: "torch.Tensor", window_hu: tuple[float, float]) -> "torch.Tensor":
    """HU -> network intensities (``window_to_unit``: clip to the window, map to [-1, 1])."""
    lo, hi = window_hu
    return (t.float().clamp(lo, hi) - (lo + hi) / 2) / ((hi - lo) / 2)


#: a crop of the model grid: (rows, columns) slices
Box = tuple[slice, slice]


def network_input(slabs: "torch.Tensor", plan: InferencePlan, model: SegmentationModel,
                  box: Box | None = None) -> "torch.Tensor":
    """HU context stacks (B, 2k+1, H, W) -> network input: resample, crop, window, pad to the size multiple
    (models with ``window_before_resampling`` clip to their window first).

    Whole slices are resampled before cropping, so a crop sees exactly the pixels the full-slice path
    sees. Training uses the same ``normalize_hu``: what the network sees there is what it sees here.
    """
    import torch.nn.functional as F

    b, c, h, w = slabs.shape
    t = slabs.float().reshape(b * c, 1, h, w)
    if model.config.window_before_resampling:
        t = t.clamp(*model.config.window_hu)
    t = resize(t, plan.model_size_yx).reshape(b, c, *plan.model_size_yx)
    if box is not None:
        t = t[:, :, box[0], box[1]]
    t = normalize_hu(t, model.config.window_hu)
    m = model.config.size_multiple
    ph, pw = padded_size(t.shape[-2], m) - t.shape[-2], padded_size(t.shape[-1], m) - t.shape[-1]
    return F.pad(t, (0, pw, 0, ph), value=-1.0) if ph or pw else t


def probabilities(logits: "torch.Tensor", model: SegmentationModel, crop_yx: tuple[int, int],
                  plan: InferencePlan, box: Box | None = None) -> "torch.Tensor":
    """Per-channel probabilities on the whole model grid (outside a crop box: background)."""
    import torch

    logits = logits[:, :, :crop_yx[0], :crop_yx[1]].float()
    softmax = model.config.output_activation == "softmax"
    probs = torch.softmax(logits, dim=1) if softmax else torch.sigmoid(logits)
    if box is None:
        return probs
    canvas = torch.zeros(probs.shape[0], probs.shape[1], *plan.model_size_yx, device=probs.device)
    if softmax:
        canvas[:, 0] = 1.0
    canvas[:, :, box[0], box[1]] = probs
    return canvas


def bits_dtype(n_labels: int) -> np.dtype:
    """The integer type holding one bit per label: uint8 up to 8 labels (every model so far), wider beyond, so
    that a ninth label is never shifted out of the byte."""
    for dtype in (np.uint8, np.int16, np.int32):
        if n_labels <= np.iinfo(dtype).bits - (0 if dtype == np.uint8 else 1):
            return np.dtype(dtype)
    raise LiverTumorSegError(f"{n_labels} labels are more than LiverTumorSeg supports (31)")


def threshold_bits(probs: "torch.Tensor", model: SegmentationModel, thresholds: tuple[float, ...]) -> "torch.Tensor":
    """Probabilities (B, C, h, w) -> bits (B, h, w) of ``bits_dtype``: bit i set where label i was predicted."""
    import torch

    dtype = getattr(torch, bits_dtype(len(model.config.labels)).name)
    if model.config.output_activation == "softmax":
        label = probs.argmax(dim=1)
        one = torch.ones_like(label)
        bits = torch.where(label > 0, torch.bitwise_left_shift(one, (label - 1).clamp(min=0)), torch.zeros_like(label))
        return bits.to(dtype)
    bits = torch.zeros(probs.shape[0], *probs.shape[2:], dtype=dtype, device=probs.device)
    for c, threshold in enumerate(thresholds):
        bits |= (probs[:, c] > threshold).to(dtype) << c
    return bits


def _run_batches(model: SegmentationModel, volume: np.ndarray, plan: InferencePlan, zs: np.ndarray, consume,
                 box: Box | None = None, progress: ProgressCallback | None = None) -> InferencePlan:
    """Run the network over slices ``zs`` in batches, handing each batch's logits to ``consume(z, logits)``.

    The next batch's input is prepared in a background thread while the network runs (torch releases
    the GIL), so reading and resampling overlap with compute. A CUDA out-of-memory error halves the
    batch and retries; at batch 1 it falls back to the CPU with a warning.
    """
    import torch

    k = model.config.context_slices
    step = context_step_slices(model.config.context_step_mm, plan.slice_spacing_mm)
    net = model.network.to(plan.device).eval()

    def prepare(i0: int, i1: int):
        positions = context_positions(zs[i0:i1], k, step, volume.shape[0])
        slab = torch.from_numpy(read_context(lambda idx: volume[idx], positions, volume.shape[0]))
        with torch.inference_mode():
            return network_input(slab, plan, model, box)

    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=1) as pool:
        i = 0
        pending = pool.submit(prepare, 0, min(len(zs), plan.batch_size))
        while i < len(zs):
            i1 = min(len(zs), i + plan.batch_size)
            try:
                x = pending.result().to(plan.device)
                if i1 < len(zs):
                    pending = pool.submit(prepare, i1, min(len(zs), i1 + plan.batch_size))
                with torch.inference_mode():
                    if plan.precision == "fp32":
                        logits = net(x)
                    else:
                        dtype = torch.bfloat16 if plan.precision == "bf16" else torch.float16
                        with torch.autocast(device_type=plan.device.type, dtype=dtype):
                            logits = net(x)
                    consume(zs[i:i1], logits)
            except Exception as e:  # noqa: BLE001 - only out-of-memory is handled, the rest re-raised
                if not _is_out_of_memory(e):
                    raise
                if plan.device.type == "cuda":
                    torch.cuda.empty_cache()
                if plan.batch_size > 1:
                    plan.batch_size = max(1, plan.batch_size // 2)
                    log.warning("out of memory; retrying with batch size %d", plan.batch_size)
                elif plan.device.type != "cpu":
                    warnings.warn(f"{plan.device} ran out of memory even at batch size 1; continuing on the CPU "
                                  f"(slower). Close other GPU programs or use --device cpu.", RuntimeWarning)
                    plan.device = torch.device("cpu")
                    plan.precision = choose_precision("auto", plan.device)
                    net = net.to(plan.device)
                else:
                    raise LiverTumorSegError("out of memory on the CPU even at batch size 1; close other programs "
                                             "or use a model with a coarser input spacing") from None
                pending.cancel()
                pending = pool.submit(prepare, i, min(len(zs), i + plan.batch_size))
                continue
            i = i1
            if progress is not None and progress(i, len(zs)) is False:
                raise SegmentationCancelled("segmentation cancelled")
    return plan


def predict_bits(model: SegmentationModel, volume: np.ndarray,
                 targets: Sequence[tuple[np.ndarray, tuple[float, ...] | None]], plan: InferencePlan,
                 progress: ProgressCallback | None = None, z_range: tuple[int, int] | None = None,
                 box: Box | None = None, probability_outs: Sequence[tuple[int, np.ndarray]] = ()) -> InferencePlan:
    """Fill each ``(out, thresholds)`` target (canonical uint8 view, Z x H x W; ``None`` = the model's
    thresholds) with the thresholded channel bits of slices ``z_range``, all from one network pass.

    Several targets let threshold calibration try every candidate for the price of one inference.
    ``box`` restricts the network to a crop of the model grid (coarse-to-fine); outside it, and outside
    ``z_range``, the outputs are left as they are. ``probability_outs`` = ``(label index, out)`` pairs also
    receive that label's probability (0..255 in uint8 views like the targets): per-lesion confidence.
    Returns the plan as finally run (device and batch size may have changed after an out-of-memory error).
    """
    import torch

    targets = [(out, tuple(thresholds or model.config.thresholds)) for out, thresholds in targets]
    h, w = volume.shape[1:]
    crop = plan.model_size_yx if box is None else (box[0].stop - box[0].start, box[1].stop - box[1].start)
    z0, z1 = z_range or (0, volume.shape[0])

    def consume(z, logits):
        probs = resize(probabilities(logits, model, crop, plan, box), (h, w))
        for out, thresholds in targets:
            out[int(z[0]):int(z[-1]) + 1] = threshold_bits(probs, model, thresholds).cpu().numpy()
        first = 1 if model.config.output_activation == "softmax" else 0  # softmax channel 0 is background
        for label_index, out in probability_outs:
            p = probs[:, first + label_index] * 255.0
            out[int(z[0]):int(z[-1]) + 1] = p.round_().to(torch.uint8).cpu().numpy()

    return _run_batches(model, volume, plan, np.arange(z0, z1), consume, box, progress)


def predict_model_grid(model: SegmentationModel, volume: np.ndarray, plan: InferencePlan, zs: np.ndarray,
                       progress: ProgressCallback | None = None) -> np.ndarray:
    """Thresholded bits of slices ``zs`` on the model's own grid (no mapping back): the localiser's view."""
    out = np.zeros((len(zs),) + tuple(plan.model_size_yx), dtype=bits_dtype(len(model.config.labels)))
    position = {int(z): n for n, z in enumerate(zs)}

    def consume(z, logits):
        probs = probabilities(logits, model, plan.model_size_yx, plan)
        n = position[int(z[0])]
        out[n:n + len(z)] = threshold_bits(probs, model, model.config.thresholds).cpu().numpy()

    _run_batches(model, volume, plan, np.asarray(zs), consume, None, progress)
    return out

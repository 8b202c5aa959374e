"""Batched 2.5-D slice inference on a canonical volume, writing per-voxel channel bits.

Each batch is built from only the slices it needs (plus context), resampled, windowed, run, mapped
back to the input's in-plane grid and thresholded on the device, so memory stays bounded by the
batch whatever the length of the scan: no float copy of the whole volume is ever made.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import numpy as np

from .errors import LiverTumorSegError, SegmentationCancelled
from .geometry import padded_size, resampled_size
from .modelfile import SegmentationModel

if TYPE_CHECKING:  # torch is imported lazily: Slicer imports this package at startup
    import torch

log = logging.getLogger(__name__)

#: ``progress(done_slices, total_slices)``; returning False cancels the run
ProgressCallback = Callable[[int, int], "bool | None"]

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@dataclass
class InferencePlan:
    """What will actually run, decided once per call and reported back to the user."""

    device: "torch.device"
    precision: str
    batch_size: int
    model_size_yx: tuple[int, int]
    padded_size_yx: tuple[int, int]
    resample: bool


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
    """CPUs gain nothing from big batches (measured: per-slice time rises); GPUs need them."""
    pixels = size_yx[0] * size_yx[1]
    if device.type == "cuda":
        return max(1, min(64, (16 * 512 * 512) // pixels))
    return max(1, min(16, (4 * 256 * 256) // pixels))


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
        raise LiverTumorSegError(f"batch size must be >= 1, not {batch_size}")
    return InferencePlan(device=device, precision=choose_precision(precision, device),
                         batch_size=batch_size or default_batch_size(device, padded),
                         model_size_yx=size, padded_size_yx=padded, resample=size != (h, w))


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


def stack_context(t: "torch.Tensor", k: int) -> "torch.Tensor":
    """(n + 2k, 1, H, W) consecutive slices -> (n, 2k+1, H, W): channel j of output i is slice i + j."""
    if k == 0:
        return t
    return t[:, 0].unfold(0, 2 * k + 1, 1).permute(0, 3, 1, 2)


def network_input(slab: "torch.Tensor", plan: InferencePlan, model: SegmentationModel) -> "torch.Tensor":
    """HU slices (n + 2k, H, W) -> network input (n, 2k+1, H', W'): resample, window, pad, stack context.

    Training builds its inputs from the same ``normalize_hu`` and ``stack_context``, so what the
    network sees there is exactly what it sees here.
    """
    import torch.nn.functional as F

    t = normalize_hu(resize(slab.float().unsqueeze(1), plan.model_size_yx), model.config.window_hu)
    ph, pw = plan.padded_size_yx[0] - t.shape[-2], plan.padded_size_yx[1] - t.shape[-1]
    if ph or pw:
        t = F.pad(t, (0, pw, 0, ph), value=-1.0)
    return stack_context(t, model.config.context_slices)


def channel_bits(logits: "torch.Tensor", plan: InferencePlan, model: SegmentationModel,
                 out_size: tuple[int, int], thresholds: tuple[float, ...]) -> "torch.Tensor":
    """Logits on the padded model grid -> uint8 bits per voxel on the input grid (bit i: label i)."""
    import torch

    cfg = model.config
    logits = logits[:, :, :plan.model_size_yx[0], :plan.model_size_yx[1]].float()
    if cfg.output_activation == "softmax":
        probs = resize(torch.softmax(logits, dim=1), out_size)
        label = probs.argmax(dim=1)
        bits = torch.where(label > 0, torch.bitwise_left_shift(torch.ones_like(label), (label - 1).clamp(min=0)),
                           torch.zeros_like(label))
        return bits.to(torch.uint8)
    probs = resize(torch.sigmoid(logits), out_size)
    bits = torch.zeros(probs.shape[0], *out_size, dtype=torch.uint8, device=probs.device)
    for c, threshold in enumerate(thresholds):
        bits |= (probs[:, c] > threshold).to(torch.uint8) << c
    return bits


def predict_bits(model: SegmentationModel, volume: np.ndarray, out: np.ndarray, plan: InferencePlan,
                 thresholds: tuple[float, ...] | None = None,
                 progress: ProgressCallback | None = None) -> InferencePlan:
    """Fill ``out`` (canonical uint8 view, Z x H x W) with the thresholded channel bits of every slice.

    A CUDA out-of-memory error halves the batch and retries; at batch 1 it falls back to the CPU
    with a warning. Returns the plan as finally run (device and batch size may have changed).
    """
    import torch

    thresholds = tuple(thresholds or model.config.thresholds)
    n_slices, h, w = volume.shape
    k = model.config.context_slices
    net = model.network.to(plan.device).eval()
    z = 0
    while z < n_slices:
        z1 = min(n_slices, z + plan.batch_size)
        idx = np.clip(np.arange(z - k, z1 + k), 0, n_slices - 1)
        slab = torch.from_numpy(np.ascontiguousarray(volume[idx]))
        try:
            with torch.inference_mode():
                x = network_input(slab.to(plan.device), plan, model)
                if plan.precision == "fp32":
                    logits = net(x)
                else:
                    dtype = torch.bfloat16 if plan.precision == "bf16" else torch.float16
                    with torch.autocast(device_type=plan.device.type, dtype=dtype):
                        logits = net(x)
                bits = channel_bits(logits, plan, model, (h, w), thresholds)
            out[z:z1] = bits.cpu().numpy()
        except Exception as e:  # noqa: BLE001 - only out-of-memory is handled, the rest re-raised
            if not _is_out_of_memory(e):
                raise
            if plan.device.type == "cuda":
                torch.cuda.empty_cache()
            if plan.batch_size > 1:
                plan.batch_size = max(1, plan.batch_size // 2)
                log.warning("out of memory; retrying with batch size %d", plan.batch_size)
                continue
            if plan.device.type != "cpu":
                warnings.warn(f"{plan.device} ran out of memory even at batch size 1; continuing on the CPU "
                              f"(slower). Close other GPU programs or use --device cpu.", RuntimeWarning)
                plan.device = torch.device("cpu")
                plan.precision = choose_precision("auto", plan.device)
                net = net.to(plan.device)
                continue
            raise LiverTumorSegError("out of memory on the CPU even at batch size 1; close other programs or "
                                     "use a model with a coarser input spacing") from None
        z = z1
        if progress is not None and progress(z, n_slices) is False:
            raise SegmentationCancelled("segmentation cancelled")
    return plan

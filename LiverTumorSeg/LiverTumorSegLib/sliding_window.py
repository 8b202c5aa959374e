"""The 3-D inferer: a volume network run on overlapping patches of the model grid, Gaussian-weighted.

Chosen by the model file (``inferer: "sliding_window"``). The scan (or the part of it the previous stage
found) is brought to the model grid (in-plane exactly as the slice inferer does it, then linearly along z),
windowed, padded, and run patch by patch with MONAI's ``sliding_window_inference`` (overlap and Gaussian
importance weighting as in nnU-Net); probabilities are mapped back to the input grid a slab at a time and
thresholded there, so no full-resolution float volume is ever made. Device, precision, out-of-memory back-off,
progress and cancel behave as in the slice inferer.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from .errors import LiverTumorSegError, SegmentationCancelled
from .geometry import padded_size, resampled_size
from .inference import (
    InferencePlan,
    ProgressCallback,
    _is_out_of_memory,
    choose_precision,
    normalize_hu,
    resize,
    threshold_bits,
)
from .modelfile import SegmentationModel

_SLAB = 16


def model_grid_size(model: SegmentationModel, shape_zyx: tuple[int, int, int],
                    spacing_zyx: Sequence[float]) -> tuple[int, int, int]:
    cfg = model.config
    z, h, w = shape_zyx
    sz = spacing_zyx[0] if cfg.spacing_z_mm is None else cfg.spacing_z_mm
    sy, sx = (spacing_zyx[1], spacing_zyx[2]) if cfg.spacing_yx_mm is None else cfg.spacing_yx_mm
    return (resampled_size(z, spacing_zyx[0], sz), resampled_size(h, spacing_zyx[1], sy),
            resampled_size(w, spacing_zyx[2], sx))


def _along_z(block: "torch.Tensor", positions: np.ndarray) -> "torch.Tensor":  # noqa: F821
    """Linear interpolation of (Z, ...) at fractional positions (centres mapped like ``align_corners=False``)."""
    import torch

    n = block.shape[0]
    pos = np.clip(positions, 0, n - 1)
    lower = np.floor(pos).astype(np.int64)
    upper = np.minimum(lower + 1, n - 1)
    w = torch.from_numpy((pos - lower).astype(np.float32)).to(block.device).view(-1, *([1] * (block.dim() - 1)))
    return block[lower] * (1 - w) + block[upper] * w


def _centres(n_out: int, n_in: int) -> np.ndarray:
    """Positions, in units of a grid of ``n_in`` samples, of the centres of ``n_out`` samples spanning the same
    extent."""
    return (np.arange(n_out) + 0.5) * n_in / n_out - 0.5


def model_input(model: SegmentationModel, volume: np.ndarray, size: tuple[int, int, int]) -> "torch.Tensor":  # noqa
    """The canonical volume (Z, H, W, HU) on the model grid, windowed to [-1, 1]: (1, 1, z, h, w)."""
    import torch

    cfg = model.config
    slabs = []
    for z0 in range(0, volume.shape[0], _SLAB):
        with torch.inference_mode():
            t = torch.from_numpy(np.ascontiguousarray(volume[z0:z0 + _SLAB], dtype=np.float32))[:, None]
            if cfg.window_before_resampling:
                t = t.clamp(*cfg.window_hu)
            slabs.append(resize(t, size[1:])[:, 0])
    with torch.inference_mode():
        inplane = torch.cat(slabs)
        grid = _along_z(inplane, _centres(size[0], volume.shape[0])) if size[0] != volume.shape[0] else inplane
        return normalize_hu(grid, cfg.window_hu)[None, None]


def predict_bits_volume(model: SegmentationModel, volume: np.ndarray, spacing_zyx: Sequence[float],
                        targets: Sequence[tuple[np.ndarray, tuple[float, ...] | None]], plan: InferencePlan,
                        progress: ProgressCallback | None = None, z_range: tuple[int, int] | None = None,
                        box: tuple[slice, slice] | None = None,
                        probability_outs: Sequence[tuple[int, np.ndarray]] = ()) -> InferencePlan:
    """Fill the targets (canonical views, Z x H x W) with thresholded bits, as ``inference.predict_bits`` does for
    slice models; ``z_range`` and ``box`` (of the input grid here: a previous stage's region) restrict the work."""
    import torch
    import torch.nn.functional as F
    from monai.inferers import sliding_window_inference

    cfg = model.config
    targets = [(out, tuple(thresholds or cfg.thresholds)) for out, thresholds in targets]
    z0, z1 = z_range or (0, volume.shape[0])
    ys, xs = box or (slice(0, volume.shape[1]), slice(0, volume.shape[2]))
    region = volume[z0:z1, ys, xs]
    size = model_grid_size(model, region.shape, spacing_zyx)
    x = model_input(model, region, size)
    m = cfg.size_multiple
    padded = [max(padded_size(n, m), p) for n, p in zip(size, cfg.patch_size)]
    x = F.pad(x, [0, padded[2] - size[2], 0, padded[1] - size[1], 0, padded[0] - size[0]], value=-1.0)
    net = model.network.to(plan.device).eval()
    counts = [math.ceil((n - p) / max(1, int(p * (1 - cfg.overlap)))) + 1 for n, p in zip(padded, cfg.patch_size)]
    windows = int(np.prod(counts))
    done = [0]

    def predictor(patch: "torch.Tensor") -> "torch.Tensor":
        if plan.precision == "fp32":
            out = net(patch)
        else:
            dtype = torch.bfloat16 if plan.precision == "bf16" else torch.float16
            with torch.autocast(device_type=plan.device.type, dtype=dtype):
                out = net(patch)
        done[0] = min(windows, done[0] + patch.shape[0])
        if progress is not None and progress(done[0], windows) is False:
            raise SegmentationCancelled("segmentation cancelled")
        return out.float()

    while True:
        try:
            with torch.inference_mode():
                logits = sliding_window_inference(x.to(plan.device), tuple(cfg.patch_size), plan.batch_size,
                                                  predictor, overlap=cfg.overlap, mode="gaussian",
                                                  padding_mode="constant", cval=-1.0)
            break
        except Exception as e:  # noqa: BLE001 - only out-of-memory is handled, the rest re-raised
            if not _is_out_of_memory(e):
                raise
            done[0] = 0
            if plan.batch_size > 1:
                plan.batch_size = max(1, plan.batch_size // 2)
            elif plan.device.type != "cpu":
                plan.device, plan.precision = torch.device("cpu"), choose_precision("auto", torch.device("cpu"))
                net = net.to(plan.device)
            else:
                raise LiverTumorSegError("out of memory on the CPU even with one patch at a time; close other "
                                         "programs or use a model with a coarser spacing") from None
    with torch.inference_mode():
        logits = logits[0, :, :size[0], :size[1], :size[2]].cpu()
        probs = torch.softmax(logits, 0) if cfg.output_activation == "softmax" else torch.sigmoid(logits)
        del logits
        first = 1 if cfg.output_activation == "softmax" else 0
        positions = _centres(region.shape[0], size[0])
        h, w = region.shape[1:]
        for a in range(0, region.shape[0], _SLAB):
            b = min(region.shape[0], a + _SLAB)
            slab = _along_z(probs.permute(1, 0, 2, 3), positions[a:b])  # (slices, C, h, w) on the model grid
            slab = resize(slab, (h, w)) if (h, w) != tuple(size[1:]) else slab
            for out, thresholds in targets:
                out[z0 + a:z0 + b, ys, xs] = threshold_bits(slab, model, thresholds).numpy()
            for label_index, out in probability_outs:
                out[z0 + a:z0 + b, ys, xs] = (slab[:, first + label_index] * 255.0).round_().to(torch.uint8).numpy()
    plan.region = None
    return plan


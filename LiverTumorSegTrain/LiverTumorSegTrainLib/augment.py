"""Batched, seeded augmentation on tensors: geometry (rotation, scaling, elastic grid) and intensity.

Scanners, patients and contrast timing vary far more than a few hundred training scans show; these
perturbations are the cheap way to cover part of that. No flips: left/right and up/down carry anatomy
(the liver is on the patient's right), and the pipeline always presents scans in one orientation.
Parameters come from per-sample generators seeded by (seed, epoch, sample index), so a resumed run
reproduces them exactly.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


def _params(seeds: list[tuple[int, int, int]], shift: float, scale: float) -> dict[str, np.ndarray]:
    rows = []
    for s in seeds:
        rng = np.random.default_rng([*s, 0xA6])
        rows.append([
            rng.random() < 0.8, rng.uniform(-15, 15),            # rotate?, degrees
            rng.random() < 0.8, math.exp(rng.uniform(-0.15, 0.15)),  # scale?, factor
            rng.random() < 0.5,                                   # elastic?
            rng.uniform(-shift, shift), rng.uniform(1 - scale, 1 + scale),  # intensity shift (normalised), factor
            rng.random() < 0.3, math.exp(rng.uniform(-0.3, 0.3)),  # gamma?, gamma
            rng.random() < 0.3, rng.uniform(0.0, 0.06),           # noise?, sd
            rng.random() < 0.2, rng.uniform(0.5, 1.0),            # blur?, sigma (pixels)
            int(rng.integers(2**31)),                             # elastic field / noise seed
        ])
    a = np.array(rows, dtype=np.float64)
    names = ["rot", "deg", "scl", "factor", "elastic", "shift", "iscale", "gam", "gamma", "noise", "sd",
             "blur", "sigma", "seed"]
    return {n: a[:, i] for i, n in enumerate(names)}


def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    r = max(1, int(math.ceil(2 * sigma)))
    k = torch.exp(-0.5 * (torch.arange(-r, r + 1, dtype=x.dtype) / sigma) ** 2)
    k = (k / k.sum()).to(x.device)
    c = x.shape[1]
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    return F.conv2d(F.pad(x, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)


def augment(x: torch.Tensor, y: torch.Tensor, seeds: list[tuple[int, int, int]], intensity_shift: float = 0.08,
            intensity_scale: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """Augment normalised inputs ``x`` (B, C, H, W, in [-1, 1]) and binary targets ``y`` (B, K, H, W) alike.

    Intensities move by up to ``intensity_shift`` (1 = half the HU window) and scale by 1 ± ``intensity_scale``."""
    p = _params(seeds, intensity_shift, intensity_scale)
    b, _, h, w = x.shape
    theta = torch.zeros(b, 2, 3, dtype=torch.float32)
    for i in range(b):
        a = math.radians(p["deg"][i]) if p["rot"][i] else 0.0
        s = 1.0 / p["factor"][i] if p["scl"][i] else 1.0
        theta[i, 0, 0], theta[i, 0, 1] = s * math.cos(a), -s * math.sin(a) * h / w
        theta[i, 1, 0], theta[i, 1, 1] = s * math.sin(a) * w / h, s * math.cos(a)
    grid = F.affine_grid(theta, [b, 1, h, w], align_corners=False)
    for i in np.flatnonzero(p["elastic"]):
        g = torch.Generator().manual_seed(int(p["seed"][i]))
        coarse = torch.randn(1, 2, 5, 5, generator=g) * 0.03  # a few % of the field of view
        grid[i] += F.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=True)[0].permute(1, 2, 0)
    grid = grid.to(x.device)
    x = F.grid_sample(x + 1.0, grid, mode="bilinear", padding_mode="zeros", align_corners=False) - 1.0  # air fill
    y = (F.grid_sample(y, grid, mode="bilinear", padding_mode="zeros", align_corners=False) > 0.5).to(y.dtype)

    def col(name: str) -> torch.Tensor:
        return torch.tensor(p[name], dtype=x.dtype, device=x.device).view(-1, 1, 1, 1)

    x = x * col("iscale") + col("shift")
    gamma = torch.where(col("gam") > 0, col("gamma"), torch.ones_like(col("gamma")))
    x = ((x.clamp(-1, 1) + 1) / 2).pow(gamma) * 2 - 1
    for i in np.flatnonzero(p["noise"]):
        g = torch.Generator().manual_seed(int(p["seed"][i]) + 1)
        x[i] += (torch.randn(x.shape[1:], generator=g) * float(p["sd"][i])).to(x.device)
    for i in np.flatnonzero(p["blur"]):
        x[i:i + 1] = _blur(x[i:i + 1], float(p["sigma"][i]))
    return x, y


def augment_intensity(x: torch.Tensor, seeds: list[tuple[int, int, int]], intensity_shift: float = 0.08,
                      intensity_scale: float = 0.1) -> torch.Tensor:
    """The intensity part of ``augment`` (shift, scale, gamma, noise) for inputs of any spatial dimension: 3-D
    patches get no geometric augmentation yet."""
    p = _params(seeds, intensity_shift, intensity_scale)
    shape = (-1,) + (1,) * (x.dim() - 1)

    def col(name: str) -> torch.Tensor:
        return torch.tensor(p[name], dtype=x.dtype, device=x.device).view(shape)

    x = x * col("iscale") + col("shift")
    gamma = torch.where(col("gam") > 0, col("gamma"), torch.ones_like(col("gamma")))
    x = ((x.clamp(-1, 1) + 1) / 2).pow(gamma) * 2 - 1
    for i in np.flatnonzero(p["noise"]):
        g = torch.Generator().manual_seed(int(p["seed"][i]) + 1)
        x[i] += (torch.randn(x.shape[1:], generator=g) * float(p["sd"][i])).to(x.device)
    return x

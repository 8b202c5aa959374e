"""Segmentation losses for multi-label sigmoid outputs, returned per sample so samples can be weighted.

``bce_dice`` is the REC-UNet authors' loss: BCE-with-logits plus the mean over channels of (1 - soft
Dice), the soft Dice computed per sample with smoothing 1e-5. Per-sample values let pseudo-labelled
samples count less (CARes-UNet's semi-supervised training).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def soft_dice(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1e-5) -> torch.Tensor:
    """(B, C) soft Dice of sigmoid probabilities, per sample and channel."""
    p = torch.sigmoid(logits).flatten(2)
    t = target.flatten(2)
    return (2 * (p * t).sum(-1) + smooth) / (p.sum(-1) + t.sum(-1) + smooth)


def bce_dice(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none").flatten(1).mean(1)
    return bce + (1 - soft_dice(logits, target)).mean(1)


def dice(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (1 - soft_dice(logits, target)).mean(1)


def focal_dice(logits: torch.Tensor, target: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    """Focal BCE (down-weights easy background pixels, which dominate liver CT) plus soft Dice."""
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p_t = torch.exp(-bce)
    focal = ((1 - p_t) ** gamma * bce).flatten(1).mean(1)
    return focal + (1 - soft_dice(logits, target)).mean(1)


LOSSES: dict[str, LossFn] = {"bce_dice": bce_dice, "dice": dice, "focal_dice": focal_dice}

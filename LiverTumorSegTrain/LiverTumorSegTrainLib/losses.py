"""Segmentation losses, returned per sample so samples can be weighted, for sigmoid and softmax heads.

Sigmoid heads (one channel per label, nested labels allowed): ``bce_dice`` is the REC-UNet authors' loss,
BCE-with-logits plus the mean over channels of (1 - soft Dice), the soft Dice computed per sample with
smoothing 1e-5; ``dice``; ``focal_dice``. Softmax heads (channel 0 background, exclusive classes, targets
one-hot with the background channel): ``ce_dice`` (cross-entropy plus the foreground classes' soft Dice) and
``dice``. Per-sample values let pseudo-labelled samples count less (CARes-UNet's semi-supervised training).
Spatial dimensions are flattened, so 2-D slices and 3-D patches use the same functions.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def soft_dice(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1e-5,
              probabilities: torch.Tensor | None = None) -> torch.Tensor:
    """(B, C) soft Dice of sigmoid probabilities (or the given ``probabilities``), per sample and channel."""
    p = (torch.sigmoid(logits) if probabilities is None else probabilities).flatten(2)
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


def softmax_dice(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean (1 - soft Dice) of the foreground classes of a softmax head (target one-hot, channel 0 background)."""
    probs = torch.softmax(logits, dim=1)
    return (1 - soft_dice(logits[:, 1:], target[:, 1:], probabilities=probs[:, 1:])).mean(1)


def ce_dice(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy (class = the target's argmax: augmentation can leave a pixel with no class, which then is
    background) plus the foreground soft Dice."""
    ce = F.cross_entropy(logits, target.argmax(dim=1), reduction="none").flatten(1).mean(1)
    return ce + softmax_dice(logits, target)


LOSSES: dict[str, LossFn] = {"bce_dice": bce_dice, "dice": dice, "focal_dice": focal_dice}
SOFTMAX_LOSSES: dict[str, LossFn] = {"ce_dice": ce_dice, "dice": softmax_dice}


def loss_function(name: str, activation: str) -> LossFn:
    """The loss ``name`` for a sigmoid or softmax head; a loss that does not suit the head is an error."""
    table = SOFTMAX_LOSSES if activation == "softmax" else LOSSES
    if name not in table:
        raise ValueError(f"loss {name!r} does not suit a {activation} head; use one of {', '.join(table)}")
    return table[name]

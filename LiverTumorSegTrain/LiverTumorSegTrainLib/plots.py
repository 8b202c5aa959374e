"""PNG figures: learning curves of a run and quality-control slices of a segmentation.

A loss number says little; a curve shows over- or under-fitting at a glance, and a few axial slices
with contours show whether "Dice 0.95" means a clean liver or a leak into the spleen.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from LiverTumorSegLib.atomicfile import atomic_path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def learning_curves(history: Sequence[dict[str, Any]], path: str | Path) -> None:
    """Training loss and validation Dice per epoch."""
    plt = _pyplot()
    epochs = [h["epoch"] for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6), dpi=100)
    ax1.plot(epochs, [h["train_loss"] for h in history], "-o", ms=3, color="tab:blue")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("training loss")
    ax1.grid(alpha=0.3)
    keys = sorted({k for h in history for k in h if k.startswith("val_dice_")})
    for key in keys:
        pts = [(h["epoch"], h[key]) for h in history if key in h]
        ax2.plot(*zip(*pts), "-o", ms=3, label=key[len("val_dice_"):])
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("validation Dice per case (pipeline)")
    ax2.set_ylim(0, 1)
    ax2.grid(alpha=0.3)
    if keys:
        ax2.legend(loc="lower right")
    fig.tight_layout()
    with atomic_path(path, overwrite=True) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def qc_slices(ct, labels, path: str | Path, truth=None, n: int = 3, window: tuple[float, float] = (-160, 240),
              title: str = "", overwrite: bool = False) -> None:
    """Axial slices (radiological view) with liver and tumour contours; dashed: ground truth if given."""
    import SimpleITK as sitk

    from LiverTumorSegLib.geometry import CanonicalFrame

    plt = _pyplot()
    frame = CanonicalFrame.of_image(ct)
    img = frame.view(sitk.GetArrayViewFromImage(ct))
    lab = frame.view(sitk.GetArrayViewFromImage(labels))
    ref = frame.view(sitk.GetArrayViewFromImage(truth)) if truth is not None else None
    area_t = (lab == 2).sum(axis=(1, 2))
    area_l = (lab > 0).sum(axis=(1, 2))
    picks = []
    if area_t.any():
        picks.append(int(area_t.argmax()))
    zs = np.flatnonzero(area_l)
    if zs.size:
        picks += [int(zs[len(zs) // 3]), int(zs[2 * len(zs) // 3])]
    picks = sorted(dict.fromkeys(picks))[:n] or [img.shape[0] // 2]
    sy, sx = frame.spacing_zyx[1:]
    fig, axes = plt.subplots(1, len(picks), figsize=(4 * len(picks), 4.2), dpi=100, squeeze=False)
    for ax, z in zip(axes[0], picks):
        ax.imshow(np.clip(img[z], *window), cmap="gray", vmin=window[0], vmax=window[1], aspect=sy / sx)
        for mask_src, style in ((lab, "-"), (ref, "--")):
            if mask_src is None:
                continue
            for value, color in ((1, "#dd8265"), (2, "#ffc832")):
                mask = (mask_src[z] >= value) if value == 1 else (mask_src[z] == value)
                if mask.any() and not mask.all():
                    ax.contour(mask.astype(float), levels=[0.5], colors=[color], linestyles=style, linewidths=1.2)
        ax.set_title(f"slice {z}")
        ax.axis("off")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(path, overwrite=overwrite) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)

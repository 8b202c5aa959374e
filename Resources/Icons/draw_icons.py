"""Draws the extension, module and effect icons (flat liver with a tumour) and writes them as PNG.

Why a script: the icons are drawn from shapes, not copied stock art, and can be redrawn at any size or in
another colour by changing a number here. Run from the repository root (needs only numpy):

    python Resources/Icons/draw_icons.py
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
LIVER = (221, 130, 101)  # Slicer's recommended colour for Liver (SNOMED 10200004)
OUTLINE = (140, 62, 44)
TUMOR = (255, 200, 50)  # the Tumor segment's colour
TUMOR_EDGE = (200, 120, 20)
SPARK = (40, 120, 210)


def write_png(path: Path, rgba: np.ndarray) -> None:
    """Minimal PNG writer (8-bit RGBA, no filtering): the icons need nothing more."""
    h, w, _ = rgba.shape
    raw = b"".join(b"\x00" + rgba[y].astype(np.uint8).tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 6, 0, 0, 0)) \
        + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png)


def smooth_min(a: np.ndarray, b: np.ndarray, k: float) -> np.ndarray:
    h = np.clip(0.5 + 0.5 * (b - a) / k, 0.0, 1.0)
    return b * (1 - h) + a * h - k * h * (1 - h)


def ellipse(x, y, cx, cy, rx, ry):
    """Approximate signed distance (in units of the icon) to an ellipse."""
    return (np.hypot((x - cx) / rx, (y - cy) / ry) - 1.0) * min(rx, ry)


def liver_sdf(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """A liver seen from the front: big rounded right lobe (viewer's left) tapering into the left lobe,
    with the concave inferior edge. Coordinates in [0, 1], y downwards."""
    right_lobe = ellipse(x, y, 0.36, 0.46, 0.30, 0.30)
    body = ellipse(x, y, 0.56, 0.36, 0.34, 0.20)
    left_lobe = ellipse(x, y, 0.78, 0.33, 0.18, 0.10)
    shape = smooth_min(smooth_min(right_lobe, body, 0.08), left_lobe, 0.06)
    notch = -ellipse(x, y, 0.78, 0.78, 0.36, 0.30)  # the inferior edge curves up towards the left lobe
    top = -ellipse(x, y, 0.50, -0.35, 0.60, 0.50)  # a flatter dome under the diaphragm
    return np.maximum(np.maximum(shape, notch), top)


def coverage(sdf: np.ndarray, px: float) -> np.ndarray:
    """Anti-aliased coverage of ``sdf < 0`` with an edge one pixel wide."""
    return np.clip(0.5 - sdf / px, 0.0, 1.0)


def over(dst: np.ndarray, color, alpha: np.ndarray) -> None:
    """Paint ``color`` with per-pixel ``alpha`` over the premultiplied RGBA float image ``dst``."""
    a = alpha[..., None]
    dst[..., :3] = dst[..., :3] * (1 - a) + np.array(color, float) / 255.0 * a
    dst[..., 3:] = dst[..., 3:] * (1 - a) + a


def draw(size: int, outline_px: float, tumor: tuple[float, float, float], spark: bool = False,
         margin: float = 0.04) -> np.ndarray:
    """RGBA uint8 icon of ``size`` pixels; ``tumor`` = (cx, cy, r) in icon units."""
    px = 1.0 / size
    c = (np.arange(size) + 0.5) / size
    x, y = np.meshgrid(c, c)
    # fit the shape into the icon, centred: the sdf above spans roughly x 0.05..0.97, y 0.12..0.75
    scale = (1 - 2 * margin) / 0.92
    sx, sy = (x - 0.5) / scale + 0.51, (y - 0.5) / scale + 0.45
    d = liver_sdf(sx, sy) * scale
    img = np.zeros((size, size, 4))
    over(img, OUTLINE, coverage(d, px))
    over(img, LIVER, coverage(d + outline_px * px, px))
    # a lighter band along the dome gives the flat shape a little depth
    highlight = np.maximum(d + outline_px * px + 0.05, -(d + outline_px * px + 0.12))
    over(img, (236, 160, 132), 0.8 * coverage(np.maximum(highlight, sy - 0.42), px))
    tx, ty, tr = tumor
    t = np.hypot(sx - tx, sy - ty) * scale - tr
    over(img, TUMOR_EDGE, coverage(t, px))
    over(img, TUMOR, coverage(t + max(outline_px * 0.7, 1.0) * px, px))
    if spark:  # a four-pointed star: "AI"
        sx0, sy0, r = 0.86, 0.14, 0.11
        ax, ay = np.abs(x - sx0), np.abs(y - sy0)
        star = np.sqrt(ax) + np.sqrt(ay) - np.sqrt(r)
        over(img, SPARK, coverage(star * 0.25, px))
    rgb = np.where(img[..., 3:] > 0, img[..., :3] / np.maximum(img[..., 3:], 1e-6), 0)
    return np.round(np.concatenate([rgb, img[..., 3:]], axis=-1) * 255).clip(0, 255).astype(np.uint8)


def main() -> None:
    write_png(ROOT / "Resources" / "Icons" / "LiverTumorSeg.png", draw(128, 4.0, (0.40, 0.46, 0.085)))
    write_png(ROOT / "LiverTumorSeg" / "Resources" / "Icons" / "LiverTumorSeg.png",
              draw(128, 4.0, (0.40, 0.46, 0.085), spark=True))
    write_png(ROOT / "LiverTumorSeg" / "Resources" / "Icons" / "SegmentEditorLiverTumorAI.png",
              draw(21, 1.2, (0.38, 0.45, 0.13), margin=0.0))


if __name__ == "__main__":
    main()

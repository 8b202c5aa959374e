"""Training data for a later cascade stage: each case cropped to its liver's box, optionally liver-masked.

At inference a stage linked to the stage before (``modelfile.StageLink``) sees only the previous stage's organ box
grown by a margin, and with ``mask_input`` only the voxels inside that grown organ (the rest at the bottom of its
window). A tumour stage must train on what it will see: crops of the same shape, from the reference liver, or from
the liver a liver model predicts (closer to what inference gives it, mistakes included).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class StageRegion:
    """Where a stage's training samples come from: ``margin_mm`` around the liver; ``mask_input``: voxels outside
    the grown liver become ``fill_hu``; ``liver_model``: a model file whose predicted liver is used instead of the
    reference (None: the reference)."""

    margin_mm: float = 10.0
    mask_input: bool = False
    fill_hu: float = -1024.0
    liver_model: str | None = None

    def key(self) -> dict:
        """What changes the cached arrays (the liver model by its content, not its path)."""
        d = asdict(self)
        if self.liver_model is not None:
            from LiverTumorSegLib.modelfile import file_sha256

            d["liver_model"] = file_sha256(self.liver_model)
        return d


def predicted_organ(ct, model_path: str):
    """The liver a liver model finds in ``ct``, as a label map on the CT's grid (what a cascade's first stage gives
    the next one at inference)."""
    from LiverTumorSegLib.pipeline import segment

    return segment(ct, model_path, device="cpu")


def crop_to_region(image: np.ndarray, labels: np.ndarray, organ: np.ndarray, spacing_zyx, region: StageRegion
                   ) -> tuple[np.ndarray, np.ndarray] | None:
    """The case's arrays cropped to ``organ``'s box grown by the margin (and masked outside the grown organ when
    asked); None when there is no organ (the case then has nothing to train this stage on)."""
    from LiverTumorSegLib.postprocess import dilate
    from LiverTumorSegLib.volumes import bounding_box

    margin = tuple(int(math.ceil(region.margin_mm / s)) for s in spacing_zyx)
    box = bounding_box(organ, lambda slab: slab, margin)
    if box is None:
        return None
    image, labels = np.array(image[box]), np.array(labels[box])
    if region.mask_input:
        grown = dilate(np.ascontiguousarray(organ[box]), tuple(spacing_zyx), region.margin_mm)
        image[~grown] = np.asarray(region.fill_hu).astype(image.dtype)
    return image, labels

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


def _region_box(organ: np.ndarray, spacing_zyx, region: StageRegion) -> tuple[slice, ...] | None:
    from LiverTumorSegLib.volumes import bounding_box

    margin = tuple(int(math.ceil(region.margin_mm / s)) for s in spacing_zyx)
    return bounding_box(organ, lambda slab: slab, margin)


def _mask_outside(image: np.ndarray, organ_in_box: np.ndarray, spacing_zyx, region: StageRegion) -> None:
    from LiverTumorSegLib.postprocess import dilate

    grown = dilate(np.ascontiguousarray(organ_in_box), tuple(float(s) for s in spacing_zyx), region.margin_mm)
    image[~grown] = np.asarray(region.fill_hu).astype(image.dtype)


def crop_to_region(image: np.ndarray, labels: np.ndarray, organ: np.ndarray, spacing_zyx, region: StageRegion
                   ) -> tuple[np.ndarray, np.ndarray] | None:
    """The case's arrays cropped to ``organ``'s box grown by the margin (and masked outside the grown organ when
    asked); None when there is no organ (the case then has nothing to train this stage on)."""
    box = _region_box(organ, spacing_zyx, region)
    if box is None:
        return None
    image, labels = np.array(image[box]), np.array(labels[box])
    if region.mask_input:
        _mask_outside(image, organ[box], spacing_zyx, region)
    return image, labels


def crop_case_to_region(ct, reference, region: StageRegion):
    """A validation case as the stage sees it at inference: CT and reference cropped (and masked) on the CT's own
    grid around the reference or predicted liver, so the epoch a stage keeps is chosen on what it will be given,
    not on whole volumes it never sees. None when there is no liver."""
    import SimpleITK as sitk

    organ_image = reference if region.liver_model is None else predicted_organ(ct, region.liver_model)
    organ = sitk.GetArrayViewFromImage(organ_image) > 0
    spacing_zyx = ct.GetSpacing()[::-1]
    box = _region_box(organ, spacing_zyx, region)
    if box is None:
        return None
    index, size = [b.start for b in box[::-1]], [b.stop - b.start for b in box[::-1]]
    ct_crop, ref_crop = sitk.RegionOfInterest(ct, size, index), sitk.RegionOfInterest(reference, size, index)
    if region.mask_input:
        array = sitk.GetArrayFromImage(ct_crop)
        _mask_outside(array, organ[box], spacing_zyx, region)
        masked = sitk.GetImageFromArray(array)
        masked.CopyInformation(ct_crop)
        ct_crop = masked
    return ct_crop, ref_crop

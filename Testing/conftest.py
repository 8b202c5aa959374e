"""Shared fixtures: tiny real models and an "oracle" network whose exact output is known.

The oracle turns an intensity-encoded phantom (liver 100 HU, tumour 180 HU, everything else below
-20 HU) back into its labels with a per-pixel threshold. Pushed through the whole pipeline, any
error in reorientation, padding, context stacking, resampling or its inverse shows up as voxels
that differ from the phantom's truth.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from torch import nn

from LiverTumorSegLib.labels import LIVER, TUMOR
from LiverTumorSegLib.modelfile import ModelConfig, SegmentationModel
from LiverTumorSegLib.models import register_model

LIVER_HU, TUMOR_HU = 100.0, 180.0

# As in Slicer, the module's folder is on sys.path: its library (LiverTumorSegModuleLib) imports from there.
_MODULE_DIR = str(Path(__file__).resolve().parents[1] / "LiverTumorSeg")
if _MODULE_DIR not in sys.path:
    sys.path.insert(0, _MODULE_DIR)


@register_model("test_oracle")
class OracleNet(nn.Module):
    """Logits = steep ramps of one input channel around fixed levels (window [-200, 200] -> [-1, 1])."""

    size_multiple = 16

    def __init__(self, in_channels: int = 1, channel: int | None = None, levels: tuple[float, ...] = (0.25, 0.7)):
        super().__init__()
        self.channel = in_channels // 2 if channel is None else channel
        self.register_buffer("levels", torch.tensor(levels, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.shape[-1] % 16 == 0 and x.shape[-2] % 16 == 0, "pipeline must pad to multiples of 16"
        return 200.0 * (x[:, self.channel:self.channel + 1] - self.levels)


def oracle_model(context_slices: int = 0, channel: int | None = None, spacing_yx_mm=None,
                 min_lesion_mm3: float = 0.0, context_step_mm: float | None = None) -> SegmentationModel:
    kwargs = {"in_channels": 2 * context_slices + 1, "channel": channel, "levels": (0.25, 0.7)}
    cfg = ModelConfig(architecture="test_oracle", architecture_kwargs=kwargs, labels=(LIVER, TUMOR),
                      context_slices=context_slices, spacing_yx_mm=spacing_yx_mm, min_lesion_mm3=min_lesion_mm3,
                      context_step_mm=context_step_mm, name="oracle")
    return SegmentationModel(OracleNet(**kwargs), cfg)


def encode_labels(ct: sitk.Image, labels: sitk.Image) -> sitk.Image:
    """A CT whose intensities say the truth: background capped at -20 HU, liver 100, tumour 180."""
    a = sitk.GetArrayFromImage(ct).astype(np.int16)
    lab = sitk.GetArrayViewFromImage(labels)
    out = np.where(lab == 0, np.minimum(a, -20), np.where(lab == 1, LIVER_HU, TUMOR_HU)).astype(np.int16)
    img = sitk.GetImageFromArray(out)
    img.CopyInformation(ct)
    return img


@pytest.fixture(scope="session")
def small_phantom():
    """A small LPS phantom (ct, labels) with two lesions; sizes deliberately not multiples of 16."""
    from LiverTumorSegLib.phantom import make_phantom

    return make_phantom(shape_zyx=(30, 75, 90), spacing_zyx=(3.0, 1.8, 1.8), seed=3,
                        lesion_diameters_mm=(12.0, 20.0))


def write_dicom_series(image: sitk.Image, folder, uid: str | None = None, modality: str = "CT",
                       extension: str = ".dcm") -> None:
    """One axial DICOM file per slice (int16, rescale 1/0) with the tags GDCM needs to rebuild the 3-D
    geometry, as scanners write them. IRCADb's files have no extension: pass ``extension=""``."""
    folder.mkdir(parents=True)
    image = sitk.Cast(image, sitk.sitkInt16)
    uid = uid or "1.2.826.0.1.3680043.2.1125.1." + str(abs(hash(str(folder))) % 10**12)
    direction = image.GetDirection()
    for k in range(image.GetDepth()):
        sl = image[:, :, k]
        for tag, value in [("0008|0060", modality), ("0020|000e", uid), ("0020|000d", uid + ".0"),
                           ("0020|0013", str(k + 1)), ("0008|0016", "1.2.840.10008.5.1.4.1.1.2"),
                           ("0020|0037", "\\".join(f"{v:.6f}" for v in direction[0:3] + direction[3:6])),
                           ("0020|0032", "\\".join(f"{v:.6f}" for v in image.TransformIndexToPhysicalPoint((0, 0, k)))),
                           ("0018|0050", f"{image.GetSpacing()[2]:.6f}"), ("0028|1053", "1"), ("0028|1052", "0")]:
            sl.SetMetaData(tag, value)
        writer = sitk.ImageFileWriter()
        writer.KeepOriginalImageUIDOn()
        writer.SetImageIO("GDCMImageIO")
        writer.SetFileName(str(folder / f"slice{k:03d}{extension}"))
        writer.Execute(sl)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    s = a.sum() + b.sum()
    return 1.0 if s == 0 else 2.0 * np.logical_and(a, b).sum() / s


#: a field of view where 26 mm lesions fit unshrunk (z, y, x mm)
PHANTOM_SPACING = (3.0, 2.6, 2.4)


@pytest.fixture(scope="module")
def phantom_pair():
    """Label maps for metric tests: reference = phantom seed 3; prediction = another phantom (different liver,
    other lesions)."""
    from LiverTumorSegLib.phantom import make_phantom

    kw = dict(shape_zyx=(30, 64, 72), spacing_zyx=PHANTOM_SPACING)
    _, ref = make_phantom(seed=3, lesion_diameters_mm=(8.0, 14.0, 26.0), **kw)
    _, pred = make_phantom(seed=4, lesion_diameters_mm=(12.0, 22.0), **kw)
    return pred, ref


def label_image(arr: np.ndarray, spacing_zyx=(1.0, 1.0, 1.0)) -> sitk.Image:
    img = sitk.GetImageFromArray(np.ascontiguousarray(arr).astype(np.uint8))
    img.SetSpacing([float(s) for s in reversed(spacing_zyx)])
    return img

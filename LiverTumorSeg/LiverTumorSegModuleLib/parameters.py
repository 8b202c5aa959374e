"""The module's parameters (a parameterNodeWrapper) and the choices its widgets offer."""

from __future__ import annotations

from typing import Annotated

from slicer import vtkMRMLMarkupsROINode, vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.parameterNodeWrapper import Choice, Minimum, WithinRange, parameterNodeWrapper

MODELS_FOLDER_SETTING = "LiverTumorSeg/ModelsFolder"
#: the core's SegmentOptions choices (LiverTumorSegLib.options), repeated here because Slicer builds the parameter
#: node at startup, before the core may be imported; a test keeps the two identical
DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
OUTPUTS = ("Liver and tumor", "Liver only")
EFFECT_NAME = "Liver Tumor AI"
CATALOG_PREFIX = "catalog:"




@parameterNodeWrapper
class LiverTumorSegParameterNode:
    """inputVolume: the CT; outputSegmentation: updated in place (None: a new one is created); roi: optional
    region to segment; model: the selected model (a file path, or "catalog:<id>"); device: auto/cpu/cuda;
    outputs: liver and tumour, or liver only (tumour counted as liver); overrideModelSettings: use the
    thresholds, minimum lesion size and confidence and organ margin below instead of the model's;
    firstSlice/lastSlice: slice range (0 and 0: the whole volume; last 0: to the end); show3D: closed surfaces of
    the result; precision, batchSize (0: automatic), useLocalizer, allowNonCt: as the core's SegmentOptions
    (every option of the core's ``SegmentOptions`` is set by one of these parameters)."""

    inputVolume: vtkMRMLScalarVolumeNode
    outputSegmentation: vtkMRMLSegmentationNode
    roi: vtkMRMLMarkupsROINode
    model: str = ""
    device: Annotated[str, Choice(list(DEVICES))] = "auto"
    outputs: Annotated[str, Choice(list(OUTPUTS))] = OUTPUTS[0]
    overrideModelSettings: bool = False
    liverThreshold: Annotated[float, WithinRange(0.01, 0.99)] = 0.5
    tumorThreshold: Annotated[float, WithinRange(0.01, 0.99)] = 0.5
    minLesionMm3: Annotated[float, WithinRange(0.0, 1000000.0)] = 10.0
    minLesionConfidence: Annotated[float, WithinRange(0.0, 0.99)] = 0.0
    organMarginMm: Annotated[float, WithinRange(0.0, 50.0)] = 3.0
    firstSlice: Annotated[int, Minimum(0)] = 0
    lastSlice: Annotated[int, Minimum(0)] = 0
    show3D: bool = False
    precision: Annotated[str, Choice(list(PRECISIONS))] = "auto"
    batchSize: Annotated[int, Minimum(0)] = 0
    useLocalizer: bool = True
    allowNonCt: bool = False

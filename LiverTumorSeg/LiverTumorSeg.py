"""LiverTumorSeg: "Liver" and "Tumor" segments of a CT in one click, in the module or the Segment Editor.

Thin glue around the Slicer-free core ``LiverTumorSegLib`` (next to this file): the volume is pulled
as a ``SimpleITK.Image`` (exact geometry), segmented by the core in a child process (``PythonSlicer -m
LiverTumorSegLib segment``, so Slicer stays responsive and the run can be cancelled) or in this process,
and the label map is written into named, coloured, SNOMED-tagged segments. The core, numpy, SimpleITK
and torch are imported inside functions only: Slicer imports this file at startup.

Python console::

    logic = slicer.util.getModuleLogic("LiverTumorSeg")   # or LiverTumorSeg.LiverTumorSegLogic()
    segmentationNode = logic.process(getNode("CT"), model="/path/model.pt", device="auto")
    logic.lastReport["lesions"]
"""

from __future__ import annotations

import slicer

# Slicer finds the module's widget, logic and test classes in this file; they live in the module's library.
from LiverTumorSegModuleLib.logic import LiverTumorSegLogic  # noqa: F401
from LiverTumorSegModuleLib.parameters import LiverTumorSegParameterNode  # noqa: F401
from LiverTumorSegModuleLib.paths import effectSourcePath
from LiverTumorSegModuleLib.selftest import LiverTumorSegTest  # noqa: F401
from LiverTumorSegModuleLib.widget import LiverTumorSegWidget  # noqa: F401
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.ScriptedLoadableModule import ScriptedLoadableModule


def registerSegmentEditorEffect() -> None:
    """Register the "Liver Tumor AI" effect (the template's way; registering twice is a no-op)."""
    import qSlicerSegmentationsEditorEffectsPythonQt as effects

    instance = effects.qSlicerSegmentEditorScriptedEffect(None)
    instance.setPythonSource(effectSourcePath().replace("\\", "/"))
    instance.self().register()


#
# LiverTumorSeg
#


class LiverTumorSeg(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("Liver Tumor Seg")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = ["Segmentations"]
        self.parent.contributors = ["LiverTumorSeg developers"]
        self.parent.helpText = _("""
Segments the liver and liver tumours of a contrast-enhanced abdominal CT into "Liver" and "Tumor" segments
(named, coloured, SNOMED-tagged), with a lesion report (liver and tumour volumes, burden, per-lesion size).
The same is available as the "Liver Tumor AI" effect of the Segment Editor (undoable).
<p>Choose a model (a catalogue model or a model file you import: "Import model file..."), the CT and
optionally a region of interest or a slice range, then Apply. The segmentation runs in a separate process:
Slicer stays responsive and Cancel stops it. PyTorch (through the PyTorch extension) and the other Python
packages are installed on the first run, after you confirm.</p>
<p>Python console:</p>
<pre>logic = LiverTumorSeg.LiverTumorSegLogic()
segmentation = logic.process(getNode("CT"), model="/path/model.pt", device="auto")
logic.lastReport</pre>
<p>Options of <code>process</code>: segmentationNode (updated in place), sliceRange=(first, last), roiNode,
inProcess=True (no child process), progress=callback, and every option of the core's SegmentOptions by name:
device, precision, batch_size, keep_labels=["Liver"], thresholds (one per label, or {"Liver": 0.5, "Tumor": 0.4}),
min_lesion_mm3, min_lesion_confidence, organ_margin_mm, use_localizer, allow_non_ct. Training: the "Liver Tumor Seg
Training" module.</p>
""")
        self.parent.acknowledgementText = _("""
The network is REC-UNet (residual "Enhancement-Calibration" U-Net), re-implemented so that its authors'
released checkpoints load exactly (https://github.com/459806555/REC-UNet); please cite the authors' paper
"REC-UNet: A U-Net model with residual cross-dimensional attention for liver tumor segmentation" when you use
it. Built on 3D Slicer's scripted module and Segment Editor effect templates by Jean-Christophe
Fillion-Robin (Kitware), Andras Lasso (PerkLab) and Steve Pieper (Isomics).
""")
        slicer.app.connect("startupCompleted()", registerSegmentEditorEffect)

"""The "Liver Tumor AI" Segment Editor effect: Liver and Tumor segments of the source volume, undoable.

Loaded by Slicer from this file's path (``setPythonSource``), not imported as part of its package, so
imports are absolute. The run itself is the LiverTumorSeg module's logic (child process, progress,
cancel); this file only moves the source volume in and the results into segments through
``modifySegmentByLabelmap``, which keeps Segment Editor masking and undo working.
"""

import logging
import os

import qt
import slicer
from SegmentEditorEffects import AbstractScriptedSegmentEditorEffect
from slicer import vtkMRMLSegmentationNode, vtkMRMLSegmentEditorNode

#: (parameter value, label) of the "Segments" choice.
OUTPUT_CHOICES = (("both", "Liver and tumor"), ("liver", "Liver only (tumours included)"),
                  ("tumor", "Tumor only"))
DEVICE_CHOICES = (("auto", "auto"), ("cpu", "CPU"), ("cuda", "CUDA GPU"))
ORGAN_NAME = "Liver"


class SegmentEditorEffect(AbstractScriptedSegmentEditorEffect):
    """Runs the LiverTumorSeg model on the source volume and writes "Liver" and "Tumor" segments."""

    def __init__(self, scriptedEffect):
        scriptedEffect.name = "Liver Tumor AI"
        scriptedEffect.perSegment = False  # writes its own segments, whichever is selected
        scriptedEffect.requireSegments = False  # creates "Liver" and "Tumor" when they are missing
        AbstractScriptedSegmentEditorEffect.__init__(self, scriptedEffect)
        self.lastReport = None  # the lesion report of the last run (effect.self().lastReport from scripts)

    def clone(self):
        import qSlicerSegmentationsEditorEffectsPythonQt as effects

        clonedEffect = effects.qSlicerSegmentEditorScriptedEffect(None)
        clonedEffect.setPythonSource(__file__.replace("\\", "/"))
        return clonedEffect

    def icon(self):
        iconPath = os.path.join(os.path.dirname(os.path.dirname(__file__)), "Resources", "Icons",
                                "SegmentEditorLiverTumorAI.png")
        if os.path.exists(iconPath):
            return qt.QIcon(iconPath)
        return qt.QIcon()

    def helpText(self):
        return """<html>Segments the liver and liver tumours of the source CT with a LiverTumorSeg model.<br>
Results go into segments "Liver" and "Tumor" (created if missing, with colours and SNOMED terminology);
other segments are changed only as the masking settings say. Undo restores the previous state.<p>
Models are managed (imported, downloaded) in the <b>Liver Tumor Seg</b> module, which also shows the lesion
report. The first run installs PyTorch and other Python packages after you confirm.</html>"""

    # -- options -----------------------------------------------------------------------------------

    def setupOptionsFrame(self):
        self.modelComboBox = qt.QComboBox()
        self.modelComboBox.toolTip = "Model files of the LiverTumorSeg module (import or download them there)."
        self.scriptedEffect.addLabeledOptionsWidget("Model:", self.modelComboBox)

        self.deviceComboBox = qt.QComboBox()
        for value, label in DEVICE_CHOICES:
            self.deviceComboBox.addItem(label, value)
        self.deviceComboBox.toolTip = "auto: a CUDA GPU when available, else the CPU."
        self.scriptedEffect.addLabeledOptionsWidget("Device:", self.deviceComboBox)

        self.outputComboBox = qt.QComboBox()
        for value, label in OUTPUT_CHOICES:
            self.outputComboBox.addItem(label, value)
        self.outputComboBox.toolTip = "Which segments to produce. Liver only: one Liver segment including tumours."
        self.scriptedEffect.addLabeledOptionsWidget("Segments:", self.outputComboBox)

        self.applyButton = qt.QPushButton("Apply")
        self.applyButton.objectName = self.__class__.__name__ + "Apply"
        self.applyButton.toolTip = "Segment the source volume (can be undone)."
        self.scriptedEffect.addOptionsWidget(self.applyButton)

        self.statusLabel = qt.QLabel()
        self.statusLabel.wordWrap = True
        self.scriptedEffect.addOptionsWidget(self.statusLabel)

        self.modelComboBox.connect("currentIndexChanged(int)", self.updateMRMLFromGUI)
        self.deviceComboBox.connect("currentIndexChanged(int)", self.updateMRMLFromGUI)
        self.outputComboBox.connect("currentIndexChanged(int)", self.updateMRMLFromGUI)
        self.applyButton.connect("clicked()", self.onApply)

    def activate(self):
        self.updateModelList()  # here rather than at setup: listing model files reads them (loads PyTorch)

    def setMRMLDefaults(self):
        self.scriptedEffect.setParameterDefault("Model", "")
        self.scriptedEffect.setParameterDefault("Device", "auto")
        self.scriptedEffect.setParameterDefault("Output", "both")
        self.scriptedEffect.setParameterDefault("RunInProcess", 0)

    def updateModelList(self):
        combo = self.modelComboBox
        wasBlocked = combo.blockSignals(True)
        try:
            combo.clear()
            try:
                choices = self._logic().modelChoices()
            except Exception as e:  # noqa: BLE001 - shown in the options, the effect stays usable
                logging.error(f"Liver Tumor AI: cannot list models: {e}")
                choices = []
            for index, choice in enumerate(choices):
                combo.addItem(choice["text"], choice["data"])
                combo.setItemData(index, choice["toolTip"], qt.Qt.ToolTipRole)
                if not choice["enabled"] or choice["data"].startswith("catalog:"):
                    combo.setItemData(index, 0, qt.Qt.UserRole - 1)  # downloads happen in the module
            if not choices:
                combo.addItem("(none: import a model in the Liver Tumor Seg module)", "")
        finally:
            combo.blockSignals(wasBlocked)
        self.updateGUIFromMRML()

    @staticmethod
    def _selectData(combo, value):
        index = combo.findData(value)
        if index >= 0:
            combo.setCurrentIndex(index)

    def updateGUIFromMRML(self):
        for combo, name in ((self.modelComboBox, "Model"), (self.deviceComboBox, "Device"),
                            (self.outputComboBox, "Output")):
            wasBlocked = combo.blockSignals(True)
            self._selectData(combo, self.scriptedEffect.parameter(name))
            combo.blockSignals(wasBlocked)

    def updateMRMLFromGUI(self):
        model = self.modelComboBox.currentData
        if model:
            self.scriptedEffect.setParameter("Model", model)
        self.scriptedEffect.setParameter("Device", self.deviceComboBox.currentData or "auto")
        self.scriptedEffect.setParameter("Output", self.outputComboBox.currentData or "both")

    # -- running -----------------------------------------------------------------------------------

    @staticmethod
    def _logic():
        from LiverTumorSeg import LiverTumorSegLogic

        return LiverTumorSegLogic()

    def onApply(self):
        from LiverTumorSegModuleLib.jobs import SegmentationCancelledError, SegmentationRunError

        parameterSetNode = self.scriptedEffect.parameterSetNode()
        segmentationNode = parameterSetNode.GetSegmentationNode()
        if segmentationNode is None or parameterSetNode.GetSourceVolumeNode() is None:
            slicer.util.errorDisplay("Select a segmentation and a source volume first.")
            return
        with slicer.util.tryWithErrorDisplay("Liver Tumor AI failed.", waitCursor=False):
            try:
                self.statusLabel.text = self.run(parameterSetNode, segmentationNode)
            except SegmentationCancelledError:
                self.statusLabel.text = "Cancelled: nothing was changed."
            except SegmentationRunError as e:
                self.statusLabel.text = f"Failed: {e}"
                slicer.util.errorDisplay(f"Liver Tumor AI failed: {e}", detailedText=e.log)

    def run(self, parameterSetNode: vtkMRMLSegmentEditorNode, segmentationNode: vtkMRMLSegmentationNode) -> str:
        """Segment the source volume and write the segments; returns a one-line summary."""
        from LiverTumorSegModuleLib import segments

        logic = self._logic()
        logic.ensureDependencies()
        sourceImageData = self.scriptedEffect.sourceVolumeImageData()  # on the segmentation's geometry
        if sourceImageData is None:
            raise ValueError("the source volume has no voxels")
        image = segments.orientedImageToSitk(sourceImageData)
        output = self.scriptedEffect.parameter("Output") or "both"
        model = self.scriptedEffect.parameter("Model") or self.modelComboBox.currentData or None
        job = logic.prepareImageJob(image, model=model,
                                    device=self.scriptedEffect.parameter("Device") or "auto",
                                    keep_labels=[ORGAN_NAME] if output == "liver" else None)
        dialog = slicer.util.createProgressDialog(value=0, maximum=100, windowTitle="Liver Tumor AI",
                                                  labelText="Starting...")
        try:
            def progress(p):
                dialog.setValue(int(round(100 * p.fraction)))
                dialog.setLabelText(p.text())
                return not dialog.wasCanceled

            logic.runJob(job, progress=progress,
                         inProcess=self.scriptedEffect.integerParameter("RunInProcess") == 1)
        finally:
            dialog.close()
            job.cleanup()

        organ = str(job.report.get("organ_name", ORGAN_NAME)).lower()
        if output == "liver":
            specs = [s for s in job.specs if s.name.lower() == organ]
        elif output == "tumor":
            specs = [s for s in job.specs if s.name.lower() != organ]
        else:
            specs = list(job.specs)
        masks = segments.labelMasks(job.labels, specs)

        self.scriptedEffect.saveStateForUndo()  # one undo step restores everything below
        previousSegmentId = parameterSetNode.GetSelectedSegmentID()
        writtenIds = []
        for spec in specs:
            segmentId = segments.ensureSegment(segmentationNode, spec.name, spec.color, spec.terminology)
            labelmap = segments.orientedImageFromMask(masks[spec.name], sourceImageData)
            self.scriptedEffect.modifySegmentByLabelmap(segmentationNode, segmentId, labelmap,
                                                        slicer.qSlicerSegmentEditorAbstractEffect.ModificationModeSet)
            writtenIds.append(segmentId)
        segmentation = segmentationNode.GetSegmentation()
        if writtenIds and not (previousSegmentId and segmentation.GetSegment(previousSegmentId)):
            parameterSetNode.SetSelectedSegmentID(writtenIds[0])
        self.lastReport = job.report
        return self._summary(job.report)

    @staticmethod
    def _summary(report: dict) -> str:
        if "organ_volume_ml" not in report:
            return "Done."
        return (f"Done: {report.get('organ_name', 'Liver')} {report['organ_volume_ml']:.0f} mL, "
                f"{report['lesion_count']} lesion(s), {report['lesion_volume_ml']:.1f} mL "
                f"({report['lesion_burden_percent']:.1f} % burden).")

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

import importlib.metadata
import importlib.util
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any, Callable

import qt
import slicer
import vtk
from slicer import vtkMRMLMarkupsROINode, vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, Minimum, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

MODELS_FOLDER_SETTING = "LiverTumorSeg/ModelsFolder"
TORCH_MINIMUM = (2, 1)
#: requirements Slicer itself provides (torch comes from the PyTorch extension); the rest of the cores' requirements
#: (Resources/requirements.txt, the one list) are pip-installed on first use
SLICER_PROVIDES = ("torch", "numpy", "simpleitk", "vtk")
#: pip distribution name -> import name, where they differ
IMPORT_NAMES = {"simpleitk": "SimpleITK"}
#: the core's SegmentOptions choices (LiverTumorSegLib.options), repeated here because Slicer builds the parameter
#: node at startup, before the core may be imported; a test keeps the two identical
DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
OUTPUTS = ("Liver and tumor", "Liver only")
EFFECT_NAME = "Liver Tumor AI"
CATALOG_PREFIX = "catalog:"


def pipRequirements() -> dict[str, str]:
    """Import name -> pip requirement for what the cores need beyond what Slicer ships (read from
    Resources/requirements.txt, the list pyproject.toml also reads)."""
    import re

    path = os.path.join(_moduleFolder(), "Resources", "requirements.txt")
    out = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            requirement = line.split("#", 1)[0].strip()
            name = re.split(r"[<>=!~ \[;]", requirement, maxsplit=1)[0].lower() if requirement else ""
            if name and name not in SLICER_PROVIDES:
                out[IMPORT_NAMES.get(name, name)] = requirement
    return out


def _moduleFolder() -> str:
    return os.path.dirname(os.path.abspath(__file__))


def _ensureCorePackagesImportable() -> None:
    """The cores sit beside this file in an extension build; in a clone, LiverTumorSegTrainLib is in
    ../LiverTumorSegTrain (only the self-test needs it, to train a tiny model)."""
    here = _moduleFolder()
    for folder in (here, os.path.join(os.path.dirname(here), "LiverTumorSegTrain")):
        hasCore = any(os.path.isdir(os.path.join(folder, p))
                      for p in ("LiverTumorSegLib", "LiverTumorSegTrainLib", "SegmentEditorLiverTumorAILib"))
        if hasCore and folder not in sys.path:
            sys.path.insert(0, folder)


def effectSourcePath() -> str:
    return os.path.join(_moduleFolder(), "SegmentEditorLiverTumorAILib", "SegmentEditorEffect.py")


def registerSegmentEditorEffect() -> None:
    """Register the "Liver Tumor AI" effect (the template's way; registering twice is a no-op)."""
    import qSlicerSegmentationsEditorEffectsPythonQt as effects

    instance = effects.qSlicerSegmentEditorScriptedEffect(None)
    instance.setPythonSource(effectSourcePath().replace("\\", "/"))
    instance.self().register()


class InstallError(RuntimeError):
    """A dependency is missing and could not (or may not) be installed; the message says what to do."""


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


#
# LiverTumorSegParameterNode
#


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


#
# LiverTumorSegWidget
#


class LiverTumorSegWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._runner = None
        self._environmentChecked = False

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/LiverTumorSeg.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = LiverTumorSegLogic()

        self.ui.resultsTableWidget.setColumnCount(2)
        self.ui.resultsTableWidget.setHorizontalHeaderLabels([_("Measure"), _("Value")])
        self.ui.resultsTableWidget.horizontalHeader().setStretchLastSection(True)
        try:  # the folder in use (setting, else $LIVERTUMORSEG_MODELS_DIR, else the per-user default)
            self.ui.modelsFolderButton.directory = str(self.logic.modelsFolder())
        except Exception as e:  # noqa: BLE001 - an unusable folder is reported, the module still opens
            self.ui.modelInfoLabel.text = str(e)
        self.ui.cancelButton.enabled = False
        self.ui.progressBar.setValue(0)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancelButton)
        self.ui.importModelButton.connect("clicked(bool)", self.onImportModelButton)
        self.ui.removeModelButton.connect("clicked(bool)", self.onRemoveModelButton)
        self.ui.modelComboBox.connect("currentIndexChanged(int)", self.onModelChanged)
        self.ui.modelsFolderButton.connect("directoryChanged(QString)", self.onModelsFolderChanged)
        self.ui.checkEnvironmentButton.connect("clicked(bool)", self.onCheckEnvironmentButton)
        self.ui.environmentCollapsibleButton.connect("contentsCollapsed(bool)", self.onEnvironmentCollapsed)
        self.ui.show3DCheckBox.connect("toggled(bool)", self.onShow3DToggled)
        self.ui.overrideModelSettingsCheckBox.connect("toggled(bool)", self._updateOptionWidgets)

        self.initializeParameterNode()
        self.updateModelList()

    def cleanup(self) -> None:
        if self._runner is not None and self._runner.running:
            self._runner.cancel()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()
        self.updateModelList()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)

    def onSceneStartClose(self, caller, event) -> None:
        if self._running():  # its nodes are going away: nothing to write the result into
            self._runner.cancel()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            firstVolumeNode = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if firstVolumeNode and not firstVolumeNode.IsA("vtkMRMLLabelMapVolumeNode"):
                self._parameterNode.inputVolume = firstVolumeNode

    def setParameterNode(self, inputParameterNode: LiverTumorSegParameterNode | None) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
            self._checkCanApply()

    # -- state of the GUI --------------------------------------------------------------------------

    def _running(self) -> bool:
        return self._runner is not None and self._runner.running

    def _checkCanApply(self, caller=None, event=None) -> None:
        self._updateOptionWidgets()
        if self._running():
            self.ui.applyButton.enabled = False
            return
        if not self._parameterNode or not self._parameterNode.inputVolume:
            self.ui.applyButton.toolTip = _("Select the CT volume to segment")
            self.ui.applyButton.enabled = False
        elif not self._parameterNode.model:
            self.ui.applyButton.toolTip = _("Select a model, or import a model file")
            self.ui.applyButton.enabled = False
        else:
            self.ui.applyButton.toolTip = _("Segment the liver and liver tumours")
            self.ui.applyButton.enabled = True

    def _updateOptionWidgets(self, *args) -> None:
        override = bool(self._parameterNode and self._parameterNode.overrideModelSettings)
        for widget in (self.ui.liverThresholdSliderWidget, self.ui.tumorThresholdSliderWidget,
                       self.ui.minLesionSizeSpinBox, self.ui.minLesionConfidenceSliderWidget,
                       self.ui.organMarginSpinBox):
            widget.enabled = override

    def _setRunning(self, running: bool) -> None:
        self.ui.cancelButton.enabled = running
        self.ui.importModelButton.enabled = not running
        self.ui.modelComboBox.enabled = not running
        self._checkCanApply()
        if running:
            self.ui.applyButton.enabled = False

    # -- models ------------------------------------------------------------------------------------

    def updateModelList(self) -> None:
        """Catalogue models and model files in the models folder; unusable ones disabled, with the reason."""
        combo = self.ui.modelComboBox
        wasBlocked = combo.blockSignals(True)
        try:
            combo.clear()
            try:
                choices = self.logic.modelChoices()
            except Exception as e:  # noqa: BLE001 - a broken catalogue must not break the module GUI
                logging.error(f"LiverTumorSeg: cannot list models: {e}")
                choices = []
                self.ui.modelInfoLabel.text = str(e)
            for index, choice in enumerate(choices):
                combo.addItem(choice["text"], choice["data"])
                combo.setItemData(index, choice["toolTip"], qt.Qt.ToolTipRole)
                if not choice["enabled"]:
                    combo.setItemData(index, 0, qt.Qt.UserRole - 1)  # the standard model's "disabled" flags
            if not choices:
                combo.addItem(_("(no model: import a model file)"), "")
                combo.setItemData(0, 0, qt.Qt.UserRole - 1)
            wanted = self._parameterNode.model if self._parameterNode else ""
            enabled = [c["data"] for c in choices if c["enabled"]]
            if wanted not in enabled:
                default = self.logic.defaultModelChoice(choices)
                wanted = default if default is not None else (enabled[0] if enabled else "")
            combo.setCurrentIndex(max(0, combo.findData(wanted)))
        finally:
            combo.blockSignals(wasBlocked)
        self.onModelChanged(combo.currentIndex)

    def onModelChanged(self, index: int) -> None:
        data = self.ui.modelComboBox.itemData(index) if index >= 0 else ""
        enabled = bool(data) and self.ui.modelComboBox.itemData(index, qt.Qt.UserRole - 1) != 0
        if self._parameterNode:
            self._parameterNode.model = str(data) if enabled else ""
        self.ui.modelInfoLabel.text = (self.ui.modelComboBox.itemData(index, qt.Qt.ToolTipRole) or "") \
            if index >= 0 else ""

    def onImportModelButton(self) -> None:
        path = qt.QFileDialog.getOpenFileName(slicer.util.mainWindow(), _("Import a LiverTumorSeg model file"), "",
                                              _("Model files (*.pt);;All files (*)"))
        if not path:
            return
        with slicer.util.tryWithErrorDisplay(_("The model file cannot be imported."), waitCursor=True):
            self.logic.ensureDependencies()  # reading a model file needs PyTorch
            imported = self.logic.importModelFile(path)
            if self._parameterNode:
                self._parameterNode.model = str(imported)
            self.updateModelList()
            self.ui.statusLabel.text = _("Imported {path}").format(path=imported)

    def onRemoveModelButton(self) -> None:
        model = self._parameterNode.model if self._parameterNode else ""
        if not model or model.startswith(CATALOG_PREFIX):
            self.ui.statusLabel.text = _("Select a downloaded or imported model to remove")
            return
        if not slicer.util.confirmYesNoDisplay(_("Remove the model file {path}?").format(path=model)):
            return
        with slicer.util.tryWithErrorDisplay(_("The model file cannot be removed."), waitCursor=True):
            removed = self.logic.removeModelFile(model)
            self._parameterNode.model = ""
            self.updateModelList()
            self.ui.statusLabel.text = _("Removed {path}").format(path=removed)

    def onModelsFolderChanged(self, folder: str) -> None:
        qt.QSettings().setValue(MODELS_FOLDER_SETTING, folder)
        self.updateModelList()

    # -- environment -------------------------------------------------------------------------------

    def onEnvironmentCollapsed(self, collapsed: bool) -> None:
        if not collapsed and not self._environmentChecked:
            self.onCheckEnvironmentButton()

    def onCheckEnvironmentButton(self) -> None:
        self._environmentChecked = True
        self.ui.environmentTextEdit.plainText = _("Checking (starts Slicer's Python with PyTorch)...")
        slicer.app.processEvents()
        try:
            self.ui.environmentTextEdit.plainText = self.logic.environmentText()
        except Exception as e:  # noqa: BLE001 - shown in the panel, with the log
            self.ui.environmentTextEdit.plainText = f"{e}\n\n{getattr(e, 'log', '')}".strip()

    # -- running -----------------------------------------------------------------------------------

    def _runOptions(self) -> dict[str, Any]:
        """``process`` arguments from the parameters: the model, the ROI / slice range (which become the
        core's region) and every other SegmentOptions field by name."""
        p = self._parameterNode
        options: dict[str, Any] = {"model": p.model, "roiNode": p.roi, "device": p.device, "precision": p.precision,
                                   "batch_size": p.batchSize or None, "use_localizer": p.useLocalizer,
                                   "allow_non_ct": p.allowNonCt,
                                   "keep_labels": ["Liver"] if p.outputs == OUTPUTS[1] else None}
        if p.overrideModelSettings:
            options.update(thresholds={"Liver": p.liverThreshold, "Tumor": p.tumorThreshold},
                           min_lesion_mm3=p.minLesionMm3, min_lesion_confidence=p.minLesionConfidence,
                           organ_margin_mm=p.organMarginMm)
        if p.firstSlice or p.lastSlice:
            options["sliceRange"] = (p.firstSlice, p.lastSlice if p.lastSlice else None)
        return options

    def onApplyButton(self) -> None:
        if self._running():
            return
        with slicer.util.tryWithErrorDisplay(_("Failed to start the segmentation."), waitCursor=False):
            p = self._parameterNode
            options = self._runOptions()
            self.ui.statusLabel.text = _("Checking the Python packages...")
            self.logic.ensureDependencies()
            if str(options["model"]).startswith(CATALOG_PREFIX):
                self.ui.statusLabel.text = _("Downloading the model...")
                slicer.app.processEvents()
                options["model"] = str(self.logic.downloadModel(options["model"][len(CATALOG_PREFIX):]))
                p.model = options["model"]
                self.updateModelList()
            job = self.logic.prepareJob(p.inputVolume, p.outputSegmentation, **options)
            self.ui.resultsTableWidget.setRowCount(0)
            self.ui.progressBar.setValue(0)
            self._runner = self.logic.startJob(job, onProgress=self._onProgress, onFinished=self._onFinished)
            self._setRunning(True)
            self.ui.statusLabel.text = _("Starting...")

    def onCancelButton(self) -> None:
        if self._running():
            self._runner.cancel()
            self.ui.statusLabel.text = _("Cancelling...")

    def _onProgress(self, progress) -> None:
        self.ui.progressBar.setValue(int(round(100 * progress.fraction)))
        self.ui.statusLabel.text = progress.text()

    def _onFinished(self, job, error) -> None:
        from SegmentEditorLiverTumorAILib.runner import SegmentationCancelledError

        try:
            self._setRunning(False)
            if isinstance(error, SegmentationCancelledError):
                self.ui.statusLabel.text = _("Cancelled: the scene was not changed.")
                self.ui.progressBar.setValue(0)
                return
            if error is not None:
                self.ui.statusLabel.text = _("Failed: {message}").format(message=error)
                slicer.util.errorDisplay(_("Segmentation failed: {message}").format(message=error),
                                         detailedText=getattr(error, "log", "") or job.log)
                return
            try:
                segmentationNode = self.logic.finishJob(job)
            except Exception as e:  # noqa: BLE001 - shown to the user with the log
                logging.exception("LiverTumorSeg: writing the segments failed")
                slicer.util.errorDisplay(_("Writing the segments failed: {message}").format(message=e),
                                         detailedText=job.log)
                return
            if self._parameterNode:
                self._parameterNode.outputSegmentation = segmentationNode
                self.onShow3DToggled(self._parameterNode.show3D)
            self.showReport(self.logic.lastReport)
            self.ui.progressBar.setValue(100)
            self.ui.statusLabel.text = _("Done in {seconds:.0f} s.").format(seconds=job.seconds())
        finally:
            job.cleanup()
            self._runner = None
            self._checkCanApply()

    def onShow3DToggled(self, show: bool) -> None:
        segmentationNode = self._parameterNode.outputSegmentation if self._parameterNode else None
        if segmentationNode is None:
            return
        if show:
            segmentationNode.CreateClosedSurfaceRepresentation()
        else:
            segmentationNode.RemoveClosedSurfaceRepresentation()

    def showReport(self, report: dict | None) -> None:
        rows = reportRows(report or {})
        table = self.ui.resultsTableWidget
        table.setRowCount(len(rows))
        for row, (name, value) in enumerate(rows):
            table.setItem(row, 0, qt.QTableWidgetItem(name))
            table.setItem(row, 1, qt.QTableWidgetItem(value))
        table.resizeColumnToContents(0)


def reportRows(report: dict) -> list[tuple[str, str]]:
    """The results table: organ and lesion totals, then one row per lesion (most confident first when the
    report has per-lesion confidence)."""
    if "organ_volume_ml" not in report:
        return [(_("Report"), _("this model has no liver and tumour labels to report on"))] if report else []
    organ, lesion = report.get("organ_name", "Liver"), report.get("lesion_name", "Tumor")
    rows = [
        (_("{organ} volume").format(organ=organ), f"{report['organ_volume_ml']:.1f} mL"),
        (_("{lesion} count").format(lesion=lesion), str(report["lesion_count"])),
        (_("{lesion} volume").format(lesion=lesion), f"{report['lesion_volume_ml']:.2f} mL"),
        (_("{lesion} burden").format(lesion=lesion), f"{report['lesion_burden_percent']:.2f} %"),
    ]
    lesions = report.get("lesions", [])
    if all("confidence" in item for item in lesions):  # most confident first: a reader checks the tail
        lesions = sorted(lesions, key=lambda item: -item["confidence"])
    for item in lesions:
        first, last = item.get("slice_range", ["?", "?"])
        text = _("{volume:.2f} mL, {diameter:.1f} mm longest axial diameter, slices {first}-{last}").format(
            volume=item["volume_ml"], diameter=item["longest_axial_diameter_mm"], first=first, last=last)
        if "confidence" in item:
            text += _(", confidence {confidence:.2f}").format(confidence=item["confidence"])
        rows.append((_("{lesion} {number}").format(lesion=lesion, number=item["id"]), text))
    return rows


#
# LiverTumorSegLogic
#


class LiverTumorSegLogic(ScriptedLoadableModuleLogic):
    """Models, dependencies and runs; usable from the Python console and tests without the widget."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        _ensureCorePackagesImportable()
        self.lastReport: dict | None = None
        self.lastLog = ""

    def getParameterNode(self):
        return LiverTumorSegParameterNode(super().getParameterNode())

    # -- models ------------------------------------------------------------------------------------

    @staticmethod
    def modelsFolderSetting() -> str:
        return str(slicer.util.settingsValue(MODELS_FOLDER_SETTING, "") or "")

    def modelsFolder(self) -> Path:
        from LiverTumorSegLib.catalog import models_dir

        return models_dir(self.modelsFolderSetting() or None)

    def availableModels(self) -> list:
        """``catalog.available_models``; when PyTorch is not installed yet, files are listed unchecked."""
        from LiverTumorSegLib.catalog import BUNDLED_DIR, AvailableModel, available_models, load_catalog

        catalog, folder = load_catalog(), self.modelsFolder()
        if importlib.util.find_spec("torch") is not None:
            return available_models(catalog, folder)
        files = {p.name: p for p in folder.glob("*.pt") if p.is_file() and not p.name.startswith(".")}
        bundled = {e.file: BUNDLED_DIR / e.file for e in catalog if (BUNDLED_DIR / e.file).is_file()}
        have = set(files) | set(bundled)
        models = [AvailableModel(bundled.get(e.file, folder / e.file), e, installed=e.file in have,
                                 usable=e.file in have) for e in catalog]
        catalogued = {e.file for e in catalog}
        models += [AvailableModel(p, None, installed=True, usable=True) for n, p in sorted(files.items())
                   if n not in catalogued]
        return models

    def modelChoices(self) -> list[dict]:
        """What the model selectors show: text, data (path or "catalog:<id>"), enabled, tool tip."""
        choices = []
        for m in self.availableModels():
            entry = m.entry
            lines = [str(m.path)]
            if entry is not None:
                lines = [entry.description, _("Labels: {labels}").format(labels=", ".join(entry.labels)),
                         _("Version {version}; licence: {licence}").format(version=entry.version,
                                                                         licence=entry.licence)]
                if entry.seconds_cpu is not None or entry.seconds_gpu is not None:
                    lines.append(_("Measured time per CT: CPU {cpu} s, GPU {gpu} s ({hardware})").format(
                        cpu=entry.seconds_cpu, gpu=entry.seconds_gpu, hardware=entry.hardware))
            elif m.config is not None:
                lines.append(_("Labels: {labels}").format(labels=", ".join(lab.name for lab in m.config.labels)))
            text, data, enabled = m.title, str(m.path), True
            if m.installed and not m.usable:
                text, enabled = _("{title} (unusable)").format(title=m.title), False
                lines.insert(0, m.problem)
            elif not m.installed and entry is not None and entry.url:
                text, data = _("{title} (downloads on Apply)").format(title=m.title), CATALOG_PREFIX + entry.id
            elif not m.installed:
                text, enabled = _("{title} (not installed)").format(title=m.title), False
                lines.insert(0, _("Not installed and no download address: import its file {file}").format(
                    file=entry.file if entry else m.path.name))
            choices.append({"text": text, "data": data, "enabled": enabled,
                            "toolTip": "\n".join(line for line in lines if line), "default": bool(entry and
                                                                                                   entry.default)})
        return choices

    @staticmethod
    def defaultModelChoice(choices: list[dict]) -> str | None:
        return next((c["data"] for c in choices if c["default"] and c["enabled"]), None)

    def resolveModel(self, model: str | os.PathLike | None = None) -> Path:
        """A model file: a path, a catalogue id (installed), or None for the default model."""
        from LiverTumorSegLib.catalog import default_model, load_catalog

        if model:
            text = str(model)
            text = text[len(CATALOG_PREFIX):] if text.startswith(CATALOG_PREFIX) else text
            for m in self.availableModels():
                if m.entry is not None and m.entry.id == text:
                    if not m.installed:
                        raise ValueError(f"model {text!r} is not installed: download it in the LiverTumorSeg "
                                         f"module (logic.downloadModel({text!r})) or import its file")
                    return m.path
            path = Path(text).expanduser()
            if not path.is_file():
                raise ValueError(f"model {text!r} is neither a model file nor a catalogue model id")
            return path
        path = default_model(load_catalog(), self.modelsFolder())
        if path is None:
            raise ValueError("no model installed: import a model file in the LiverTumorSeg module or set "
                             "LIVERTUMORSEG_MODELS_DIR")
        return path

    def importModelFile(self, path: str | os.PathLike, overwrite: bool = False) -> Path:
        """Check a model file and copy it into the models folder; returns its new path."""
        from LiverTumorSegLib.catalog import import_model_file, load_catalog

        return import_model_file(path, self.modelsFolder(), overwrite=overwrite, catalog=load_catalog())

    def removeModelFile(self, path: str | os.PathLike) -> Path:
        """Delete a downloaded or imported model from the models folder (shipped models cannot be removed)."""
        from LiverTumorSegLib.catalog import remove_model_file

        return remove_model_file(path, self.modelsFolder())

    def downloadModel(self, modelId: str) -> Path:
        """Download a catalogue model into the models folder; a wrong checksum deletes the file and says so."""
        from LiverTumorSegLib.catalog import load_catalog, verify_sha256

        entry = next((e for e in load_catalog() if e.id == modelId), None)
        if entry is None:
            raise ValueError(f"no catalogue model {modelId!r}")
        target = self.modelsFolder() / entry.file
        if target.is_file():
            return target
        if not entry.url:
            raise ValueError(f"model {entry.id!r} has no download address: import its file {entry.file}")
        partial = target.with_name("." + target.name + ".download")  # hidden: not listed until verified
        partial.unlink(missing_ok=True)
        ok = slicer.util.downloadFile(entry.url, str(partial), checksum=f"SHA256:{entry.sha256}")
        if not ok:
            if partial.is_file():
                verify_sha256(partial, entry.sha256)  # raises, deleting the file, when the checksum is wrong
            partial.unlink(missing_ok=True)
            raise RuntimeError(f"downloading {entry.url} failed (network, proxy or firewall?); download the file "
                               f"with a browser and import it with 'Import model file...'")
        os.replace(partial, target)
        return target

    # -- dependencies ------------------------------------------------------------------------------

    @staticmethod
    def missingDependencies() -> tuple[bool, list[str]]:
        """(torch missing or older than the minimum, pip requirements of missing packages); imports nothing."""
        try:
            version = importlib.metadata.version("torch")
            numbers = tuple(int("".join(ch for ch in part if ch.isdigit()) or 0) for part in version.split(".")[:2])
            needTorch = numbers < TORCH_MINIMUM
        except importlib.metadata.PackageNotFoundError:
            needTorch = True
        missing = [req for module, req in pipRequirements().items() if importlib.util.find_spec(module) is None]
        return needTorch, missing

    def ensureDependencies(self, askConfirmation: bool = True) -> None:
        """Install what the segmentation needs, after the user confirms: torch through the PyTorch extension
        (which picks the build for the installed NVIDIA driver), the rest with pip (Slicer's numpy kept)."""
        needTorch, missing = self.missingDependencies()
        if not needTorch and not missing:
            return
        torchRequirement = "torch>={}.{}".format(*TORCH_MINIMUM)
        if needTorch:
            try:
                import PyTorchUtils
            except ModuleNotFoundError:
                raise InstallError(_("LiverTumorSeg needs PyTorch: install the PyTorch extension from the Extensions "
                                     "Manager, restart Slicer, and click Apply again.")) from None
        packages = ([torchRequirement] if needTorch else []) + missing
        if askConfirmation and not slicer.app.testingEnabled():
            if not slicer.util.confirmOkCancelDisplay(
                    _("LiverTumorSeg needs Python packages that are not installed yet. Installing them needs a "
                      "network connection and can take several minutes (PyTorch is large). Install now?"),
                    _("Install Python packages"), detailedText="\n".join(packages)):
                raise InstallError(_("Installation cancelled: the segmentation needs {packages}.").format(
                    packages=", ".join(packages)))
        if needTorch:
            torchWasImported = "torch" in sys.modules
            torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(
                askConfirmation=False, torchVersionRequirement=">={}.{}".format(*TORCH_MINIMUM))
            if torch is None:
                raise InstallError(_("PyTorch was not installed: install it with the PyTorch Utils module "
                                     "(version {requirement}) and click Apply again.").format(
                                         requirement=torchRequirement))
            if torchWasImported:
                logging.warning("LiverTumorSeg: PyTorch was updated; restart Slicer before running in-process")
        if missing:
            try:  # keep Slicer's own numpy: a package must not replace it
                missing = missing + [f"numpy=={importlib.metadata.version('numpy')}"]
            except importlib.metadata.PackageNotFoundError:
                pass
            slicer.util.pip_install(missing)
        importlib.invalidate_caches()

    def environmentText(self) -> str:
        """Versions, torch build, CUDA and GPUs as the child process sees them (torch is not imported here)."""
        from SegmentEditorLiverTumorAILib import runner

        info = self.environmentInfo()
        lines = [_("PyTorch {torch} ({build}), Python {python}").format(
                     torch=info.get("torch"), build=info.get("torch_build"), python=info.get("python")),
                 _("CUDA available: {cuda}").format(cuda=_("yes") if info.get("cuda_available") else _("no")),
                 _("Device 'auto' uses: {device}").format(device="cuda" if info.get("cuda_available") else "cpu")]
        for gpu in info.get("gpus", []):
            lines.append(_("GPU {index}: {name}, {free:.1f} of {total:.1f} GB free").format(
                index=gpu.get("index", 0), name=gpu.get("name"), free=gpu.get("free_memory_gb", 0),
                total=gpu.get("total_memory_gb", 0)))
        lines.append(_("CPU threads: {threads}; LiverTumorSeg {version}; Python executable: {exe}").format(
            threads=info.get("cpu_threads"), version=info.get("livertumorseg"), exe=runner.pythonExecutable()))
        return "\n".join(lines)

    def environmentInfo(self, timeout: float = 120.0) -> dict:
        """``livertumorseg info --json`` run in Slicer's Python (a child process)."""
        import json

        from SegmentEditorLiverTumorAILib import runner

        argv = [runner.pythonExecutable(), "-m", "LiverTumorSegLib", "info", "--json"]
        process = runner.SegmentationProcess(argv, env=runner.childEnvironment(pythonPath=[_moduleFolder()]))
        process.start()
        deadline = time.monotonic() + timeout
        while not process.poll():
            slicer.app.processEvents()
            if time.monotonic() > deadline:
                process.cancel()
                break
            time.sleep(0.05)
        lines = process.log.lines[1:]  # the first line is the command
        start = next((i for i, line in enumerate(lines) if line.startswith("{")), None)
        if process.returncode != 0 or start is None:
            raise runner.SegmentationRunError(process.log.errorMessage(process.returncode), process.log.text())
        return json.loads("\n".join(lines[start:]))

    # -- running -----------------------------------------------------------------------------------

    def process(self, volumeNode: vtkMRMLScalarVolumeNode, segmentationNode: vtkMRMLSegmentationNode | None = None,
                model: str | os.PathLike | None = None, progress: Callable[[Any], Any] | None = None,
                sliceRange=None, roiNode: vtkMRMLMarkupsROINode | None = None, inProcess: bool = False,
                options=None, **overrides) -> vtkMRMLSegmentationNode:
        """Segment ``volumeNode`` and write "Liver"/"Tumor" segments into ``segmentationNode`` (new if None).

        ``model``: a model file, a catalogue id, or None for the default model. ``progress(p)`` gets a
        ``Progress`` (``p.stage``, ``p.done``/``p.total`` slices, ``p.fraction``, ``p.etaSeconds``, ``p.text()``)
        and may return False to cancel. ``sliceRange=(first, last)``: 0-based inclusive slice indices along the
        axis closest to S (last None: to the end). ``roiNode``: segment only inside this ROI. ``inProcess``: run
        in this process instead of a child process (blocks the GUI). Everything else is the core's
        ``SegmentOptions``, given whole (``options``) or by field name (``device="cpu"``,
        ``keep_labels=["Liver"]``, ``thresholds=(0.5, 0.3)`` or ``{"Tumor": 0.3}``, ``min_lesion_mm3``, ...).
        Existing segments of the same names are updated in place; other segments are not touched. The lesion
        report is kept in ``self.lastReport``.
        """
        job = self.prepareJob(volumeNode, segmentationNode, model=model, sliceRange=sliceRange, roiNode=roiNode,
                              options=options, **overrides)
        try:
            self.runJob(job, progress=progress, inProcess=inProcess)
            return self.finishJob(job)
        finally:
            job.cleanup()

    def prepareJob(self, volumeNode: vtkMRMLScalarVolumeNode, segmentationNode: vtkMRMLSegmentationNode | None = None,
                   model=None, sliceRange=None, roiNode: vtkMRMLMarkupsROINode | None = None, options=None,
                   **overrides):
        """Pull the volume and resolve the options (nothing runs yet)."""
        import sitkUtils

        if volumeNode is None or not volumeNode.IsA("vtkMRMLScalarVolumeNode") \
                or volumeNode.IsA("vtkMRMLLabelMapVolumeNode"):
            raise ValueError("select a CT volume (a scalar volume, not a label map)")
        if volumeNode.GetImageData() is None:
            raise ValueError(f"volume '{volumeNode.GetName()}' has no voxels")
        image = sitkUtils.PullVolumeFromSlicer(volumeNode)
        region = self.regionFor(image, volumeNode, roiNode=roiNode, sliceRange=sliceRange)
        job = self.prepareImageJob(image, model=model, options=options, region=region, **overrides)
        job.volumeNode, job.segmentationNode = volumeNode, segmentationNode
        return job

    def prepareImageJob(self, image, model=None, options=None, **overrides):
        """A job for a SimpleITK image (the Segment Editor effect's source volume)."""
        from SegmentEditorLiverTumorAILib.runner import SegmentationJob

        modelFile = self.resolveModel(model)
        return SegmentationJob(image, modelFile, self.segmentOptions(modelFile, options, **overrides))

    @staticmethod
    def segmentOptions(modelFile: Path, options=None, **overrides):
        """The core's SegmentOptions: ``options`` (default: the model's settings) with ``overrides`` by field
        name; thresholds may be given per label name ({"Tumor": 0.3}: the model's value for the others)."""
        import dataclasses

        from LiverTumorSegLib.options import SegmentOptions

        thresholds = overrides.get("thresholds")
        if isinstance(thresholds, dict):
            from LiverTumorSegLib.catalog import read_model_config

            config = read_model_config(modelFile)
            given = {str(k).lower(): float(v) for k, v in thresholds.items()}
            overrides["thresholds"] = tuple(given.get(lab.name.lower(), default)
                                            for lab, default in zip(config.labels, config.thresholds))
        try:
            options = dataclasses.replace(options or SegmentOptions(), **overrides)
        except TypeError as e:
            raise ValueError(f"unknown segmentation option ({e}); use the names of LiverTumorSegLib.options."
                             f"SegmentOptions") from None
        if options.device not in DEVICES:
            raise ValueError(f"device must be one of {', '.join(DEVICES)}, not {options.device!r}")
        return options

    @staticmethod
    def regionFor(image, volumeNode: vtkMRMLScalarVolumeNode, roiNode: vtkMRMLMarkupsROINode | None = None,
                  sliceRange=None):
        """The core's index box for an ROI and/or a slice range (None: the whole volume)."""
        from SegmentEditorLiverTumorAILib import segments

        box = None
        if roiNode is not None:
            bounds = [0.0] * 6
            roiNode.GetObjectBounds(bounds)
            objectToWorld = segments.vtkMatrixToNumpy(roiNode.GetObjectToWorldMatrix())
            parent = volumeNode.GetParentTransformNode()
            if parent is not None:
                worldToVolume = vtk.vtkMatrix4x4()
                if not slicer.vtkMRMLTransformNode.GetMatrixTransformBetweenNodes(None, parent, worldToVolume):
                    raise ValueError("the volume is under a non-linear transform: harden it before using an ROI")
                objectToWorld = segments.vtkMatrixToNumpy(worldToVolume) @ objectToWorld
            box = segments.regionFromRasPoints(image, segments.boxCorners(bounds, objectToWorld))
        if sliceRange is not None:
            first, last = sliceRange
            box = segments.intersectRegions(box, segments.regionFromSliceRange(image, first, last))
        if box is not None and all(b == (0, n) for b, n in zip(box, image.GetSize())):
            return None
        return box

    def runJob(self, job, progress=None, inProcess: bool = False) -> None:
        """Run a job to the end while keeping Slicer's GUI refreshed; raises SegmentationCancelledError or
        SegmentationRunError (``.log``: the child process's whole output)."""

        def callback(p):
            answer = progress(p) if progress is not None else None
            slicer.app.processEvents()
            return answer

        try:
            job.run(callback, inProcess=inProcess, pythonPath=[_moduleFolder()])
        finally:
            self.lastLog = job.log

    def startJob(self, job, onProgress=None, onFinished=None):
        """Start a job without blocking; ``onFinished(job, error)`` runs when it ends (error None on success)."""
        from SegmentEditorLiverTumorAILib import runner

        def finished(process) -> None:
            error = None
            try:
                job.takeResults(process)
            except Exception as e:  # noqa: BLE001 - handed to the caller, who shows it
                job.log = process.log.text()
                error = e
            self.lastLog = job.log
            if onFinished is not None:
                onFinished(job, error)

        process = job.childProcess(pythonPath=[_moduleFolder()])
        return runner.QtSegmentationRunner(process, onProgress=onProgress, onFinished=finished).start()

    def finishJob(self, job, segmentationNode: vtkMRMLSegmentationNode | None = None):
        """Write a finished job's label map into segments of ``segmentationNode`` (or the job's, or a new one)."""
        from SegmentEditorLiverTumorAILib import segments

        volumeNode: vtkMRMLScalarVolumeNode = job.volumeNode
        if volumeNode is None or volumeNode.GetScene() is None:
            raise ValueError("the input volume was removed from the scene while it was being segmented")
        segmentationNode = segmentationNode or job.segmentationNode
        if segmentationNode is not None and segmentationNode.GetScene() is None:
            segmentationNode = None  # deleted during the run: write into a new one
        if segmentationNode is None:
            segmentationNode = slicer.mrmlScene.AddNewNodeByClass(
                "vtkMRMLSegmentationNode", slicer.mrmlScene.GenerateUniqueName(volumeNode.GetName() + " segmentation"))
            segmentationNode.CreateDefaultDisplayNodes()
            segmentationNode.SetAndObserveTransformNodeID(volumeNode.GetTransformNodeID())
            segments.placeUnderVolumeStudy(segmentationNode, volumeNode)
        if segmentationNode.GetDisplayNode() is None:
            segmentationNode.CreateDefaultDisplayNodes()
        role = slicer.vtkMRMLSegmentationNode.GetReferenceImageGeometryReferenceRole()
        if segmentationNode.GetNodeReference(role) is None:
            segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(volumeNode)
        keep = job.options.keep_labels if job.options is not None else None
        specs = [s for s in job.specs if not keep or s.name.lower() in {k.lower() for k in keep}]
        wasModifying = segmentationNode.StartModify()
        try:
            segments.writeLabelmapToSegments(segmentationNode, job.labels, volumeNode, specs)
        finally:
            segmentationNode.EndModify(wasModifying)
        self.lastReport = job.report
        return segmentationNode


#
# LiverTumorSegTest
#


class LiverTumorSegTest(ScriptedLoadableModuleTest):
    """Phantom CT in the scene, a tiny model trained on phantoms (or ``$LIVERTUMORSEG_TEST_MODEL``), then the
    logic (child process and in-process) and the Segment Editor effect, checked against the phantom's truth."""

    _modelFile: str | None = None
    _modelFolder: str | None = None

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        import shutil

        try:
            self.setUp()
            self.test_ProcessInChildProcessAndInProcess()
            self.setUp()
            self.test_RegionsAndErrors()
            self.setUp()
            self.test_SegmentEditorEffectAndUndo()
        finally:
            if LiverTumorSegTest._modelFolder:
                shutil.rmtree(LiverTumorSegTest._modelFolder, ignore_errors=True)
                LiverTumorSegTest._modelFolder = LiverTumorSegTest._modelFile = None

    # -- fixtures ----------------------------------------------------------------------------------

    def _model(self) -> str:
        """A model file: ``$LIVERTUMORSEG_TEST_MODEL`` or one trained now on phantoms (1-3 minutes on a CPU)."""
        LiverTumorSegLogic().ensureDependencies(askConfirmation=False)  # testing mode: installs without asking
        if os.environ.get("LIVERTUMORSEG_TEST_MODEL"):
            return os.environ["LIVERTUMORSEG_TEST_MODEL"]
        if LiverTumorSegTest._modelFile and os.path.isfile(LiverTumorSegTest._modelFile):
            return LiverTumorSegTest._modelFile
        if importlib.util.find_spec("matplotlib") is None:  # training writes learning curves
            slicer.util.pip_install("matplotlib")
        _ensureCorePackagesImportable()
        from LiverTumorSegLib.atomicfile import write_image_atomic
        from LiverTumorSegLib.phantom import make_phantom
        from LiverTumorSegTrainLib.config import PRESETS, TrainConfig
        from LiverTumorSegTrainLib.trainer import train

        self.delayDisplay("Training a tiny model on phantoms (1-3 minutes)")
        folder = tempfile.mkdtemp(prefix="LiverTumorSegTest-")
        data = Path(folder) / "data"
        for seed in range(20, 26):
            ct, labels = make_phantom(shape_zyx=(40, 128, 128), spacing_zyx=(2.5, 1.8, 1.8), seed=seed,
                                      orientation=("LPS", "RAS")[seed % 2], n_lesions=2 + seed % 2)
            write_image_atomic(ct, data / f"case{seed}.nii.gz")
            write_image_atomic(labels, data / f"case{seed}_truth.nii.gz")
        config = TrainConfig(**{**PRESETS["demo"], "preset": "demo", "data": [str(data)],
                                "output": str(Path(folder) / "run"), "val_cases": ["case25"],
                                "epochs": 10, "steps_per_epoch": 40, "val_every": 10, "device": "cpu",
                                "cache_dir": str(Path(folder) / "cache"), "name": "LiverTumorSeg self-test"})
        result = train(config, overwrite=True, progress=False)
        LiverTumorSegTest._modelFolder = folder
        LiverTumorSegTest._modelFile = str(result.model_path)
        return LiverTumorSegTest._modelFile

    def _phantomVolume(self, name: str = "Phantom CT"):
        import sitkUtils

        _ensureCorePackagesImportable()
        from LiverTumorSegLib.phantom import make_phantom

        ct, truth = make_phantom(shape_zyx=(40, 128, 128), spacing_zyx=(2.5, 1.8, 1.8), seed=1,
                                 lesion_diameters_mm=(14.0, 24.0))
        volumeNode = sitkUtils.PushVolumeToSlicer(ct, name=name)
        return volumeNode, truth

    @staticmethod
    def _dice(a, b) -> float:
        total = int(a.sum()) + int(b.sum())
        return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total

    def _segmentArray(self, segmentationNode: vtkMRMLSegmentationNode, name: str,
                      volumeNode: vtkMRMLScalarVolumeNode):
        segmentId = segmentationNode.GetSegmentation().GetSegmentIdBySegmentName(name)
        self.assertTrue(segmentId, f"segment {name} missing")
        return slicer.util.arrayFromSegmentBinaryLabelmap(segmentationNode, segmentId, volumeNode) > 0

    def _checkSegments(self, segmentationNode: vtkMRMLSegmentationNode, volumeNode: vtkMRMLScalarVolumeNode, truth,
                       minLiverDice: float = 0.9) -> None:
        import numpy as np
        import SimpleITK as sitk

        truthArray = sitk.GetArrayFromImage(truth)
        segmentation = segmentationNode.GetSegmentation()
        codes = {"Liver": "SCT^10200004^Liver", "Tumor": "SCT^108369006^Neoplasm"}
        for name, code in codes.items():
            segment = segmentation.GetSegment(segmentation.GetSegmentIdBySegmentName(name))
            self.assertIsNotNone(segment, f"segment {name} missing")
            self.assertIn(code, segment.GetTerminology())
        liver = self._segmentArray(segmentationNode, "Liver", volumeNode)
        tumor = self._segmentArray(segmentationNode, "Tumor", volumeNode)
        self.assertEqual(liver.shape, truthArray.shape, "segments are not on the volume's grid")
        self.assertFalse(np.any(liver & tumor), "Liver and Tumor overlap")
        dice = self._dice(liver | tumor, truthArray >= 1)
        self.delayDisplay(f"Liver Dice {dice:.3f}, tumour Dice {self._dice(tumor, truthArray == 2):.3f}")
        self.assertGreaterEqual(dice, minLiverDice)

    # -- tests -------------------------------------------------------------------------------------

    def test_ProcessInChildProcessAndInProcess(self):
        import numpy as np

        model = self._model()
        volumeNode, truth = self._phantomVolume()
        logic = LiverTumorSegLogic()

        self.delayDisplay("Segmenting in a child process (PythonSlicer)")
        stages = []
        segmentationNode = logic.process(volumeNode, model=model, device="cpu", progress=lambda p: stages.append(
            (p.stage, p.done, p.total)))
        self.assertTrue(any(s[0] == "segmenting" and s[1] == s[2] > 0 for s in stages), "no slice progress")
        self._checkSegments(segmentationNode, volumeNode, truth)
        self.assertGreater(logic.lastReport["organ_volume_ml"], 0)
        role = slicer.vtkMRMLSegmentationNode.GetReferenceImageGeometryReferenceRole()
        self.assertEqual(segmentationNode.GetNodeReference(role), volumeNode)
        shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(slicer.mrmlScene)
        self.assertEqual(shNode.GetItemParent(shNode.GetItemByDataNode(segmentationNode)),
                         shNode.GetItemParent(shNode.GetItemByDataNode(volumeNode)))

        self.delayDisplay("In-process run into the same segmentation: Liver/Tumor updated, Spleen untouched")
        spleenId = segmentationNode.GetSegmentation().AddEmptySegment("", "Spleen")
        spleen = np.zeros(slicer.util.arrayFromVolume(volumeNode).shape, np.uint8)
        spleen[5:10, 10:30, 10:30] = 1
        slicer.util.updateSegmentBinaryLabelmapFromArray(spleen, segmentationNode, spleenId, volumeNode)
        before = segmentationNode.GetSegmentation().GetNumberOfSegments()
        logic.process(volumeNode, segmentationNode, model=model, device="cpu", inProcess=True,
                      thresholds={"Liver": 0.5, "Tumor": 0.5})
        self.assertEqual(segmentationNode.GetSegmentation().GetNumberOfSegments(), before)
        np.testing.assert_array_equal(self._segmentArray(segmentationNode, "Spleen", volumeNode), spleen > 0)
        self._checkSegments(segmentationNode, volumeNode, truth)
        self.delayDisplay("Test passed")

    def test_RegionsAndErrors(self):
        import sitkUtils

        model = self._model()
        volumeNode, truth = self._phantomVolume()
        logic = LiverTumorSegLogic()

        self.delayDisplay("Slice range: nothing outside slices 10-19")
        segmentationNode = logic.process(volumeNode, model=model, device="cpu", sliceRange=(10, 19), inProcess=True,
                                         keep_labels=["Liver"])
        liver = self._segmentArray(segmentationNode, "Liver", volumeNode)
        self.assertFalse(liver[:10].any() or liver[20:].any())
        self.assertTrue(liver[10:20].any())
        self.assertFalse(segmentationNode.GetSegmentation().GetSegmentIdBySegmentName("Tumor"),
                         "liver only: no Tumor segment")

        self.delayDisplay("ROI: nothing outside the box")
        roiNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsROINode")
        bounds = [0.0] * 6
        volumeNode.GetRASBounds(bounds)
        center = [(bounds[0] + bounds[1]) / 2, (bounds[2] + bounds[3]) / 2, (bounds[4] + bounds[5]) / 2]
        roiNode.SetCenter(center)
        roiNode.SetSize([(bounds[1] - bounds[0]) / 2, bounds[3] - bounds[2], bounds[5] - bounds[4]])
        region = logic.regionFor(sitkUtils.PullVolumeFromSlicer(volumeNode), volumeNode, roiNode=roiNode)
        self.assertIsNotNone(region)
        (i0, i1), _j, _k = region
        self.assertLess(i1 - i0, 128)
        segmentationNode2 = logic.process(volumeNode, model=model, device="cpu", roiNode=roiNode, inProcess=True)
        liver = self._segmentArray(segmentationNode2, "Liver", volumeNode)
        self.assertFalse(liver[:, :, :i0].any() or liver[:, :, i1:].any())

        self.delayDisplay("Errors: unknown model, label map input")
        with self.assertRaisesRegex(ValueError, "neither a model file"):
            logic.process(volumeNode, model="/no/such/model.pt")
        labelmap = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
        with self.assertRaisesRegex(ValueError, "label map"):
            logic.process(labelmap, model=model)
        from SegmentEditorLiverTumorAILib.runner import SegmentationRunError

        with self.assertRaises(SegmentationRunError) as caught:
            logic.process(volumeNode, model=model, thresholds=(0.5,))  # one threshold for two labels
        self.assertIn("thresholds", str(caught.exception))
        self.assertIn("livertumorseg", caught.exception.log)
        self.delayDisplay("Test passed")

    def test_SegmentEditorEffectAndUndo(self):
        import numpy as np

        model = self._model()
        volumeNode, truth = self._phantomVolume()
        registerSegmentEditorEffect()

        segmentationNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode")
        segmentationNode.CreateDefaultDisplayNodes()
        segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(volumeNode)
        existingId = segmentationNode.GetSegmentation().AddEmptySegment("", "Existing")
        existing = np.zeros(slicer.util.arrayFromVolume(volumeNode).shape, np.uint8)
        existing[2:6, 100:120, 100:120] = 1
        slicer.util.updateSegmentBinaryLabelmapFromArray(existing, segmentationNode, existingId, volumeNode)

        segmentEditorWidget = slicer.qMRMLSegmentEditorWidget()
        segmentEditorWidget.show()  # as the Segment Editor effect template's test does
        segmentEditorWidget.setMRMLScene(slicer.mrmlScene)
        segmentEditorNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentEditorNode")
        segmentEditorNode.SetOverwriteMode(slicer.vtkMRMLSegmentEditorNode.OverwriteNone)  # "Existing" stays as is
        segmentEditorWidget.setMRMLSegmentEditorNode(segmentEditorNode)
        segmentEditorWidget.setSegmentationNode(segmentationNode)
        segmentEditorWidget.setSourceVolumeNode(volumeNode)
        self.assertIn(EFFECT_NAME, segmentEditorWidget.availableEffectNames())

        self.delayDisplay("Applying the Liver Tumor AI effect")
        segmentEditorWidget.setActiveEffectByName(EFFECT_NAME)
        effect = segmentEditorWidget.activeEffect()
        self.assertIsNotNone(effect)
        effect.setParameter("Model", model)
        effect.setParameter("Device", "cpu")
        effect.setParameter("Output", "both")
        effect.self().onApply()
        self._checkSegments(segmentationNode, volumeNode, truth)
        self.assertEqual(segmentationNode.GetSegmentation().GetNumberOfSegments(), 3)
        np.testing.assert_array_equal(self._segmentArray(segmentationNode, "Existing", volumeNode), existing > 0)
        self.assertTrue(segmentEditorNode.GetSelectedSegmentID())

        self.delayDisplay("One undo restores the previous state")
        segmentEditorWidget.undo()
        segmentation = segmentationNode.GetSegmentation()
        self.assertEqual(segmentation.GetNumberOfSegments(), 1)
        self.assertEqual(segmentation.GetNthSegment(0).GetName(), "Existing")
        np.testing.assert_array_equal(self._segmentArray(segmentationNode, "Existing", volumeNode), existing > 0)

        segmentEditorWidget.setActiveEffectByName("")
        segmentEditorWidget.close()
        slicer.mrmlScene.RemoveNode(segmentEditorNode)
        self.delayDisplay("Test passed")

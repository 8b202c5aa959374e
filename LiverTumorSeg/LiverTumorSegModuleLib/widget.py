"""The module's widget: the .ui bound to the parameters, model list, Apply/Cancel and the results table."""

from __future__ import annotations

import logging
from typing import Any

import qt
import slicer
import vtk
from slicer.i18n import tr as _
from slicer.ScriptedLoadableModule import ScriptedLoadableModuleWidget
from slicer.util import VTKObservationMixin

from .logic import LiverTumorSegLogic
from .parameters import CATALOG_PREFIX, MODELS_FOLDER_SETTING, OUTPUTS, LiverTumorSegParameterNode


class LiverTumorSegWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The module's GUI; ``logic`` may be injected (tests drive the widget with a fake logic)."""

    def __init__(self, parent=None, logic=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = logic
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
        self.logic = self.logic or LiverTumorSegLogic()

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
        from LiverTumorSegModuleLib.jobs import SegmentationCancelledError

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

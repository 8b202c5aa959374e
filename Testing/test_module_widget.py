"""The module's widget, run against a fake logic (and fake Slicer/Qt, ``fake_slicer``): which buttons it enables,
what it asks the logic to do, and what the user sees when something fails."""

from __future__ import annotations

import importlib
import sys
import types
from pathlib import Path

import pytest

import fake_slicer

MODULE_DIR = Path(__file__).resolve().parents[1] / "LiverTumorSeg"


FakeParameters = fake_slicer.FakeParameterNode


def _parameters(**kw) -> FakeParameters:
    values = dict(inputVolume=None, outputSegmentation=None, roi=None, model="", device="auto", precision="auto",
                  batchSize=0, outputs="Liver and tumor", overrideModelSettings=False, liverThreshold=0.5,
                  tumorThreshold=0.5, minLesionMm3=10.0, minLesionConfidence=0.0, organMarginMm=3.0, firstSlice=0,
                  lastSlice=0, show3D=False, useLocalizer=True, allowNonCt=False)
    values.update(kw)
    return FakeParameters(**values)


class FakeLogic:
    def __init__(self, parameters: FakeParameters):
        self.parameters, self.calls, self.lastReport = parameters, [], None
        self.fail_install: Exception | None = None
        self.choices = [{"text": "Model A", "data": "/m/a.pt", "enabled": True, "toolTip": "a", "default": True}]

    def getParameterNode(self):
        return self.parameters

    def modelsFolder(self):
        return Path("/m")

    def modelChoices(self):
        return self.choices

    @staticmethod
    def defaultModelChoice(choices):
        return next((c["data"] for c in choices if c["default"]), None)

    def ensureDependencies(self, askConfirmation=True):
        self.calls.append("ensureDependencies")
        if self.fail_install is not None:
            raise self.fail_install

    def prepareJob(self, volume, segmentation, **options):
        self.calls.append(("prepareJob", options))
        return types.SimpleNamespace(log="the log", cleanup=lambda: self.calls.append("cleanup"), seconds=lambda: 3.0)

    def startJob(self, job, onProgress=None, onFinished=None):
        self.calls.append("startJob")
        return types.SimpleNamespace(running=True, cancel=lambda: self.calls.append("cancel"))

    def finishJob(self, job):
        self.calls.append("finishJob")
        self.lastReport = {"organ_volume_ml": 1500.0, "lesion_count": 1, "lesion_volume_ml": 2.5,
                           "lesion_burden_percent": 0.17, "lesions": [
                               {"id": 1, "volume_ml": 2.5, "longest_axial_diameter_mm": 18.0, "slice_range": [3, 9],
                                "confidence": 0.91}]}
        return types.SimpleNamespace(RemoveClosedSurfaceRepresentation=lambda: self.calls.append("no 3-D"),
                                     CreateClosedSurfaceRepresentation=lambda: self.calls.append("3-D"))

    def removeModelFile(self, path):
        self.calls.append(("removeModelFile", path))
        return Path(path)


@pytest.fixture()
def widget_module(monkeypatch):
    recorder = fake_slicer.install(monkeypatch)
    monkeypatch.syspath_prepend(str(MODULE_DIR))
    module = importlib.import_module("LiverTumorSegModuleLib.widget")
    yield module, recorder
    for name in [m for m in sys.modules if m.startswith("LiverTumorSegModuleLib.")]:
        if name.split(".")[-1] in ("widget", "logic", "parameters", "install", "catalog_view"):
            del sys.modules[name]  # later tests import the real modules again


def _widget(widget_module, **parameters):
    module, recorder = widget_module
    logic = FakeLogic(_parameters(**parameters))
    widget = module.LiverTumorSegWidget(types.SimpleNamespace(isEntered=True), logic=logic)
    widget.setup()
    return widget, logic, recorder


def test_apply_needs_a_volume_and_a_model_and_is_off_while_running(widget_module):
    widget, logic, _ = _widget(widget_module)
    assert not widget.ui.applyButton.enabled and "CT volume" in widget.ui.applyButton.toolTip
    assert logic.parameters.model == "/m/a.pt"  # the default model was selected
    logic.parameters.inputVolume = "CT"  # the parameter node's Modified event re-checks the button
    assert widget.ui.applyButton.enabled
    logic.choices = []
    widget.updateModelList()
    assert not widget.ui.applyButton.enabled and "model" in widget.ui.applyButton.toolTip
    logic.choices = FakeLogic(logic.parameters).choices
    widget.updateModelList()
    widget.onApplyButton()
    assert "startJob" in logic.calls and not widget.ui.applyButton.enabled and widget.ui.cancelButton.enabled
    widget.onCancelButton()
    assert logic.calls[-1] == "cancel"


def test_the_override_switch_enables_the_post_processing_options(widget_module):
    widget, logic, _ = _widget(widget_module)
    options = (widget.ui.liverThresholdSliderWidget, widget.ui.minLesionSizeSpinBox, widget.ui.organMarginSpinBox,
               widget.ui.minLesionConfidenceSliderWidget)
    assert not any(w.enabled for w in options)
    logic.parameters.overrideModelSettings = True
    assert all(w.enabled for w in options)


def test_apply_passes_every_option_and_a_failed_install_is_shown_not_started(widget_module):
    widget, logic, recorder = _widget(widget_module, inputVolume="CT", overrideModelSettings=True, precision="fp32",
                                      outputs="Liver only", firstSlice=4, lastSlice=9)
    widget.onApplyButton()
    (_, options), = [c for c in logic.calls if isinstance(c, tuple) and c[0] == "prepareJob"]
    assert options["precision"] == "fp32" and options["keep_labels"] == ["Liver"] and options["sliceRange"] == (4, 9)
    assert options["thresholds"] == {"Liver": 0.5, "Tumor": 0.5} and options["min_lesion_confidence"] == 0.0

    widget, logic, recorder = _widget(widget_module, inputVolume="CT")
    logic.fail_install = RuntimeError("LiverTumorSeg needs PyTorch: install the PyTorch extension")
    widget.onApplyButton()
    assert recorder.errors and "needs PyTorch" in recorder.errors[-1][1]
    assert "startJob" not in logic.calls and widget.ui.applyButton.enabled  # nothing runs; Apply can be retried


def test_a_finished_run_shows_the_report_a_failed_one_the_error_with_the_log(widget_module):
    widget, logic, recorder = _widget(widget_module, inputVolume="CT")
    from LiverTumorSegModuleLib.jobs import SegmentationCancelledError, SegmentationRunError

    job = logic.prepareJob(None, None)
    widget._onFinished(job, SegmentationRunError("out of memory", log="Traceback ..."))
    assert recorder.errors[-1] == ("Segmentation failed: out of memory", "Traceback ...")
    assert widget._runner is None and "cleanup" in logic.calls
    widget._onFinished(job, SegmentationCancelledError("cancelled"))
    assert "Cancelled" in widget.ui.statusLabel.text and widget.ui.progressBar.value == 0
    widget._onFinished(job, None)
    assert "finishJob" in logic.calls and widget.ui.progressBar.value == 100 and logic.calls[-2] == "no 3-D"
    assert widget.ui.resultsTableWidget.rows[0][1] == "1500.0 mL"
    assert "confidence 0.91" in widget.ui.resultsTableWidget.rows[-1][1]


def test_only_a_model_file_can_be_removed_and_only_after_confirmation(widget_module):
    widget, logic, recorder = _widget(widget_module)
    logic.parameters.model = "catalog:liver"
    widget.onRemoveModelButton()
    assert "Select a downloaded or imported model" in widget.ui.statusLabel.text
    logic.parameters.model = "/m/a.pt"
    recorder.confirm_answer = False
    widget.onRemoveModelButton()
    assert not any(isinstance(c, tuple) and c[0] == "removeModelFile" for c in logic.calls)
    recorder.confirm_answer = True
    widget.onRemoveModelButton()
    assert ("removeModelFile", "/m/a.pt") in logic.calls and "Removed" in widget.ui.statusLabel.text

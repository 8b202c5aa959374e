"""Just enough of Slicer, Qt and VTK to run the module's widget in CI, so that its behaviour (button states,
error paths, what it asks its logic to do) is tested by running it against a fake logic, not by reading its
source. Widgets are records of the properties the code sets; dialogs record what they would have shown."""

from __future__ import annotations

import contextlib
import sys
import types
import xml.etree.ElementTree as ET
from pathlib import Path

UI = Path(__file__).resolve().parents[1] / "LiverTumorSeg" / "Resources" / "UI" / "LiverTumorSeg.ui"


class FakeWidget:
    """A Qt widget as the code uses it: properties, connections, items, a value."""

    def __init__(self, name: str = "") -> None:
        self.name, self.enabled, self.toolTip, self.text, self.plainText = name, True, "", "", ""
        self.value, self.directory, self.connections, self.items, self.rows = 0, "", {}, [], []

    def connect(self, signal, slot):
        self.connections[signal] = slot

    def setValue(self, value):
        self.value = value

    def setMRMLScene(self, scene):
        pass

    # combo box
    def blockSignals(self, block):
        return False

    def clear(self):
        self.items = []

    def addItem(self, text, data=None):
        self.items.append({"text": text, "data": data, "roles": {}})

    def setItemData(self, index, value, role):
        self.items[index]["roles"][role] = value

    def itemData(self, index, role=None):
        item = self.items[index]
        return item["data"] if role is None else item["roles"].get(role)

    def findData(self, data):
        return next((i for i, item in enumerate(self.items) if item["data"] == data), -1)

    def setCurrentIndex(self, index):
        self.currentIndex = index

    # table
    def setColumnCount(self, n):
        pass

    def setHorizontalHeaderLabels(self, labels):
        pass

    def horizontalHeader(self):
        return types.SimpleNamespace(setStretchLastSection=lambda on: None)

    def setRowCount(self, n):
        self.rows = [[None, None] for _ in range(n)]

    def setItem(self, row, column, item):
        self.rows[row][column] = item

    def resizeColumnToContents(self, column):
        pass


class Recorder:
    """What the fake Slicer was asked to show."""

    def __init__(self) -> None:
        self.errors: list[tuple[str, str]] = []
        self.confirm_answer = True


def install(monkeypatch) -> Recorder:
    """Put fake slicer, qt, vtk modules into sys.modules (undone by ``monkeypatch`` at the end of the test)."""
    recorder = Recorder()
    names = [w.get("name") for w in ET.parse(UI).getroot().iter("widget")]

    qt = types.ModuleType("qt")
    qt.Qt = types.SimpleNamespace(ToolTipRole=3, UserRole=256)
    qt.QTableWidgetItem = lambda text: text
    qt.QSettings = lambda: types.SimpleNamespace(setValue=lambda k, v: None)
    qt.QFileDialog = types.SimpleNamespace(getOpenFileName=lambda *a: "")

    vtk = types.ModuleType("vtk")
    vtk.vtkCommand = types.SimpleNamespace(ModifiedEvent=33)

    @contextlib.contextmanager
    def tryWithErrorDisplay(message="", show=True, waitCursor=False):
        try:
            yield
        except Exception as e:  # noqa: BLE001 - what Slicer's helper does: show it, do not raise
            recorder.errors.append((message, str(e)))

    util = types.ModuleType("slicer.util")
    def addObserver(self, obj, event, callback):
        if hasattr(obj, "observers"):  # a fake parameter node: it calls back when a parameter changes
            obj.observers.append(callback)

    def removeObserver(self, obj, event, callback):
        if hasattr(obj, "observers") and callback in obj.observers:
            obj.observers.remove(callback)

    util.VTKObservationMixin = type("VTKObservationMixin", (), {
        "__init__": lambda self: None, "addObserver": addObserver, "removeObserver": removeObserver,
        "removeObservers": lambda self: None})
    util.loadUI = lambda path: FakeWidget("root")
    util.childWidgetVariables = lambda widget: types.SimpleNamespace(**{n: FakeWidget(n) for n in names})
    util.tryWithErrorDisplay = tryWithErrorDisplay
    util.errorDisplay = lambda text, detailedText="", **kw: recorder.errors.append((text, detailedText))
    util.confirmYesNoDisplay = lambda text, **kw: recorder.confirm_answer
    util.mainWindow = lambda: None
    util.settingsValue = lambda key, default: default

    slicer = types.ModuleType("slicer")
    slicer.util = util
    slicer.app = types.SimpleNamespace(processEvents=lambda: None, connect=lambda *a: None,
                                       testingEnabled=lambda: True)
    slicer.mrmlScene = types.SimpleNamespace(StartCloseEvent=1, EndCloseEvent=2,
                                             GetFirstNodeByClass=lambda cls: None)
    for node in ("vtkMRMLScalarVolumeNode", "vtkMRMLSegmentationNode", "vtkMRMLMarkupsROINode"):
        setattr(slicer, node, type(node, (), {}))
    i18n = types.ModuleType("slicer.i18n")
    i18n.tr = lambda text: text
    i18n.translate = lambda context, text: text
    pnw = types.ModuleType("slicer.parameterNodeWrapper")
    pnw.parameterNodeWrapper = lambda cls: cls
    pnw.Choice = pnw.WithinRange = pnw.Minimum = lambda *a: None
    slm = types.ModuleType("slicer.ScriptedLoadableModule")

    class Base:
        def __init__(self, parent=None):
            self.parent, self.layout = parent, types.SimpleNamespace(addWidget=lambda w: None)

        def setup(self):
            pass

        def resourcePath(self, name):
            return name

    for cls in ("ScriptedLoadableModule", "ScriptedLoadableModuleLogic", "ScriptedLoadableModuleTest",
                "ScriptedLoadableModuleWidget"):
        setattr(slm, cls, type(cls, (Base,), {}))
    slicer.i18n, slicer.parameterNodeWrapper, slicer.ScriptedLoadableModule = i18n, pnw, slm
    for name, module in {"qt": qt, "vtk": vtk, "slicer": slicer, "slicer.util": util, "slicer.i18n": i18n,
                         "slicer.parameterNodeWrapper": pnw, "slicer.ScriptedLoadableModule": slm}.items():
        monkeypatch.setitem(sys.modules, name, module)
    for name in [m for m in sys.modules if m.startswith("LiverTumorSegModuleLib.") and m.split(".")[-1] in (
            "widget", "logic", "parameters", "install", "catalog_view")]:
        monkeypatch.delitem(sys.modules, name)  # re-imported against the fakes
    return recorder


class FakeParameterNode:
    """A parameter node: attributes, and the Modified callbacks Slicer calls when one changes."""

    def __init__(self, **values) -> None:
        object.__setattr__(self, "observers", [])
        for name, value in values.items():
            object.__setattr__(self, name, value)

    def __setattr__(self, name, value) -> None:
        object.__setattr__(self, name, value)
        for callback in list(self.observers):
            callback(self, None)

    def connectGui(self, ui):
        return "tag"

    def disconnectGui(self, tag):
        pass

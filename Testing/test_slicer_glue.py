"""The LiverTumorSeg module and the "Liver Tumor AI" effect, checked without Slicer.

Slicer cannot run in CI, so the glue is held to what can be checked here: its structure (read with
``ast``: nothing heavy imported at Slicer's startup, the effect has the hooks the Segment Editor calls
and is registered at ``startupCompleted``, the self-test is enabled, the ``.ui`` binds only parameters
that exist and has every widget the code uses), the pure-Python helpers it is built from (event parsing
and ETA, the command line, the index geometry of ROIs and slice ranges), and real runs of the core's
``segment`` command in a child process through the same runner the module uses: progress, outputs,
cancel and errors. Which Slicer APIs the glue calls is checked by ``test_slicer_api.py``.
"""

from __future__ import annotations

import ast
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from slicer_api import class_def, imported_at_import_time, methods

ROOT = Path(__file__).resolve().parents[1]
MODULE_DIR = ROOT / "LiverTumorSeg"
MODULE = MODULE_DIR / "LiverTumorSeg.py"
UI = MODULE_DIR / "Resources" / "UI" / "LiverTumorSeg.ui"
EFFECT_LIB = MODULE_DIR / "SegmentEditorLiverTumorAILib"
EFFECT = EFFECT_LIB / "SegmentEditorEffect.py"
LIB = MODULE_DIR / "LiverTumorSegModuleLib"
PARAMETERS, WIDGET, SELFTEST = LIB / "parameters.py", LIB / "widget.py", LIB / "selftest.py"
GLUE_FILES = [MODULE, EFFECT, EFFECT_LIB / "__init__.py", *sorted(LIB.glob("*.py"))]
HEAVY = {"torch", "numpy", "SimpleITK", "LiverTumorSegLib", "LiverTumorSegTrainLib", "sitkUtils"}



def parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"))


def dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{dotted(node.value)}.{node.attr}"
    return ""


def calls_in(node: ast.AST) -> list[ast.Call]:
    return sorted((n for n in ast.walk(node) if isinstance(n, ast.Call)), key=lambda c: (c.lineno, c.col_offset))


# --------------------------------------------------------------------------------------------------
# Structure of the glue
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", GLUE_FILES, ids=lambda p: p.name)
def test_nothing_heavy_is_imported_when_slicer_loads_the_file(path):
    assert not HEAVY & imported_at_import_time(path)


def test_the_import_reader_sees_imports():
    assert {"slicer", "qt", "vtk"} <= imported_at_import_time(WIDGET) | imported_at_import_time(LIB / "logic.py")
    assert "SegmentEditorEffects" in imported_at_import_time(EFFECT)


def test_the_packages_import_without_slicer_where_child_processes_and_ci_need_them():
    """The packages' __init__ files pull in nothing (the effect needs Slicer); the job runner, its event parsing
    and the segment geometry import without Slicer (PythonSlicer child processes and CI use them)."""
    for init in (EFFECT_LIB / "__init__.py", LIB / "__init__.py"):
        assert all(isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant) for n in parse(init).body)
    for name in ("events.py", "jobs.py", "segments.py", "paths.py"):
        assert "slicer" not in imported_at_import_time(LIB / name)


def test_the_effects_package_holds_only_the_effect():
    assert sorted(p.name for p in EFFECT_LIB.glob("*.py")) == ["SegmentEditorEffect.py", "__init__.py"]


def test_the_module_file_is_small_and_its_classes_come_from_the_library():
    tree = parse(MODULE)
    assert len(MODULE.read_text(encoding="utf-8").splitlines()) < 150
    imported = {a.asname or a.name for n in tree.body if isinstance(n, ast.ImportFrom) for a in n.names}
    assert {"LiverTumorSegWidget", "LiverTumorSegLogic", "LiverTumorSegTest"} <= imported


def test_the_effect_has_the_hooks_the_segment_editor_calls():
    tree = parse(EFFECT)
    effect = class_def(tree, "SegmentEditorEffect")
    assert [dotted(b) for b in effect.bases] == ["AbstractScriptedSegmentEditorEffect"]
    hooks = methods(effect)
    for hook in ("__init__", "clone", "icon", "helpText", "setupOptionsFrame", "setMRMLDefaults",
                 "updateGUIFromMRML", "updateMRMLFromGUI", "onApply", "activate"):
        assert hook in hooks, hook
    assignments = {dotted(t): n.value for n in ast.walk(hooks["__init__"]) if isinstance(n, ast.Assign)
                   for t in n.targets}
    assert ast.literal_eval(assignments["scriptedEffect.name"]) == "Liver Tumor AI"
    assert ast.literal_eval(assignments["scriptedEffect.perSegment"]) is False
    assert ast.literal_eval(assignments["scriptedEffect.requireSegments"]) is False
    # clone() re-creates the effect from this very file
    assert any(dotted(c.func).endswith("setPythonSource") for c in calls_in(hooks["clone"]))


def test_the_effect_saves_undo_state_once_before_modifying_segments():
    run = methods(class_def(parse(EFFECT), "SegmentEditorEffect"))["run"]
    names = [dotted(c.func) for c in calls_in(run)]
    saves = [i for i, n in enumerate(names) if n.endswith("saveStateForUndo")]
    modifies = [i for i, n in enumerate(names) if n.endswith("modifySegmentByLabelmap")]
    assert len(saves) == 1 and modifies and saves[0] < min(modifies)
    assert not any(n.endswith("ensureSegment") for n in names[:saves[0]]), "segments created before the undo state"


def test_the_effect_icon_exists():
    source = EFFECT.read_text(encoding="utf-8")
    assert '"Resources", "Icons"' in source and "SegmentEditorLiverTumorAI.png" in source
    assert (MODULE_DIR / "Resources" / "Icons" / "SegmentEditorLiverTumorAI.png").is_file()


def test_the_module_registers_the_effect_at_startup_completed():
    tree = parse(MODULE)
    init = methods(class_def(tree, "LiverTumorSeg"))["__init__"]
    connects = [c for c in calls_in(init) if dotted(c.func) == "slicer.app.connect"]
    assert any(ast.literal_eval(c.args[0]) == "startupCompleted()"
               and dotted(c.args[1]) == "registerSegmentEditorEffect" for c in connects)
    register = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "registerSegmentEditorEffect")
    called = [dotted(c.func) for c in calls_in(register)]
    assert "effects.qSlicerSegmentEditorScriptedEffect" in called
    assert "instance.setPythonSource" in called and "instance.self" in called
    assert any(isinstance(c.func, ast.Attribute) and c.func.attr == "register" for c in calls_in(register))
    imports = {a.name for n in ast.walk(register) if isinstance(n, ast.Import) for a in n.names}
    assert imports == {"qSlicerSegmentationsEditorEffectsPythonQt"}  # nothing heavy at registration
    source = (LIB / "paths.py").read_text(encoding="utf-8")
    assert '"SegmentEditorLiverTumorAILib", "SegmentEditorEffect.py"' in source and EFFECT.is_file()


def test_the_self_test_is_enabled_and_runs_every_test():
    test = class_def(parse(SELFTEST), "LiverTumorSegTest")
    assert [dotted(b) for b in test.bases] == ["ScriptedLoadableModuleTest"]
    assert not any(isinstance(n, ast.Assign) and any(dotted(t).endswith("testLogic") for t in n.targets)
                   for n in ast.walk(test)), "the self-test must not be disabled"
    body = methods(test)
    tests = {name for name in body if name.startswith("test_")}
    assert len(tests) >= 3
    run = {c.func.attr for c in calls_in(body["runTest"]) if isinstance(c.func, ast.Attribute)}
    assert tests <= run, f"runTest skips {tests - run}"


def parameter_fields() -> dict[str, str]:
    """Fields of the @parameterNodeWrapper class: name -> annotation source."""
    tree = parse(PARAMETERS)
    cls = class_def(tree, "LiverTumorSegParameterNode")
    assert any(dotted(d) == "parameterNodeWrapper" for d in cls.decorator_list)
    return {n.target.id: ast.unparse(n.annotation) for n in cls.body if isinstance(n, ast.AnnAssign)}


def ui_widgets() -> dict[str, ET.Element]:
    root = ET.parse(UI).getroot()
    return {w.get("name"): w for w in root.iter("widget")}


def bound_widgets() -> dict[str, ET.Element]:
    """SlicerParameterName -> widget element."""
    bound = {}
    for widget in ui_widgets().values():
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                assert prop.get("stdset") == "0", "dynamic properties need stdset=0 in Qt Designer files"
                name = prop.find("string").text
                assert name not in bound, f"two widgets bound to {name}"
                bound[name] = widget
    return bound


def test_the_ui_file_is_a_qt_designer_file_with_the_template_layout():
    root = ET.parse(UI).getroot()
    assert root.tag == "ui" and root.get("version") == "4.0"
    top = root.find("widget")
    assert top.get("class") == "qMRMLWidget" and top.get("name") == root.find("class").text == "LiverTumorSeg"
    custom = {c.find("class").text for c in root.iter("customwidget")}
    used = {w.get("class") for w in root.iter("widget")}
    assert {c for c in used if c.startswith(("q", "ctk"))} <= custom | {"qMRMLWidget"}
    scene_slots = {c.find("receiver").text for c in root.iter("connection")
                   if c.find("signal").text == "mrmlSceneChanged(vtkMRMLScene*)"}
    mrml_widgets = {w.get("name") for w in root.iter("widget") if w.get("class", "").startswith("qMRML")} - {
        top.get("name")}
    assert mrml_widgets and mrml_widgets <= scene_slots, "every MRML widget needs the scene"
    assert sum(w.get("class") == "ctkCollapsibleButton" for w in root.iter("widget")) >= 4


def test_every_bound_widget_names_a_parameter_and_suits_its_type():
    fields, bound = parameter_fields(), bound_widgets()
    assert set(bound) <= set(fields), f"unknown parameters in the .ui: {set(bound) - set(fields)}"
    assert set(fields) - set(bound) == {"model"}, "model is filled by code; every other parameter has a widget"
    for name, widget in bound.items():
        kind, annotation = widget.get("class"), fields[name]
        if kind == "ctkSliderWidget":
            assert "float" in annotation and "WithinRange" in annotation, name  # the connector needs bounds
        elif kind == "QComboBox":
            assert "Choice" in annotation, name
        elif kind == "QCheckBox":
            assert annotation == "bool", name
        elif kind == "QSpinBox":
            assert annotation.startswith("Annotated[int") or annotation == "int", name
        elif kind == "QDoubleSpinBox":
            assert "float" in annotation, name
        elif kind == "qMRMLNodeComboBox":
            node_types = [s.text for p in widget.findall("property") if p.get("name") == "nodeTypes"
                          for s in p.iter("string")]
            assert annotation in node_types, (name, annotation, node_types)
        else:
            raise AssertionError(f"{name}: no parameter connector for {kind}")


def test_every_widget_the_code_uses_is_in_the_ui():
    used = {n.attr for n in ast.walk(parse(WIDGET)) if isinstance(n, ast.Attribute)
            and isinstance(n.value, ast.Attribute) and n.value.attr == "ui"
            and isinstance(n.value.value, ast.Name) and n.value.value.id == "self"}
    widgets = ui_widgets()
    assert used, "the reader found no self.ui.<widget>"
    assert used <= set(widgets), f"missing in the .ui: {used - set(widgets)}"
    for required in ("applyButton", "cancelButton", "progressBar", "statusLabel", "resultsTableWidget",
                     "show3DCheckBox", "importModelButton", "modelComboBox", "deviceComboBox",
                     "environmentCollapsibleButton", "environmentTextEdit", "checkEnvironmentButton", "roiSelector",
                     "firstSliceSpinBox", "lastSliceSpinBox", "liverThresholdSliderWidget",
                     "tumorThresholdSliderWidget", "minLesionSizeSpinBox", "outputSegmentationSelector"):
        assert required in widgets, required
    assert widgets["resultsTableWidget"].get("class") == "QTableWidget"
    assert widgets["progressBar"].get("class") == "QProgressBar"

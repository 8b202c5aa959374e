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
import json
import os
import signal
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
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

if str(MODULE_DIR) not in sys.path:  # as in Slicer: the module's folder is on sys.path
    sys.path.insert(0, str(MODULE_DIR))

from LiverTumorSegModuleLib import events, jobs, segments  # noqa: E402


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


# --------------------------------------------------------------------------------------------------
# Event parsing and ETA (pure)
# --------------------------------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


RECORDED = [
    '{"event": "stage", "stage": "loading model", "model": "/m/model.pt"}',
    '{"event": "stage", "case": "volume", "stage": "reading"}',
    '{"event": "stage", "case": "volume", "stage": "segmenting"}',
    '{"event": "progress", "case": "volume", "stage": "segmenting", "done": 4, "total": 40}',
    "/usr/lib/python3/site-packages/torch/nn/modules/conv.py:456: UserWarning: something",
    '{"event": "progress", "case": "volume", "stage": "segmenting", "done": 12, "total": 40}',
    '{"event": "progress", "case": "volume", "stage": "segmenting", "done": 40, "total": 40}',
    '{"event": "stage", "case": "volume", "stage": "writing"}',
    '{"event": "done", "case": "volume", "outputs": {"labels": "/o/volume.labels.nii.gz", '
    '"segmentation": "/o/volume.seg.nrrd", "report": "/o/volume.report.json"}}',
]


def test_event_log_follows_stages_slices_fraction_and_eta():
    clock = FakeClock()
    log = events.EventLog(clock)
    fractions, etas = [], []
    for line, dt in zip(RECORDED, [0, 1, 1, 2, 0, 2, 7, 0, 1]):
        clock.now += dt
        log.feed(line + "\n")
        fractions.append(log.progress.fraction)
        etas.append(log.progress.etaSeconds)
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert etas[3] is None  # the first batch carries the warm-up: no rate yet
    assert etas[5] == pytest.approx((40 - 12) / (8 / 2))  # 8 slices in 2 s after the first batch
    assert etas[6] == pytest.approx(0.0)
    assert etas[7] is None  # writing: no slice ETA
    assert log.progress.stage == "done" and log.progress.case == "volume"
    assert log.outputs == {"labels": "/o/volume.labels.nii.gz", "segmentation": "/o/volume.seg.nrrd",
                           "report": "/o/volume.report.json"}
    assert log.lines[4].startswith("/usr/lib") and len(log.lines) == len(RECORDED)
    assert log.errors == []


def test_progress_text():
    p = events.Progress(stage="segmenting", done=34, total=120, fraction=0.3, etaSeconds=12.4)
    assert p.text() == "Segmenting: 34 / 120 slices, about 12 s left"
    assert events.Progress(stage="segmenting", done=1, total=9).text() == "Segmenting: 1 / 9 slices"
    assert events.Progress(stage="loading model").text() == "Loading model..."
    assert events.formatDuration(150) == "about 2 min" and events.formatDuration(7200) == "about 2.0 h"


def test_lines_that_are_not_events_are_kept_but_not_parsed():
    for line in ("", "plain text", "{not json", '{"no": "event"}', "[1, 2]", '{"event": 3}'):
        assert events.parseEvent(line) is None
    assert events.parseEvent('  {"event": "stage", "stage": "reading"}  ') == {"event": "stage", "stage": "reading"}


def test_errors_come_from_error_events_and_error_lines():
    log = events.EventLog()
    log.feed('{"event": "error", "case": "volume", "message": "2 thresholds needed (one per label: Liver, Tumor), '
             'got 1"}')
    log.feed("livertumorseg: error: volume: 2 thresholds needed (one per label: Liver, Tumor), got 1")
    assert log.errors == ["2 thresholds needed (one per label: Liver, Tumor), got 1"]
    assert log.errorMessage(1) == "2 thresholds needed (one per label: Liver, Tumor), got 1"

    crash = events.EventLog()
    for line in ("Traceback (most recent call last):", '  File "x.py", line 1', "ModuleNotFoundError: No module "
                 "named 'torch'"):
        crash.feed(line)
    assert "PyTorch is not installed" in crash.errorMessage(1)
    assert "exit code 3" in events.EventLog().errorMessage(3)


def test_the_command_line():
    from LiverTumorSegLib.cli import build_parser
    from LiverTumorSegLib.options import SegmentOptions

    options = SegmentOptions(device="cuda", precision="fp32", batch_size=4, thresholds=(0.5, 0.25),
                             min_lesion_mm3=20, min_lesion_confidence=0.6, organ_margin_mm=2.5, keep_labels=("Liver",),
                             region=((1, 5), (0, 9), (2, 3)), use_localizer=False, allow_non_ct=True)
    argv = jobs.segmentCommand("/in/ct.nrrd", "/out", "/m/model.pt", options, python="/slicer/bin/PythonSlicer")
    assert argv[:12] == ["/slicer/bin/PythonSlicer", "-m", "LiverTumorSegLib", "segment", "/in/ct.nrrd", "-o",
                         "/out", "--model", "/m/model.pt", "--progress", "json", "--overwrite"]
    args = build_parser(with_plugins=False).parse_args(argv[3:])  # the core's own parser accepts exactly this
    assert SegmentOptions.from_args(args) == options  # and reads back every option
    assert jobs.segmentCommand("a", "b", "c")[0] == jobs.pythonExecutable()
    assert jobs.segmentCommand("a", "b", "c", SegmentOptions())[-1] == "--quiet"  # defaults add no flags


def test_python_executable_outside_slicer_is_this_python(monkeypatch):
    monkeypatch.setattr(jobs.shutil, "which", lambda name: None)
    assert jobs.pythonExecutable() == sys.executable
    monkeypatch.setattr(jobs.shutil, "which", lambda name: "/opt/Slicer/bin/PythonSlicer")
    assert jobs.pythonExecutable() == "/opt/Slicer/bin/PythonSlicer"


def test_child_environment_puts_the_core_first_once():
    env = jobs.childEnvironment({"PYTHONPATH": os.pathsep.join(["/a", "/core"]), "X": "1"}, ["/core"])
    assert env["PYTHONPATH"] == os.pathsep.join(["/core", "/a"])
    assert env["X"] == "1" and env["PYTHONUNBUFFERED"] == "1" and env["PYTHONIOENCODING"] == "utf-8"
    assert "PYTHONPATH" not in jobs.childEnvironment({}, [])


# --------------------------------------------------------------------------------------------------
# Geometry (pure)
# --------------------------------------------------------------------------------------------------


def oblique_image(size=(20, 30, 10), flip_axes=False) -> sitk.Image:
    image = sitk.Image(list(size), sitk.sitkInt16)
    image.SetSpacing((0.7, 0.9, 2.5))
    image.SetOrigin((-12.0, 30.5, 101.25))
    angle = np.deg2rad(10)
    direction = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    if flip_axes:  # index axis 1 runs along S: axial slices are along j
        direction = direction[:, [0, 2, 1]]
    image.SetDirection(direction.ravel().tolist())
    return image


def test_ijk_to_ras_round_trips_through_an_array_and_a_vtk_extent():
    image = oblique_image()
    matrix = segments.ijkToRasFromImage(image)
    ras = matrix @ np.array([3, 4, 5, 1.0])
    lps = image.TransformIndexToPhysicalPoint((3, 4, 5))
    np.testing.assert_allclose(ras[:3], [-lps[0], -lps[1], lps[2]], atol=1e-9)

    array = np.arange(20 * 30 * 10, dtype=np.int16).reshape(10, 30, 20)
    again = segments.imageFromArray(array, matrix)
    np.testing.assert_allclose(again.GetOrigin(), image.GetOrigin(), atol=1e-9)
    np.testing.assert_allclose(again.GetSpacing(), image.GetSpacing(), atol=1e-12)
    np.testing.assert_allclose(again.GetDirection(), image.GetDirection(), atol=1e-12)
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(again), array)

    # a VTK extent starting at (2, 3, 4): voxel 0 of the array is voxel (2, 3, 4) of the matrix
    shifted = segments.imageFromArray(array, matrix, (2, 3, 4))
    np.testing.assert_allclose(shifted.GetOrigin(), image.TransformIndexToPhysicalPoint((2, 3, 4)), atol=1e-9)


def test_slice_range_is_along_the_axis_closest_to_s():
    image = oblique_image()
    assert segments.sliceAxis(image) == 2
    assert segments.regionFromSliceRange(image, 2, 5) == ((0, 20), (0, 30), (2, 6))
    assert segments.regionFromSliceRange(image, 7, None) == ((0, 20), (0, 30), (7, 10))
    assert segments.regionFromSliceRange(image, 7, 99) == ((0, 20), (0, 30), (7, 10))
    flipped = oblique_image(flip_axes=True)
    assert segments.sliceAxis(flipped) == 1
    assert segments.regionFromSliceRange(flipped, 0, 9) == ((0, 20), (0, 10), (0, 10))
    for bad in ((10, None), (5, 4), (-1, 3)):
        with pytest.raises(ValueError, match="slice range"):
            segments.regionFromSliceRange(image, *bad)


def test_roi_corners_become_the_voxels_whose_centres_are_inside():
    image = oblique_image()
    matrix = segments.ijkToRasFromImage(image)
    # an ROI that is exactly the index box [2.0, 6.0] x [3.0, 10.0] x [1.0, 4.0] (voxel centres on its faces count)
    corners = segments.boxCorners((2, 6, 3, 10, 1, 4), matrix)
    assert len(corners) == 8
    assert segments.regionFromRasPoints(image, corners) == ((2, 7), (3, 11), (1, 5))
    # half a voxel more or less does not change which centres are inside
    assert segments.regionFromRasPoints(image, segments.boxCorners((1.6, 6.4, 2.6, 10.4, 0.6, 4.4), matrix)) == (
        (2, 7), (3, 11), (1, 5))
    # clipped to the image
    assert segments.regionFromRasPoints(image, segments.boxCorners((-5, 50, -5, 50, 8, 30), matrix)) == (
        (0, 20), (0, 30), (8, 10))
    with pytest.raises(ValueError, match="does not overlap"):
        segments.regionFromRasPoints(image, segments.boxCorners((30, 40, 3, 10, 1, 4), matrix))


def test_regions_intersect():
    a, b = ((0, 10), (0, 10), (2, 8)), ((3, 20), (0, 5), (0, 4))
    assert segments.intersectRegions(a, b) == ((3, 10), (0, 5), (2, 4))
    assert segments.intersectRegions(None, b) == b and segments.intersectRegions(a, None) == a
    with pytest.raises(ValueError, match="do not overlap"):
        segments.intersectRegions(a, ((0, 10), (0, 10), (8, 9)))


def test_label_masks():
    labels = sitk.GetImageFromArray(np.array([[[0, 1, 2, 2]]], np.uint8))
    from LiverTumorSegLib.labels import LabelSpec

    masks = segments.labelMasks(labels, [LabelSpec("Liver", 1, (1, 2, 3), ""), LabelSpec("Tumor", 2, (4, 5, 6), "")])
    np.testing.assert_array_equal(masks["Liver"], [[[0, 1, 0, 0]]])
    np.testing.assert_array_equal(masks["Tumor"], [[[0, 0, 1, 1]]])
    assert masks["Liver"].dtype == np.uint8


class OrientedImageShim:
    """What the effect uses of a ``vtkOrientedImageData`` (Slicer's class), over a plain ``vtkImageData``."""

    def __init__(self, image, matrix) -> None:
        self.image, self.matrix = image, matrix

    def GetExtent(self):
        return self.image.GetExtent()

    def GetPointData(self):
        return self.image.GetPointData()

    def GetImageToWorldMatrix(self, matrix) -> None:
        matrix.DeepCopy(self.matrix)


def test_the_effects_source_volume_becomes_an_image_and_masks_go_back_voxel_for_voxel(monkeypatch):
    """The effect reads ``sourceVolumeImageData()`` (a VTK extent that may not start at 0, i fastest) and writes
    masks on the same extent; the voxel order and geometry must survive both ways."""
    import types

    import vtk
    from vtk.util import numpy_support

    image = vtk.vtkImageData()
    image.SetExtent(2, 5, 3, 7, 1, 4)
    image.AllocateScalars(vtk.VTK_SHORT, 1)
    values = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())
    values[:] = np.arange(values.size) - 500
    ras = segments.ijkToRasFromImage(oblique_image())
    matrix = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            matrix.SetElement(r, c, ras[r, c])
    source = OrientedImageShim(image, matrix)

    sitk_image = segments.orientedImageToSitk(source)
    assert sitk_image.GetSize() == (4, 5, 4)
    array = sitk.GetArrayViewFromImage(sitk_image)
    for i, j, k in ((2, 3, 1), (5, 7, 4), (3, 6, 2)):
        assert array[k - 1, j - 3, i - 2] == image.GetScalarComponentAsDouble(i, j, k, 0)
    corner = ras @ np.array([2, 3, 1, 1.0])
    np.testing.assert_allclose(sitk_image.GetOrigin(), [-corner[0], -corner[1], corner[2]], atol=1e-9)

    class FakeOrientedImageData(vtk.vtkImageData):
        def SetImageToWorldMatrix(self, m) -> None:
            self.matrix = vtk.vtkMatrix4x4()
            self.matrix.DeepCopy(m)

    monkeypatch.setitem(sys.modules, "slicer", types.SimpleNamespace(vtkOrientedImageData=FakeOrientedImageData))
    mask = (array > 0).astype(np.uint8)
    back = segments.orientedImageFromMask(mask, source)
    assert back.GetExtent() == image.GetExtent()
    assert all(back.matrix.GetElement(r, c) == matrix.GetElement(r, c) for r in range(4) for c in range(4))
    for i, j, k in ((2, 3, 1), (5, 7, 4), (3, 6, 2), (4, 4, 3)):
        assert back.GetScalarComponentAsDouble(i, j, k, 0) == float(image.GetScalarComponentAsDouble(i, j, k, 0) > 0)
    with pytest.raises(ValueError, match="does not match"):
        segments.orientedImageFromMask(mask[:-1], source)


# --------------------------------------------------------------------------------------------------
# Real runs of the segment command through the runner
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> str:
    import torch

    from LiverTumorSegLib.labels import LIVER, TUMOR
    from LiverTumorSegLib.modelfile import ModelConfig, new_model, save_model

    torch.manual_seed(0)
    config = ModelConfig("rec_unet", {"in_channels": 3, "out_channels": 2, "base_width": 4}, (LIVER, TUMOR),
                         context_slices=1, name="tiny")
    return str(save_model(new_model(config), tmp_path_factory.mktemp("model") / "tiny.pt"))


@pytest.fixture(scope="module")
def phantom():
    from LiverTumorSegLib.phantom import make_phantom

    return make_phantom(shape_zyx=(16, 64, 64), spacing_zyx=(3.0, 2.0, 2.0), seed=1, lesion_diameters_mm=(14.0,))


def job_for(image, model, **options) -> jobs.SegmentationJob:
    from LiverTumorSegLib.options import SegmentOptions

    return jobs.SegmentationJob(image, model, SegmentOptions(device="cpu", **options))


def test_a_child_process_run_reports_progress_and_its_outputs(tiny_model, phantom):
    ct, _truth = phantom
    job = job_for(ct, tiny_model, batch_size=4)
    seen = []
    try:
        job.run(lambda p: seen.append((p.stage, p.done, p.total, p.fraction)), pythonPath=[str(MODULE_DIR)])
        folder = Path(job.folder())
        assert (folder / "output" / "volume.seg.nrrd").is_file()
    finally:
        job.cleanup()
    assert not folder.exists(), "cleanup removes the job's folder"
    # the callback sees the state at each poll; every event is in the log
    parsed = [events.parseEvent(line) for line in job.log.splitlines()]
    assert [e["done"] for e in parsed if e and e["event"] == "progress"] == [4, 8, 12, 16]
    assert any(s[0] == "segmenting" for s in seen)
    assert seen[-1] == ("done", 16, 16, 1.0), "progress reaches the total number of slices"
    assert [f for _, _, _, f in seen] == sorted(f for _, _, _, f in seen)
    assert job.labels.GetSize() == ct.GetSize()
    assert [(s.name, s.value) for s in job.specs] == [("Liver", 1), ("Tumor", 2)]
    assert "SCT^10200004^Liver" in job.specs[0].terminology and job.specs[0].color == (221, 130, 101)
    for key in ("organ_volume_ml", "lesion_count", "lesion_volume_ml", "lesion_burden_percent", "lesions"):
        assert key in job.report
    assert '"event": "done"' in job.log and job.log.startswith("$ ")


def test_in_process_and_child_process_agree(tiny_model, phantom):
    ct, _truth = phantom
    child = job_for(ct, tiny_model, region=((8, 56), (0, 64), (2, 14)), keep_labels=["Liver"])
    inproc = job_for(ct, tiny_model, region=((8, 56), (0, 64), (2, 14)), keep_labels=["Liver"])
    try:
        child.run(pythonPath=[str(MODULE_DIR)])
        stages = []
        inproc.run(lambda p: stages.append(p.stage), inProcess=True)
    finally:
        child.cleanup()
        inproc.cleanup()
    assert "segmenting" in stages and stages[-1] == "done"
    a, b = sitk.GetArrayFromImage(child.labels), sitk.GetArrayFromImage(inproc.labels)
    assert np.mean(a == b) > 0.999
    for arr in (a, b):
        assert not arr[:2].any() and not arr[14:].any() and not arr[:, :, :8].any() and not arr[:, :, 56:].any()
        assert set(np.unique(arr)) <= {0, 1}, "liver only: the tumour is counted as liver"
    assert [s.name for s in inproc.specs] == [s.name for s in child.specs]
    assert child.report["lesion_count"] == inproc.report["lesion_count"] == 0


def test_cancel_kills_the_run_quickly_and_leaves_no_outputs(tiny_model):
    from LiverTumorSegLib.phantom import make_phantom

    ct, _ = make_phantom(shape_zyx=(120, 128, 128), spacing_zyx=(2.0, 2.0, 2.0), seed=3)
    job = job_for(ct, tiny_model, batch_size=1)
    process = job.childProcess(pythonPath=[str(MODULE_DIR)]).start()
    try:
        deadline = time.monotonic() + 120
        while not (process.progress.stage == "segmenting" and process.progress.done >= 1):
            assert not process.poll(), f"finished before it could be cancelled:\n{process.log.text()}"
            assert time.monotonic() < deadline, process.log.text()
            time.sleep(0.02)
        assert process.progress.done < process.progress.total
        t0 = time.monotonic()
        process.cancel()
        while not process.poll():
            assert time.monotonic() - t0 < 10, "the process did not end after cancel"
            time.sleep(0.02)
        assert time.monotonic() - t0 < 5
        assert process.returncode != 0
        with pytest.raises(jobs.SegmentationCancelledError):
            process.result()
        if os.name != "nt":
            with pytest.raises(ProcessLookupError):
                os.killpg(process.pid, 0)  # the whole process group is gone
        output = Path(job.folder()) / "output"
        assert not output.exists() or not any(output.iterdir()), list(output.iterdir())
    finally:
        if process.returncode is None:
            process.cancel()
        job.cleanup()


def test_a_callback_returning_false_cancels(tiny_model, phantom):
    ct, _ = phantom
    job = job_for(ct, tiny_model)
    try:
        with pytest.raises(jobs.SegmentationCancelledError):
            job.run(lambda p: False, pythonPath=[str(MODULE_DIR)])
        with pytest.raises(jobs.SegmentationCancelledError):
            job.run(lambda p: p.stage != "segmenting", inProcess=True)
    finally:
        job.cleanup()


def test_errors_come_back_with_the_log(tiny_model, phantom, tmp_path):
    ct, _ = phantom
    flat = job_for(sitk.Image([32, 32], sitk.sitkInt16), tiny_model)  # a 2-D image
    wrong = job_for(ct, tiny_model, thresholds=(0.5,))  # one threshold for two labels
    missing = job_for(ct, str(tmp_path / "no-model.pt"))
    try:
        for job, expected in ((flat, "3-D"), (wrong, "2 thresholds needed"), (missing, "model file not found")):
            with pytest.raises(jobs.SegmentationRunError) as caught:
                job.run(pythonPath=[str(MODULE_DIR)])
            assert expected in str(caught.value), caught.value.log
            assert "\n" not in str(caught.value)
            assert caught.value.returncode != 0
            assert caught.value.log.startswith("$ ") and "livertumorseg: error:" in caught.value.log
            assert job.log == caught.value.log
    finally:
        for job in (flat, wrong, missing):
            job.cleanup()


def test_a_python_that_cannot_start_is_a_clear_error(tmp_path, phantom, tiny_model):
    ct, _ = phantom
    job = job_for(ct, tiny_model)
    try:
        with pytest.raises(jobs.SegmentationRunError, match="cannot start"):
            job.run(python=str(tmp_path / "no-python"))
    finally:
        job.cleanup()


def test_the_info_command_the_environment_panel_runs(tmp_path):
    """The module's environment panel parses ``info --json`` from the child process."""
    argv = [sys.executable, "-m", "LiverTumorSegLib", "info", "--json"]
    process = jobs.SegmentationProcess(argv, env=jobs.childEnvironment(pythonPath=[str(MODULE_DIR)])).start()
    deadline = time.monotonic() + 120
    while not process.poll():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert process.returncode == 0, process.log.text()
    lines = process.log.lines[1:]
    info = json.loads("\n".join(lines[next(i for i, line in enumerate(lines) if line.startswith("{")):]))
    assert {"torch", "torch_build", "cuda_available", "gpus"} <= set(info)


@pytest.mark.skipif(os.name == "nt", reason="POSIX process groups")
def test_cancel_also_kills_what_the_launcher_started(tmp_path):
    """PythonSlicer is a launcher that starts the real Python: cancelling must end the grandchild too."""
    script = tmp_path / "launcher.py"
    script.write_text("import subprocess, sys, time\n"
                      "child = subprocess.Popen([sys.executable, '-c', 'import time; print(\"child\", flush=True); "
                      "time.sleep(60)'])\n"
                      "print('pid', child.pid, flush=True)\n"
                      "child.wait()\n", encoding="utf-8")
    process = jobs.SegmentationProcess([sys.executable, str(script)]).start()
    deadline = time.monotonic() + 30
    while not any(line.startswith("pid ") for line in process.log.lines):
        process.poll()
        assert time.monotonic() < deadline
        time.sleep(0.02)
    grandchild = int(next(line for line in process.log.lines if line.startswith("pid ")).split()[1])
    process.cancel()
    while not process.poll():
        assert time.monotonic() < deadline
        time.sleep(0.02)
    for _ in range(250):
        if not alive(grandchild):
            break
        time.sleep(0.02)
    else:
        os.kill(grandchild, signal.SIGKILL)
        raise AssertionError("the launcher's child survived the cancel")


def alive(pid: int) -> bool:
    """Running (a killed process whose parent is gone may linger as a zombie until init reaps it)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state not in ("Z", "X")

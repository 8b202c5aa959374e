"""Every Slicer API the glue calls exists in Slicer 5.10, and the check really catches one that does not.

The checker lives in ``Testing/slicer_api.py`` (also a command: ``python Testing/slicer_api.py [--regenerate]``);
the APIs it accepts are ``Testing/data/slicer_api_5_10.txt``, a verbatim extract of Slicer's API surface list.
"""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

import pytest

import slicer_api
from slicer_api import ROOT, SHARED_API, check, cmake_uses, glue_files, problems, project_api, slicer_api_uses

MODULE = ROOT / "LiverTumorSeg" / "LiverTumorSeg.py"
EFFECT = ROOT / "LiverTumorSeg" / "SegmentEditorLiverTumorAILib" / "SegmentEditorEffect.py"
TRAIN_MODULE = ROOT / "LiverTumorSegTrain" / "LiverTumorSegTrain.py"


@pytest.fixture(scope="module")
def api() -> slicer_api.Api:
    return project_api()


def full_api() -> slicer_api.Api | None:
    """The whole surface list plus the PyTorch extension (what a correct use not listed yet resolves against), or
    None without ../shared: tests then check only what the committed list allows."""
    if not SHARED_API.is_file():
        return None
    full = slicer_api.load_api(SHARED_API.read_text(encoding="utf-8").splitlines())
    full.update({k: v for k, v in project_api().items() if k.startswith("PyTorchUtils.")})
    return full


@pytest.mark.parametrize("path", glue_files() + slicer_api.cmake_files(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_glue_calls_only_slicer_5_10_apis(path, api):
    uses = cmake_uses(path.read_text(encoding="utf-8")) if path.name == "CMakeLists.txt" \
        else slicer_api_uses(path.read_text(encoding="utf-8"))
    assert problems(uses, api) == []


def test_the_whole_check_passes_on_the_current_glue():
    assert glue_files(), "no glue file found: the patterns in slicer_api.GLUE_PATTERNS are wrong"
    assert check() == []


def test_the_api_list_is_what_regenerating_produces():
    """``Testing/data/slicer_api_5_10.txt`` is regenerated, not edited: after changing glue code, run
    ``python Testing/slicer_api.py --regenerate`` (this fails until then, also when a call was removed)."""
    if not SHARED_API.is_file():
        pytest.skip(f"{SHARED_API} is not beside this clone")
    assert slicer_api.API_FILE.read_text(encoding="utf-8") == slicer_api.regenerate()
    shared = set(SHARED_API.read_text(encoding="utf-8").splitlines())
    entries = [ln for ln in slicer_api.API_FILE.read_text(encoding="utf-8").splitlines() if not ln.startswith("#")]
    assert entries and all(ln in shared for ln in entries)  # verbatim


PLANTED = '''

def plantedByTheTest(segmentationNode: "vtkMRMLSegmentationNode", args):
    import PyTorchUtils
    slicer.util.doesNotExist()
    slicer.util.launchConsoleProcess(args, blocking=False)
    slicer.packaging.pip_ensure(["numpy"])
    segmentationNode.GetSegmentIdBySegmentName("Liver")
    slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode").NoSuchNodeMethod()
    PyTorchUtils.PyTorchUtilsLogic().installTorch(blocking=True)
'''


def test_a_planted_call_to_a_missing_or_newer_api_makes_the_check_fail(tmp_path):
    """A temporary copy of the glue with calls Slicer 5.10 does not have: the same check that passes on the real
    files flags each planted line, and against the whole surface list it says why."""
    for path in glue_files() + slicer_api.cmake_files():
        copy = tmp_path / path.relative_to(ROOT)
        copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, copy)
    assert check(tmp_path) == []
    victim = tmp_path / (MODULE if MODULE.is_file() else TRAIN_MODULE).relative_to(ROOT)
    original = victim.read_text(encoding="utf-8")
    victim.write_text(original + PLANTED, encoding="utf-8")
    first = len(original.splitlines()) + PLANTED.count("\n", 0, PLANTED.index("slicer.util.doesNotExist"))
    found = check(tmp_path)
    assert all(line.startswith(victim.relative_to(tmp_path).as_posix() + ": line ") for line in found)
    assert {int(line.split(": line ")[1].split(":")[0]) for line in found} == set(range(first + 1, first + 7))
    full = full_api()
    if full is None:
        return  # the reasons below need the whole surface list
    why = "\n".join(check(tmp_path, api=full))
    for expected in ("slicer.util.doesNotExist is not in the Slicer API list",
                     "slicer.util.launchConsoleProcess takes no keyword blocking in Slicer 5.10",
                     "slicer.packaging.pip_ensure is not in Slicer 5.10 (since 5.12.3)",
                     "vtkMRMLSegmentationNode.GetSegmentIdBySegmentName is not in the Slicer API list",
                     "vtkMRMLLabelMapVolumeNode.NoSuchNodeMethod is not in the Slicer API list",
                     "PyTorchUtils.PyTorchUtilsLogic.installTorch takes no keyword blocking"):
        assert expected in why


def test_a_planted_effect_call_makes_the_check_fail():
    effect = EFFECT.read_text(encoding="utf-8") if EFFECT.is_file() else EFFECT_LIKE
    planted = effect + textwrap.dedent('''

        class PlantedEffect(AbstractScriptedSegmentEditorEffect):
            def onApply(self):
                self.scriptedEffect.sourceVolumeNode()
                self.scriptedEffect.parameterSetNode().GetSegmentationNode().GetSegmentation().NoSuchCall()
                self.noSuchInheritedMethod()
        ''')
    if "AbstractScriptedSegmentEditorEffect" not in {u.name for u in slicer_api_uses(effect)}:
        planted = "from SegmentEditorEffects import *\n" + planted
    full = full_api()
    found = "\n".join(problems(slicer_api_uses(planted), full or project_api()))
    for expected in ("scriptedEffect.sourceVolumeNode is not in the Slicer API list",
                     "vtkSegmentation.NoSuchCall is not in the Slicer API list",
                     "AbstractScriptedSegmentEditorEffect.noSuchInheritedMethod is not in the Slicer API list"):
        assert expected in found
    if full is not None:
        assert len(found.splitlines()) == 3  # and nothing else: the effect itself is fine


def test_the_check_refuses_missing_new_removed_private_and_misused_apis(api):
    api = dict(api)
    api["slicer.util.onlyInNewSlicer"] = ("function", "since 5.12.3", "(a)")
    api["slicer.util.goneAfter58"] = ("function", "5.6.2+; REMOVED after 5.8.1", "()")
    api["slicer.util._private"] = ("function(private)", "5.6.2+", "()")
    bad = '''
import slicer
from slicer import vtkMRMLSegmentationNode
from slicer.ScriptedLoadableModule import ScriptedLoadableModuleWidget

def f(segmentationNode: vtkMRMLSegmentationNode):
    slicer.util.pip_ensure(["x"])
    slicer.util.onlyInNewSlicer(1)
    slicer.util.goneAfter58()
    slicer.util._private()
    slicer.util.tryWithErrorDisplay("m", blocking=False)
    node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
    node.NoSuchMethod()
    segmentationNode.GetSegmentation().GetSegment("id").NoSuchEither()
    slicer.modules.segmentations.logic().ExportEverything()
    for n in slicer.util.getNodesByClass("vtkMRMLSegmentationNode"):
        n.GetSegmentIdBySegmentName("Liver")

class W(ScriptedLoadableModuleWidget):
    def setup(self):
        self.removeObservers()  # not an API of ScriptedLoadableModuleWidget (only of VTKObservationMixin)
'''
    found = "\n".join(problems(slicer_api_uses(bad), api))
    for name in ("slicer.util.pip_ensure", "slicer.util.onlyInNewSlicer", "slicer.util.goneAfter58",
                 "slicer.util._private is private", "takes no keyword blocking",
                 "vtkMRMLLabelMapVolumeNode.NoSuchMethod", "vtkSegment.NoSuchEither",
                 "vtkSlicerSegmentationsModuleLogic.ExportEverything",
                 "vtkMRMLSegmentationNode.GetSegmentIdBySegmentName", "ScriptedLoadableModuleWidget.removeObservers"):
        assert name in found
    assert len(found.splitlines()) == 10


#: What an effect written after Slicer's ScriptedSegmentEditorEffect template looks like, with the calls our
#: effect and module need; the reader must see each of them (a reader that sees nothing passes every file).
EFFECT_LIKE = '''
import os
import qt
import slicer
import vtk
from SegmentEditorEffects import *
from slicer.parameterNodeWrapper import parameterNodeWrapper
from slicer import vtkMRMLScalarVolumeNode
from slicer.ScriptedLoadableModule import ScriptedLoadableModule, ScriptedLoadableModuleLogic


class SegmentEditorEffect(AbstractScriptedSegmentEditorEffect):
    def __init__(self, scriptedEffect):
        scriptedEffect.name = "Liver Tumor AI"
        scriptedEffect.perSegment = False
        AbstractScriptedSegmentEditorEffect.__init__(self, scriptedEffect)

    def clone(self):
        import qSlicerSegmentationsEditorEffectsPythonQt as effects
        clonedEffect = effects.qSlicerSegmentEditorScriptedEffect(None)
        clonedEffect.setPythonSource(__file__.replace("\\\\", "/"))
        return clonedEffect

    def onApply(self):
        self.scriptedEffect.saveStateForUndo()
        parameterSetNode = self.scriptedEffect.parameterSetNode()
        segmentation = parameterSetNode.GetSegmentationNode().GetSegmentation()
        segmentation.GetSegmentIdBySegmentName("Liver")
        volume = parameterSetNode.GetSourceVolumeNode()
        volume.GetSpacing()
        source = self.scriptedEffect.sourceVolumeImageData()
        source.GetExtent()
        self.scriptedEffect.modifySegmentByLabelmap(parameterSetNode.GetSegmentationNode(), "Liver", source,
                                                    slicer.qSlicerSegmentEditorAbstractEffect.ModificationModeSet)
        slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(None, None)


@parameterNodeWrapper
class ParameterNode:
    inputVolume: vtkMRMLScalarVolumeNode


class Logic(ScriptedLoadableModuleLogic):
    def getParameterNode(self):
        return ParameterNode(super().getParameterNode())

    def ensureTorch(self):
        import PyTorchUtils
        torchLogic = PyTorchUtils.PyTorchUtilsLogic()
        if not torchLogic.torchInstalled():
            torchLogic.installTorch(askConfirmation=True, torchVersionRequirement=">=2.1")
        import sitkUtils
        image = sitkUtils.PullVolumeFromSlicer(self.getParameterNode().inputVolume)
        node = sitkUtils.PushVolumeToSlicer(image, name="x", className="vtkMRMLLabelMapVolumeNode")
        node.GetImageData()
        folder = slicer.modules.livertumorseg.path
        slicer.modules.livertumorseg.widgetRepresentation()
        slicer.modules.terminologies.logic().LoadTerminologyFromFile(folder)
        if slicer.app.commandOptions().testingEnabled:
            slicer.util.pip_install("slicerio")


class Module(ScriptedLoadableModule):
    def registerEffect(self):
        import qSlicerSegmentationsEditorEffectsPythonQt
        instance = qSlicerSegmentationsEditorEffectsPythonQt.qSlicerSegmentEditorScriptedEffect(None)
        instance.setPythonSource("x.py")
        instance.self().register()
'''


def test_the_reader_sees_effect_module_and_pytorch_calls():
    used = {u.name for u in slicer_api_uses(EFFECT_LIKE)}
    assert {
        "scriptedEffect.name", "scriptedEffect.perSegment", "AbstractScriptedSegmentEditorEffect.__init__",
        "qSlicerSegmentEditorScriptedEffect.setPythonSource", "scriptedEffect.saveStateForUndo",
        "scriptedEffect.parameterSetNode", "vtkMRMLSegmentEditorNode.GetSegmentationNode",
        "vtkMRMLSegmentationNode.GetSegmentation", "vtkSegmentation.GetSegmentIdBySegmentName",
        "vtkMRMLSegmentEditorNode.GetSourceVolumeNode", "vtkMRMLScalarVolumeNode.GetSpacing",
        "scriptedEffect.sourceVolumeImageData", "vtkOrientedImageData.GetExtent",
        "scriptedEffect.modifySegmentByLabelmap", "qSlicerSegmentEditorAbstractEffect.ModificationModeSet",
        "vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode",
        "ScriptedLoadableModuleLogic.getParameterNode", "PyTorchUtils.PyTorchUtilsLogic",
        "PyTorchUtils.PyTorchUtilsLogic.torchInstalled", "PyTorchUtils.PyTorchUtilsLogic.installTorch",
        "sitkUtils.PullVolumeFromSlicer", "sitkUtils.PushVolumeToSlicer", "vtkMRMLLabelMapVolumeNode.GetImageData",
        "qSlicerAbstractModule.path | qSlicerAbstractCoreModule.path",
        "qSlicerAbstractModule.widgetRepresentation | qSlicerAbstractCoreModule.widgetRepresentation",
        "vtkSlicerTerminologiesModuleLogic.LoadTerminologyFromFile",
        "slicer.app.commandOptions", "slicer.app.commandOptions().testingEnabled", "slicer.util.pip_install",
        "qSlicerSegmentEditorScriptedEffect.self", "AbstractScriptedSegmentEditorEffect.register",
    } <= used
    if full_api() is not None:
        assert problems(slicer_api_uses(EFFECT_LIKE), full_api()) == []


def test_cmake_files_use_slicer_5_10_macros_and_metadata():
    uses = {u.name for path in slicer_api.cmake_files() for u in cmake_uses(path.read_text(encoding="utf-8"))}
    assert {"cmake.EXTENSION_HOMEPAGE", "cmake.EXTENSION_DEPENDS", "cmake.slicerMacroBuildScriptedModule",
            "cmake.SlicerMacroBuildScriptedModule.WITH_GENERIC_TESTS", "cmake.slicer_add_python_unittest",
            "cmake.SlicerMacroPythonTesting.SCRIPT"} <= uses
    newer = cmake_uses('set(EXTENSION_TIER 3)\nslicerMacroBuildScriptedModule(NAME X NO_SUCH_OPTION)\n')
    found = "\n".join(problems(newer, project_api() | slicer_api.load_api(
        ["cmake.EXTENSION_TIER\tCMake/SlicerExtensionCPack.cmake\tcmake-extension-metadata-variable\tsince 5.12.3\t"])))
    assert "cmake.EXTENSION_TIER is not in Slicer 5.10" in found
    assert "cmake.SlicerMacroBuildScriptedModule.NO_SUCH_OPTION is not in the Slicer API list" in found


def test_glue_files_are_found_where_they_are():
    names = {p.relative_to(ROOT).as_posix() for p in glue_files()}
    assert {"LiverTumorSegTrain/LiverTumorSegTrain.py", "LiverTumorSegTrain/Scripts/train.py"} <= names
    for optional in (MODULE, EFFECT):
        assert (optional.relative_to(ROOT).as_posix() in names) == optional.is_file()
    assert all(Path(ROOT / n).read_text(encoding="utf-8") for n in names)

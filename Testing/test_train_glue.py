"""The Slicer glue of the training module, checked without Slicer.

Slicer cannot run in CI, so the glue is held to two things that can be checked here:
every Slicer API it calls exists in Slicer 5.10 (our minimum), checked for every glue file by
``Testing/test_slicer_api.py`` with the shared checker ``Testing/slicer_api.py`` (here: that the
checker sees the training module's calls), and ``train.py`` behaves as a command: exit status 0/2/1,
never a hang, and ``slicer.util.exit`` when it runs inside the Slicer application.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from slicer_api import ROOT, imported_at_import_time, slicer_api_uses

MODULE = ROOT / "LiverTumorSegTrain" / "LiverTumorSegTrain.py"
TRAIN = ROOT / "LiverTumorSegTrain" / "Scripts" / "train.py"


def test_the_reader_sees_the_calls_that_matter():
    """Guards the check itself: a reader that found nothing would pass every file."""
    selftest = MODULE.parent / "LiverTumorSegTrainModuleLib" / "selftest.py"
    used = {u.name for path in (MODULE, selftest) for u in slicer_api_uses(path.read_text(encoding="utf-8"))}
    assert {
        "vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode",
        "sitkUtils.PullVolumeFromSlicer",
        "sitkUtils.PushVolumeToSlicer",
        "slicer.mrmlScene.AddNewNodeByClass",
        "slicer.mrmlScene.RemoveNode",
        "slicer.util.tryWithErrorDisplay",
        "slicer.util.getNodesByClass",
        "slicer.app.launcherExecutableFilePath",
        "vtkMRMLSegmentationNode.GetReferenceImageGeometryReferenceRole",
        "vtkMRMLSegmentationNode.GetNodeReference",
        "vtkMRMLSegmentationNode.GetSegmentation",
        "vtkMRMLScalarVolumeNode.GetImageData",
        "vtkSegmentation.GetNthSegmentID",
        "vtkSegment.GetTerminology",
        "ScriptedLoadableModuleLogic.getParameterNode",
        "ScriptedLoadableModuleTest.delayDisplay",
    } <= used
    assert "slicer.util.exit" in {u.name for u in slicer_api_uses(TRAIN.read_text(encoding="utf-8"))}


def test_heavy_imports_only_inside_functions():
    """Slicer imports module files at startup: torch and the cores must load only when used."""
    heavy = {"torch", "LiverTumorSegTrainLib", "LiverTumorSegLib"}
    assert not heavy & imported_at_import_time(MODULE)
    assert not (heavy | {"slicer", "numpy", "SimpleITK"}) & imported_at_import_time(TRAIN)
    assert "slicer" in imported_at_import_time(MODULE)  # the reader works: the module does import slicer


# --------------------------------------------------------------------------------------------------
# train.py as a command
# --------------------------------------------------------------------------------------------------


def run_train(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([sys.executable, str(TRAIN), *args], capture_output=True, text=True, cwd=tmp_path,
                          env=env, timeout=300)


def test_train_script_help_exits_0(tmp_path):
    out = run_train(["--help"], tmp_path)
    assert out.returncode == 0, out.stderr
    assert "usage: livertumorseg train" in out.stdout and "--output" in out.stdout


def test_train_script_bad_argument_exits_1_with_one_line_without_hanging(tmp_path):
    out = run_train(["--no-such-option", "-o", str(tmp_path / "run")], tmp_path)
    assert out.returncode == 1
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "unrecognized arguments: --no-such-option" in lines[0] and "--help" in lines[0]


def test_train_script_trains_on_an_exported_folder(tmp_path):
    """What the module's headless command does after "Export scene for training": DATA -o DATA-run (+ options)."""
    from LiverTumorSegLib.modelfile import load_model
    from LiverTumorSegLib.phantom import make_phantom
    from LiverTumorSegTrainLib.export import export_dataset

    items = ((f"Phantom_CT_{i}", *make_phantom(shape_zyx=(16, 48, 48), spacing_zyx=(3.0, 2.0, 2.0), seed=i,
                                                lesion_diameters_mm=(12.0,))) for i in range(2))
    data = export_dataset(items, tmp_path / "data", layout="lits")
    tiny = ["--preset", "demo", "--epochs", "1", "--steps-per-epoch", "1", "--folds", "0", "--batch-size", "2",
            "--crop", "32", "--width", "4", "--device", "cpu", "--quiet", "--cache-dir", str(tmp_path / "cache")]
    out = run_train([str(data), "-o", f"{data}-run", *tiny], tmp_path)
    assert out.returncode == 0, out.stderr
    model = load_model(Path(f"{data}-run") / "model.pt")
    assert [label.name for label in model.config.labels] == ["Liver", "Tumor"]


def test_inside_slicer_the_script_ends_with_slicer_util_exit(tmp_path):
    """Run as ``Slicer --python-script`` runs it (source exec'd in ``__main__`` with ``__file__`` set, ``slicer``
    already imported and having ``app``): the status goes to ``slicer.util.exit``, on every path."""
    fake = tmp_path / "fake" / "slicer"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text(
        "import sys\napp = object()\n"
        "class util:\n"
        "    @staticmethod\n"
        "    def exit(status):\n"
        "        print(f'slicer.util.exit({status})', file=sys.stderr)\n", encoding="utf-8")
    like_slicer = ("import sys, slicer; script = sys.argv[1]; sys.argv = sys.argv[1:]; "
                   "exec(open(script).read(), {'__name__': '__main__', '__file__': script})")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(fake.parent)
    for args, status in ((["--help"], 0), (["--", "--bad"], 1), (["--", str(tmp_path / "missing"), "-o", "r"], 1)):
        out = subprocess.run([sys.executable, "-c", like_slicer, str(TRAIN), *args], capture_output=True, text=True,
                             cwd=tmp_path, env=env, timeout=300)
        assert out.returncode == 0, out.stderr  # the fake exit returns; the real one ends Slicer's event loop
        assert out.stderr.strip().splitlines()[-1] == f"slicer.util.exit({status})"


@pytest.fixture()
def train_script():
    spec = importlib.util.spec_from_file_location("livertumorseg_train_script", TRAIN)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # __name__ is not "__main__": defines functions, runs nothing
    return module


def test_script_arguments_drop_the_script_path_and_a_leading_double_dash(train_script):
    script = str(TRAIN)
    assert train_script.training_arguments(["--", "DATA", "-o", "RUN"], script) == ["DATA", "-o", "RUN"]
    assert train_script.training_arguments([script, "--", "--help"], script) == ["--help"]
    assert train_script.training_arguments(["DATA", "--", "x"], script) == ["DATA", "--", "x"]
    assert train_script.training_arguments([], script) == []


def test_core_folders_go_on_sys_path(train_script, monkeypatch):
    cores = {ROOT / "LiverTumorSegTrain", ROOT / "LiverTumorSeg"}
    monkeypatch.setattr(sys, "path", [p for p in sys.path if Path(p or ".").resolve() not in cores])
    train_script._add_core_paths(str(TRAIN))
    assert {str(c) for c in cores} <= set(sys.path)


def test_an_unexpected_error_is_one_line_plus_traceback_and_status_1(train_script, monkeypatch, capsys):
    import LiverTumorSegTrainLib.commands as commands

    def broken(argv):
        raise RuntimeError("disk\nfull")

    monkeypatch.setattr(commands, "train_main", broken)
    assert train_script.run(["DATA", "-o", "RUN"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err
    assert err.strip().splitlines()[-1] == "livertumorseg train: error: RuntimeError: disk full"

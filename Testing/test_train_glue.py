"""The Slicer glue of the training module, checked without Slicer.

Slicer cannot run in CI, so the glue is held to two things that can be checked here:
every Slicer API it calls exists in Slicer 5.10 (our minimum), read from the code with ``ast``
and looked up in ``Testing/data/slicer_api_5_10_train.txt`` (a subset of the API surface list), and
``train.py`` behaves as a command: exit status 0/2/1, never a hang, and ``slicer.util.exit`` when
it runs inside the Slicer application.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import re
import subprocess
import sys
import unittest
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODULE = ROOT / "LiverTumorSegTrain" / "LiverTumorSegTrain.py"
TRAIN = ROOT / "LiverTumorSegTrain" / "Scripts" / "train.py"
API_FILE = ROOT / "Testing" / "data" / "slicer_api_5_10_train.txt"
SHARED_API = ROOT.parent / "shared" / "slicer" / "slicer_api_surface.txt"
MIN_VERSION = (5, 10, 0)

# --------------------------------------------------------------------------------------------------
# The API list
# --------------------------------------------------------------------------------------------------


def load_api(lines) -> dict[str, tuple[str, str, str]]:
    """name -> (kind, availability, python signature) from lines of the API surface format."""
    api = {}
    for line in lines:
        if not line.strip() or line.startswith("#"):
            continue
        fields = line.rstrip("\n").split("\t")
        fields += [""] * (5 - len(fields))
        api[fields[0]] = (fields[2], fields[3], fields[4])
    return api


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split("."))


def available_in_min_version(availability: str) -> bool:
    """'5.6.2+' or 'since X' with X <= 5.10.0; anything REMOVED (or only on main) is refused."""
    if "REMOVED" in availability:
        return False
    first = availability.split(";")[0].strip()
    if first == "5.6.2+":
        return True
    m = re.fullmatch(r"since (\d+\.\d+\.\d+)", first)
    return bool(m) and _version(m.group(1)) <= MIN_VERSION


def parameters_in_min_version(availability: str, signature: str) -> list[str] | None:
    """Parameter names of a Python API as of 5.10 (older signatures are listed where they changed)."""
    versions = re.findall(r"(\d+\.\d+\.\d+)\(([^)]*)\)", availability.split("signature changed:", 1)[-1]) \
        if "signature changed:" in availability else []
    older = [(v, s) for v, s in versions if _version(v) <= MIN_VERSION]
    if older:
        signature = "(" + max(older, key=lambda vs: _version(vs[0]))[1] + ")"
    if not signature.startswith("("):
        return None  # C++/Qt entries have no Python signature
    return [p.strip() for p in signature.strip("()").split(",") if p.strip()]


# --------------------------------------------------------------------------------------------------
# Reading the glue: which Slicer APIs does it use?
# --------------------------------------------------------------------------------------------------

#: Slicer objects that are namespaces, not APIs themselves.
NAMESPACES = {"slicer", "slicer.util", "slicer.app", "slicer.mrmlScene", "slicer.modules", "sitkUtils"}
#: Module logics reached through slicer.modules.<name>.logic(), as the C++ classes the API list names.
MODULE_LOGICS = {"segmentations": "vtkSlicerSegmentationsModuleLogic"}
#: Return types of the calls whose results the glue calls methods on.
RETURNS = {
    "slicer.mrmlScene.GetNthNode": "vtkMRMLNode",
    "slicer.mrmlScene.GetNodeByID": "vtkMRMLNode",
    "vtkMRMLSegmentationNode.GetSegmentation": "vtkSegmentation",
    "vtkSegmentation.GetSegment": "vtkSegment",
    "vtkSegmentation.GetNthSegment": "vtkSegment",
}

def _canonical(qualified: str) -> str:
    """'slicer.vtkMRMLScene.X' -> 'vtkMRMLScene.X'; 'slicer.ScriptedLoadableModule.Y.z' -> 'Y.z'."""
    if qualified.startswith("slicer.ScriptedLoadableModule."):
        return qualified[len("slicer.ScriptedLoadableModule."):]
    if qualified.startswith(("slicer.vtk", "slicer.qSlicer", "slicer.qMRML")):
        return qualified[len("slicer."):]
    return qualified


class Use:
    def __init__(self, name: str, line: int, keywords: tuple[str, ...] = (), kind: str = "api"):
        self.name, self.line, self.keywords, self.kind = name, line, keywords, kind

    def __repr__(self) -> str:
        return f"{self.name} (line {self.line})"


class GlueReader(ast.NodeVisitor):
    """Collects the Slicer APIs a file uses: ``slicer.``/``sitkUtils.`` chains, methods called on MRML
    nodes and segmentations whose class is known (annotations, ``AddNewNodeByClass``, ``getNodesByClass``,
    ``PushVolumeToSlicer``, known return types), and methods inherited from Slicer base classes."""

    def __init__(self, tree: ast.Module):
        self.uses: list[Use] = []
        self.imports: dict[str, str] = {}  # local name -> qualified Slicer name
        self.classes: dict[str, tuple[list[str], set[str], dict[str, str]]] = {}  # bases, methods, self attr types
        self.env: dict[str, str] = {}
        self.current_class: str | None = None
        self._collect_classes(tree)

    # -- what names mean -------------------------------------------------------------------------

    def _collect_classes(self, tree: ast.Module) -> None:
        for node in tree.body:
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "slicer":
                for alias in node.names:
                    if alias.name != "*":
                        self.imports[alias.asname or alias.name] = f"{node.module}.{alias.name}"
                        self.uses.append(Use(_canonical(f"{node.module}.{alias.name}"), node.lineno, kind="import"))
        for node in tree.body:
            if isinstance(node, ast.ClassDef):
                bases = [self._qualified(b) for b in node.bases]
                methods = {n.name for n in node.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
                self.classes[node.name] = ([_canonical(b) for b in bases if b], methods, {})
        for node in tree.body:  # self.<attr> = LocalClass() gives the attribute a type
            if isinstance(node, ast.ClassDef):
                for sub in ast.walk(node):
                    if isinstance(sub, ast.Assign) and len(sub.targets) == 1 and isinstance(sub.value, ast.Call):
                        target, func = sub.targets[0], sub.value.func
                        is_self_attribute = isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name) \
                            and target.value.id == "self"
                        if is_self_attribute and isinstance(func, ast.Name) and func.id in self.classes:
                            self.classes[node.name][2][target.attr] = func.id

    def _qualified(self, node: ast.AST) -> str | None:
        """Dotted Slicer name or class of an expression, or None when it is not a Slicer object we know."""
        if isinstance(node, ast.Name):
            if node.id in self.env:
                return self.env[node.id]
            if node.id in self.imports:
                return self.imports[node.id]
            if node.id in ("slicer", "sitkUtils"):
                return node.id
            return None
        if isinstance(node, ast.Attribute):
            if isinstance(node.value, ast.Name) and node.value.id == "self" and self.current_class:
                local = self.classes[self.current_class][2].get(node.attr)
                return f"local:{local}" if local else None
            base = self._qualified(node.value)
            return f"{base}.{node.attr}" if base and not base.startswith("local:") else None
        if isinstance(node, ast.Call):
            return self._returns(node)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and re.fullmatch(r"vtk\w+", node.value):
            return node.value  # string annotation
        return None

    def _returns(self, call: ast.Call) -> str | None:
        func = self._qualified(call.func)
        if func is None:
            if isinstance(call.func, ast.Name) and call.func.id in self.classes:
                return f"local:{call.func.id}"
            return None
        func = _canonical(func)
        first = call.args[0].value if call.args and isinstance(call.args[0], ast.Constant) else None
        m = re.fullmatch(r"slicer\.modules\.(\w+)\.logic", func)
        if m:
            return MODULE_LOGICS.get(m.group(1))
        if func in ("slicer.mrmlScene.AddNewNodeByClass", "slicer.util.getNodesByClass") and isinstance(first, str):
            return first
        if func == "sitkUtils.PushVolumeToSlicer":
            kw = {k.arg: k.value for k in call.keywords}
            cls = kw.get("className") or (call.args[3] if len(call.args) > 3 else None)
            return cls.value if isinstance(cls, ast.Constant) else "vtkMRMLScalarVolumeNode"
        return RETURNS.get(func)

    def _type_of_annotation(self, annotation: ast.AST | None) -> str | None:
        if annotation is None:
            return None
        q = self._qualified(annotation)
        q = _canonical(q) if q else None
        return q if q and re.fullmatch(r"vtk\w+", q) else None

    # -- scopes ------------------------------------------------------------------------------------

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        outer, self.current_class = self.current_class, node.name
        self.generic_visit(node)
        self.current_class = outer

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        outer = dict(self.env)
        args = node.args.posonlyargs + node.args.args + node.args.kwonlyargs
        for arg in args:
            t = self._type_of_annotation(arg.annotation)
            if t:
                self.env[arg.arg] = t
        for _ in range(3):  # assignments typed from earlier assignments
            for sub in ast.walk(node):
                if isinstance(sub, ast.Assign) and len(sub.targets) == 1 and isinstance(sub.targets[0], ast.Name):
                    t = self._qualified(sub.value)
                    if t and (re.fullmatch(r"vtk\w+", t) or t.startswith("local:")):
                        self.env[sub.targets[0].id] = t
                elif isinstance(sub, ast.AnnAssign) and isinstance(sub.target, ast.Name):
                    t = self._type_of_annotation(sub.annotation)
                    if t:
                        self.env[sub.target.id] = t
                elif isinstance(sub, ast.For) and isinstance(sub.target, ast.Name) and isinstance(sub.iter, ast.Call):
                    t = self._qualified(sub.iter)
                    if t and re.fullmatch(r"vtk\w+", t):
                        self.env[sub.target.id] = t
        self.generic_visit(node)
        self.env = outer

    visit_AsyncFunctionDef = visit_FunctionDef

    # -- uses --------------------------------------------------------------------------------------

    def _inherited(self, cls: str, method: str, line: int, keywords=(), via_super: bool = False) -> None:
        """A method a local class does not define (or reaches through ``super()``) must come from a Slicer base."""
        bases, methods, _ = self.classes[cls]
        if method in methods and not via_super:
            return
        slicer_bases = [b for b in bases if b.startswith(("ScriptedLoadableModule", "slicer.util.", "vtk"))]
        if not slicer_bases:
            return
        if any(b.startswith("ScriptedLoadableModuleTest") for b in slicer_bases) and hasattr(unittest.TestCase, method):
            return
        self.uses.append(Use(" | ".join(f"{b}.{method}" for b in slicer_bases), line, keywords, kind="inherited"))

    def visit_Call(self, node: ast.Call) -> None:
        keywords = tuple(k.arg for k in node.keywords if k.arg)
        func = node.func
        if isinstance(func, ast.Attribute):
            receiver = func.value
            if isinstance(receiver, ast.Name) and receiver.id == "self" and self.current_class:
                self._inherited(self.current_class, func.attr, node.lineno, keywords)
            elif isinstance(receiver, ast.Call) and isinstance(receiver.func, ast.Name) \
                    and receiver.func.id == "super" and self.current_class:
                self._inherited(self.current_class, func.attr, node.lineno, keywords, via_super=True)
            else:
                owner = self._qualified(receiver)
                if owner and owner.startswith("local:"):
                    self._inherited(owner[len("local:"):], func.attr, node.lineno, keywords)
                    self.visit(receiver)
                    for arg in node.args + [k.value for k in node.keywords]:
                        self.visit(arg)
                    return
                self._record(func, keywords)
                self._visit_receiver(receiver)
                for arg in node.args + [k.value for k in node.keywords]:
                    self.visit(arg)
                return
        self.generic_visit(node)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        self._record(node, ())
        self._visit_receiver(node.value)

    def _visit_receiver(self, node: ast.AST) -> None:
        """Inside a chain a.b.c only the whole chain is an API use; calls inside it are visited."""
        while isinstance(node, ast.Attribute):
            node = node.value
        if not isinstance(node, ast.Name):
            self.visit(node)

    def _record(self, node: ast.Attribute, keywords) -> None:
        q = self._qualified(node)
        if not q or q.startswith("local:"):
            return
        name = _canonical(q)
        if name in NAMESPACES or re.fullmatch(r"slicer\.modules\.\w+(\.logic)?", name):
            return
        if name.startswith(("slicer.", "sitkUtils.")) or re.fullmatch(r"vtk\w+\.\w+", name) \
                or name.startswith("ScriptedLoadableModule"):
            self.uses.append(Use(name, node.lineno, keywords))


def slicer_api_uses(source: str) -> list[Use]:
    tree = ast.parse(source)
    reader = GlueReader(tree)
    reader.visit(tree)
    return reader.uses


def problems(uses: list[Use], api: dict[str, tuple[str, str, str]]) -> list[str]:
    """Uses that are not in the API list, not in Slicer 5.10, or pass keywords 5.10 does not take."""
    out = []
    for use in uses:
        if use.kind == "import" and not use.name.startswith("slicer."):
            found = use.name in api or any(n.startswith(use.name + ".") for n in api)  # a class: any member
            if not found:
                out.append(f"line {use.line}: {use.name} is not in the Slicer API list")
            continue
        candidates = use.name.split(" | ")
        hits = [c for c in candidates if c in api]
        if not hits:
            out.append(f"line {use.line}: {use.name} is not in the Slicer API list")
            continue
        kind, availability, signature = api[hits[0]]
        if not available_in_min_version(availability):
            out.append(f"line {use.line}: {hits[0]} is not in Slicer 5.10 ({availability})")
            continue
        params = parameters_in_min_version(availability, signature)
        if params is not None and use.keywords and not any(p.startswith("**") for p in params):
            unknown = [k for k in use.keywords if k not in params]
            if unknown:
                out.append(f"line {use.line}: {hits[0]} takes no keyword {', '.join(unknown)} in Slicer 5.10")
    return out


@pytest.fixture(scope="module")
def api() -> dict[str, tuple[str, str, str]]:
    return load_api(API_FILE.read_text(encoding="utf-8").splitlines())


@pytest.mark.parametrize("path", [MODULE, TRAIN], ids=lambda p: p.name)
def test_glue_calls_only_slicer_5_10_apis(path, api):
    assert problems(slicer_api_uses(path.read_text(encoding="utf-8")), api) == []


def test_the_reader_sees_the_calls_that_matter():
    """Guards the check itself: a reader that found nothing would pass every file."""
    used = {u.name for u in slicer_api_uses(MODULE.read_text(encoding="utf-8"))}
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


def test_the_check_refuses_missing_new_and_misused_apis(api):
    api = dict(api)
    api["slicer.util.onlyInNewSlicer"] = ("function", "since 5.12.3", "(a)")
    api["slicer.util.goneAfter58"] = ("function", "5.6.2+; REMOVED after 5.8.1", "()")
    bad = '''
import slicer
from slicer import vtkMRMLSegmentationNode
from slicer.ScriptedLoadableModule import ScriptedLoadableModuleWidget

def f(segmentationNode: vtkMRMLSegmentationNode):
    slicer.util.pip_ensure(["x"])
    slicer.util.onlyInNewSlicer(1)
    slicer.util.goneAfter58()
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
                 "takes no keyword blocking", "vtkMRMLLabelMapVolumeNode.NoSuchMethod", "vtkSegment.NoSuchEither",
                 "vtkSlicerSegmentationsModuleLogic.ExportEverything",
                 "vtkMRMLSegmentationNode.GetSegmentIdBySegmentName", "ScriptedLoadableModuleWidget.removeObservers"):
        assert name in found
    assert len(found.splitlines()) == 9


def imported_at_import_time(path: Path) -> set[str]:
    """Top-level packages imported by code that runs when the file is imported (module and class bodies)."""
    stack, names = list(ast.parse(path.read_text(encoding="utf-8")).body), set()
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.split(".")[0])
        stack.extend(ast.iter_child_nodes(node))
    return names


def test_heavy_imports_only_inside_functions():
    """Slicer imports module files at startup: torch and the cores must load only when used."""
    heavy = {"torch", "LiverTumorSegTrainLib", "LiverTumorSegLib"}
    assert not heavy & imported_at_import_time(MODULE)
    assert not (heavy | {"slicer", "numpy", "SimpleITK"}) & imported_at_import_time(TRAIN)
    assert "slicer" in imported_at_import_time(MODULE)  # the reader works: the module does import slicer


def test_api_subset_matches_the_shared_surface_list():
    """The committed subset is a verbatim extract of the full list (regenerate it with the command in its header)."""
    if not SHARED_API.is_file():
        pytest.skip(f"{SHARED_API} is not beside this clone")
    full = load_api(SHARED_API.read_text(encoding="utf-8").splitlines())
    subset = load_api(API_FILE.read_text(encoding="utf-8").splitlines())
    assert subset and all(full.get(name) == entry for name, entry in subset.items())


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


def test_train_script_bad_argument_exits_2_without_hanging(tmp_path):
    out = run_train(["--no-such-option", "-o", str(tmp_path / "run")], tmp_path)
    assert out.returncode == 2
    assert "unrecognized arguments: --no-such-option" in out.stderr


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
    for args, status in ((["--help"], 0), (["--", "--bad"], 2), (["--", str(tmp_path / "missing"), "-o", "r"], 2)):
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

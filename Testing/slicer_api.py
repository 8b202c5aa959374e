"""Which Slicer APIs the glue files call, and whether Slicer 5.10 (our minimum) has them.

Slicer cannot run in CI, so the glue (the module, the Segment Editor effect, the training module and its
script) is read with ``ast`` instead: every ``slicer.*``, ``slicer.util.*``, ``slicer.app.*``,
``slicer.mrmlScene.*``, ``slicer.modules.*``, ``scriptedEffect.*``, ``sitkUtils.*`` and ``PyTorchUtils`` use,
every method called on an MRML node, segmentation or logic whose class is known (annotations, creating
calls, known return types), and every method a class inherits from a Slicer base, is looked up in
``Testing/data/slicer_api_5_10.txt``: the lines of ``../shared/slicer/slicer_api_surface.txt`` (Slicer's API
surface, 5.6.2 to 5.12.3 and main) that the glue uses, copied verbatim. A name that is not there, that is
newer than 5.10, removed, private, or called with a keyword that 5.10 does not take, is a problem.

After changing glue code, regenerate the list from the repository root (needs ``../shared``)::

    python Testing/slicer_api.py --regenerate

and check the glue without pytest with ``python Testing/slicer_api.py``.
"""

from __future__ import annotations

import argparse
import ast
import fnmatch
import re
import sys
from pathlib import Path
from typing import Iterable

from slicer_glue_reader import QT_WIDGET, Use, slicer_api_uses  # noqa: F401 (re-exported for the tests)

ROOT = Path(__file__).resolve().parents[1]
API_FILE = ROOT / "Testing" / "data" / "slicer_api_5_10.txt"
SHARED_API = ROOT.parent / "shared" / "slicer" / "slicer_api_surface.txt"
MIN_VERSION = (5, 10, 0)
#: The Slicer glue: files that import slicer (patterns relative to the repository root).
GLUE_PATTERNS = ("LiverTumorSeg/LiverTumorSeg.py", "LiverTumorSeg/SegmentEditorLiverTumorAILib/*.py",
                 "LiverTumorSeg/LiverTumorSegModuleLib/*.py",
                 "LiverTumorSegTrain/LiverTumorSegTrain.py", "LiverTumorSegTrain/LiverTumorSegTrainModuleLib/*.py",
                 "LiverTumorSegTrain/Scripts/*.py")
#: CMake files whose Slicer macros and EXTENSION_* variables are checked too.
CMAKE_PATTERNS = ("CMakeLists.txt", "LiverTumorSeg/CMakeLists.txt", "LiverTumorSegTrain/CMakeLists.txt")

#: The PyTorch extension's API, which the shared surface list does not cover: (name, kind, signature). Read from
#: fepegar/SlicerPyTorch@e1c85cc (PyTorchUtils/PyTorchUtils.py, class PyTorchUtilsLogic), the head of the ``main``
#: branch that Slicer's ExtensionsIndex (PyTorch.json) builds for every Slicer version; unchanged since 2023-07.
PYTORCH_EXTENSION = "extension PyTorch@e1c85cc"
EXTENSION_APIS = (
    ("PyTorchUtils.PyTorchUtilsLogic", "class", ""),
    ("PyTorchUtils.PyTorchUtilsLogic.__init__", "method", "(self)"),
    ("PyTorchUtils.PyTorchUtilsLogic.cuda", "property", ""),
    ("PyTorchUtils.PyTorchUtilsLogic.getCompatibleComputationBackends", "staticmethod",
     "(forceComputationBackend, torchVersionRequirement)"),
    ("PyTorchUtils.PyTorchUtilsLogic.getDevice", "method", "(self)"),
    ("PyTorchUtils.PyTorchUtilsLogic.importTorch", "method", "(self)"),
    ("PyTorchUtils.PyTorchUtilsLogic.installTorch", "method",
     "(self, askConfirmation, forceComputationBackend, torchVersionRequirement, torchvisionVersionRequirement)"),
    ("PyTorchUtils.PyTorchUtilsLogic.nvidiaDriverVersionInformation", "property", ""),
    ("PyTorchUtils.PyTorchUtilsLogic.torch", "property", ""),
    ("PyTorchUtils.PyTorchUtilsLogic.torchInstalled", "staticmethod", "()"),
    ("PyTorchUtils.PyTorchUtilsLogic.torchVersionInformation", "property", ""),
    ("PyTorchUtils.PyTorchUtilsLogic.torchvisionInstalled", "staticmethod", "()"),
    ("PyTorchUtils.PyTorchUtilsLogic.torchvisionVersionInformation", "property", ""),
    ("PyTorchUtils.PyTorchUtilsLogic.uninstallTorch", "method", "(self, askConfirmation, forceComputationBackend)"),
)

Api = dict[str, tuple[str, str, str]]

# --------------------------------------------------------------------------------------------------
# The API list
# --------------------------------------------------------------------------------------------------


def load_api(lines: Iterable[str]) -> Api:
    """name -> (kind, availability, python signature) from lines of the API surface format."""
    api = {}
    for line in lines:
        if not line.strip() or line.startswith("#"):
            continue
        fields = line.rstrip("\n").split("\t")
        fields += [""] * (5 - len(fields))
        api[fields[0]] = (fields[2], fields[3], fields[4])
    return api


def project_api(path: Path = API_FILE) -> Api:
    """The committed list plus the PyTorch extension's API: what the glue may call."""
    api = load_api(path.read_text(encoding="utf-8").splitlines())
    api.update({name: (kind, PYTORCH_EXTENSION, signature) for name, kind, signature in EXTENSION_APIS})
    return api


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split("."))


def available_in_min_version(availability: str) -> bool:
    """'5.6.2+', 'since X' with X <= 5.10.0, or an extension's API; anything REMOVED (or only on main) is refused."""
    if "REMOVED" in availability:
        return False
    first = availability.split(";")[0].strip()
    if first == "5.6.2+" or first.startswith("extension "):
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


def _matching(candidate: str, api: Api) -> list[str]:
    if "*" not in candidate:
        return [candidate] if candidate in api else []
    return [n for n in api if fnmatch.fnmatchcase(n, candidate)]


def problems(uses: list[Use], api: Api) -> list[str]:
    """Uses that are not in the API list, not in Slicer 5.10, private, or pass keywords 5.10 does not take."""
    out = []
    for use in uses:
        if use.kind in ("import", "class"):
            found = use.name in api or any(n.startswith(use.name + ".") for n in api)  # a class: any member
            if not found:
                out.append(f"line {use.line}: {use.name} is not in the Slicer API list")
            elif use.name in api and not available_in_min_version(api[use.name][1]):
                out.append(f"line {use.line}: {use.name} is not in Slicer 5.10 ({api[use.name][1]})")
            continue
        hits = [h for c in use.name.split(" | ") for h in _matching(c, api)]
        if not hits:
            owner = use.name.split(" | ")[0].rsplit(".", 1)[0]
            if QT_WIDGET.fullmatch(owner) and any(n.startswith(owner + ".") for n in api):
                continue  # perhaps a Qt base-class member: the list covers only Slicer's own
            out.append(f"line {use.line}: {use.name} is not in the Slicer API list")
            continue
        usable = [c for c in hits if available_in_min_version(api[c][1])]
        if not usable:
            out.append(f"line {use.line}: {hits[0]} is not in Slicer 5.10 ({api[hits[0]][1]})")
            continue
        kind, availability, signature = api[usable[0]]
        if "private" in kind:
            out.append(f"line {use.line}: {usable[0]} is private Slicer API (may change without notice); "
                       f"use a public function")
            continue
        params = parameters_in_min_version(availability, signature)
        if params is not None and use.keywords and not any(p.startswith("**") for p in params):
            unknown = [k for k in use.keywords if k not in params]
            if unknown:
                out.append(f"line {use.line}: {usable[0]} takes no keyword {', '.join(unknown)} in Slicer 5.10")
    return out


# --------------------------------------------------------------------------------------------------
# CMake files: Slicer macros, their arguments and EXTENSION_* variables
# --------------------------------------------------------------------------------------------------

_CMAKE_MACROS = {"slicerMacroBuildScriptedModule": "SlicerMacroBuildScriptedModule",
                 "slicer_add_python_unittest": "SlicerMacroPythonTesting",
                 "slicer_add_python_test": "SlicerMacroPythonTesting",
                 "SlicerMacroBuildScriptedCLI": "SlicerMacroBuildScriptedCLI"}


def cmake_uses(text: str) -> list[Use]:
    """``cmake.<macro>``, ``cmake.<MacroFile>.<ARGUMENT>`` and ``cmake.EXTENSION_*`` names a CMakeLists.txt uses."""
    text = re.sub(r"#[^\n]*", "", text)
    uses = []

    def line_of(pos: int) -> int:
        return text.count("\n", 0, pos) + 1

    for m in re.finditer(r"\bset\(\s*(EXTENSION_\w+)", text):
        uses.append(Use(f"cmake.{m.group(1)}", line_of(m.start())))
    for m in re.finditer(r"\b(\w+)\s*\(([^()]*)\)", text):
        macro, args = m.group(1), m.group(2)
        if macro in _CMAKE_MACROS:
            uses.append(Use(f"cmake.{macro}", line_of(m.start())))
            for word in re.findall(r"(?<![\w${/.])([A-Z][A-Z_]+)\b(?![}])", args):
                uses.append(Use(f"cmake.{_CMAKE_MACROS[macro]}.{word}", line_of(m.start())))
    return uses


# --------------------------------------------------------------------------------------------------
# The files and the committed list
# --------------------------------------------------------------------------------------------------


def glue_files(root: Path = ROOT) -> list[Path]:
    """The glue files that exist now (some land later: each is checked once it is there)."""
    return sorted({p for pattern in GLUE_PATTERNS for p in root.glob(pattern) if p.is_file()})


def cmake_files(root: Path = ROOT) -> list[Path]:
    return [root / p for p in CMAKE_PATTERNS if (root / p).is_file()]


def all_uses(root: Path = ROOT) -> dict[Path, list[Use]]:
    uses = {p: slicer_api_uses(p.read_text(encoding="utf-8")) for p in glue_files(root)}
    uses.update({p: cmake_uses(p.read_text(encoding="utf-8")) for p in cmake_files(root)})
    return uses


def render_api_file(shared_text: str, uses: Iterable[Use], sources: Iterable[str]) -> str:
    """The committed list: the shared list's header columns line, a header saying how to regenerate, and the shared
    lines every use needs, verbatim and in the shared file's order."""
    lines = [ln for ln in shared_text.splitlines() if ln.strip() and not ln.startswith("#")]
    names = [ln.split("\t", 1)[0] for ln in lines]
    listed = set(names)
    wanted: set[str] = set()
    classes: set[str] = set()
    for use in uses:
        if use.kind in ("import", "class") and use.name not in listed:
            classes.add(use.name)  # a class the list has no line for: any member says it exists
            continue
        for candidate in use.name.split(" | "):
            if candidate in listed:
                wanted.add(candidate)
            elif "*" in candidate and not any(c in listed for c in use.name.split(" | ")):
                first = next((n for n in names if fnmatch.fnmatchcase(n, candidate)), None)
                if first:
                    wanted.add(first)
    for cls in sorted(classes):
        if not any(w.startswith(cls + ".") for w in wanted):
            member = next((n for n in names if n.startswith(cls + ".")), None)
            if member:
                wanted.add(member)
    header = [
        "# Slicer APIs used by the LiverTumorSeg glue and CMake files, copied verbatim from",
        "# ../shared/slicer/slicer_api_surface.txt (Slicer 5.6.2-5.12.3 and main; columns, TAB-separated:",
        "# owner.name, source path, kind, availability, python signature; see that file's header).",
        "# Testing/test_slicer_api.py checks every glue file against these lines (plus the PyTorch extension's",
        "# API in Testing/slicer_api.py). Generated by the command below from the files listed; after changing",
        "# them, rerun it from the repository root:",
        "#   python Testing/slicer_api.py --regenerate",
        *(f"# - {s}" for s in sources),
    ]
    return "\n".join(header + [ln for ln, n in zip(lines, names) if n in wanted]) + "\n"


def regenerate(root: Path = ROOT, shared: Path = SHARED_API) -> str:
    """What ``Testing/data/slicer_api_5_10.txt`` must contain for the files as they are now."""
    uses = all_uses(root)
    return render_api_file(shared.read_text(encoding="utf-8"), (u for us in uses.values() for u in us),
                           (p.relative_to(root).as_posix() for p in uses))


def check(root: Path = ROOT, api: Api | None = None) -> list[str]:
    """Every problem in the glue and CMake files under ``root``, as 'path: line N: ...'."""
    api = project_api() if api is None else api
    return [f"{path.relative_to(root).as_posix()}: {problem}"
            for path, uses in all_uses(root).items() for problem in problems(uses, api)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--regenerate", action="store_true", help=f"rewrite {API_FILE.relative_to(ROOT)} from "
                        f"{SHARED_API}")
    args = parser.parse_args(argv)
    if args.regenerate:
        if not SHARED_API.is_file():
            print(f"error: {SHARED_API} not found; it is needed to regenerate the list", file=sys.stderr)
            return 2
        API_FILE.write_text(regenerate(), encoding="utf-8")
        print(f"wrote {API_FILE.relative_to(ROOT)}")
    found = check()
    print("\n".join(found) if found else f"{len(glue_files())} glue files call only Slicer 5.10 APIs")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())


def imported_at_import_time(path: Path) -> set[str]:
    """Top-level packages imported by code that runs when the file is imported (module and class bodies)."""
    stack, names = list(ast.parse(path.read_text(encoding="utf-8")).body), set()
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        if isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING"):
            continue  # annotations only: never runs
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.split(".")[0])
        stack.extend(ast.iter_child_nodes(node))
    return names


def class_def(tree: ast.Module, name: str) -> ast.ClassDef:
    found = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == name]
    assert found, f"class {name} not found"
    return found[0]


def methods(cls: ast.ClassDef) -> dict[str, ast.FunctionDef]:
    return {n.name: n for n in cls.body if isinstance(n, ast.FunctionDef)}

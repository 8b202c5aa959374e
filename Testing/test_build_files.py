"""The extension's CMake files: every listed file exists, every Python file is listed, metadata and icons are complete.

Slicer's build stops on a listed file that is missing (``slicerMacroBuildScriptedModule`` raises FATAL_ERROR), but a
file that is not listed is silently left out of the package and only fails when a user's Slicer imports it; both are
caught here, without CMake or Slicer.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parents[1]
TOP = ROOT / "CMakeLists.txt"
METADATA = ("EXTENSION_HOMEPAGE", "EXTENSION_CATEGORY", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION",
            "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS", "EXTENSION_DEPENDS")


def cmake_text(path: Path) -> str:
    return re.sub(r"#[^\n]*", "", path.read_text(encoding="utf-8"))


def extension_metadata() -> dict[str, str]:
    return {m.group(1): m.group(2) for m in re.finditer(r'\bset\(\s*(EXTENSION_\w+)\s+"([^"]*)"\s*\)', cmake_text(TOP))}


def modules() -> list[str]:
    return re.findall(r"\badd_subdirectory\(\s*(\w+)\s*\)", cmake_text(TOP))


def listed_files(module: str) -> dict[str, list[str]]:
    """SCRIPTS and RESOURCES of a module's CMakeLists.txt, from ``set(MODULE_PYTHON_*)`` blocks or written inline."""
    text = cmake_text(ROOT / module / "CMakeLists.txt")
    name = re.search(r"\bset\(\s*MODULE_NAME\s+(\w+)\s*\)", text)
    variables = {m.group(1): m.group(2).split() for m in re.finditer(r"\bset\(\s*(\w+)\s+([^)]*)\)", text)}
    call = re.search(r"\bslicerMacroBuildScriptedModule\(([^)]*)\)", text)
    assert call, f"{module}/CMakeLists.txt has no slicerMacroBuildScriptedModule(...)"
    out: dict[str, list[str]] = {"SCRIPTS": [], "RESOURCES": []}
    current = None
    for word in call.group(1).split():
        if word in ("NAME", "SCRIPTS", "RESOURCES", "WITH_GENERIC_TESTS", "WITH_SUBDIR", "VERBOSE"):
            current = word if word in out else None
            continue
        if current:
            ref = re.fullmatch(r"\$\{(\w+)\}", word)
            out[current] += variables.get(ref.group(1), []) if ref else [word]
    return {k: [w.replace("${MODULE_NAME}", name.group(1) if name else "") for w in v] for k, v in out.items()}


def test_the_extension_has_complete_metadata_and_depends_on_pytorch():
    meta = extension_metadata()
    assert [k for k in METADATA if not meta.get(k, "").strip()] == []
    assert "PyTorch" in meta["EXTENSION_DEPENDS"].split()
    assert meta["EXTENSION_CATEGORY"] == "Segmentation"
    homepage = meta["EXTENSION_HOMEPAGE"]
    assert re.fullmatch(r"https://github\.com/[\w.-]+/[\w.-]+", homepage)
    raw = homepage.replace("https://github.com/", "https://raw.githubusercontent.com/") + "/main/"
    for key in ("EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS"):
        assert all(url.startswith(raw) for url in meta[key].split()), key  # served from the extension's repository
    icon = meta["EXTENSION_ICONURL"][len(raw):]
    assert (ROOT / icon).is_file(), f"{icon} (EXTENSION_ICONURL) is not in the repository"


def test_the_top_level_file_follows_slicers_extension_template():
    text = cmake_text(TOP)
    assert re.search(r"cmake_minimum_required\(VERSION [\d.]+(\.\.\.[\d.]+)? FATAL_ERROR\)", text)
    assert re.search(r"\bproject\(LiverTumorSeg\)", text)
    steps = [r"find_package\(Slicer REQUIRED\)", r"include\(\$\{Slicer_USE_FILE\}\)", r"add_subdirectory\(",
             r"include\(\$\{Slicer_EXTENSION_GENERATE_CONFIG\}\)", r"include\(\$\{Slicer_EXTENSION_CPACK\}\)"]
    positions = [re.search(step, text).start() for step in steps]
    assert positions == sorted(positions)
    assert modules() == ["LiverTumorSeg", "LiverTumorSegTrain"]


@pytest.mark.parametrize("module", ["LiverTumorSeg", "LiverTumorSegTrain"])
def test_every_listed_file_exists(module):
    files = listed_files(module)
    assert files["SCRIPTS"] and files["RESOURCES"]
    missing = [f for kind in files.values() for f in kind if not (ROOT / module / f).is_file()]
    assert missing == [], f"listed in {module}/CMakeLists.txt but missing"


@pytest.mark.parametrize("module", ["LiverTumorSeg", "LiverTumorSegTrain"])
def test_every_python_file_and_resource_is_listed(module):
    """A new core file, glue file or resource cannot be forgotten in the package."""
    files = listed_files(module)
    folder = ROOT / module
    present = {p.relative_to(folder).as_posix() for p in folder.rglob("*")
               if p.is_file() and "__pycache__" not in p.parts and not p.name.startswith(".")
               and (p.suffix == ".py" or "Resources" in p.relative_to(folder).parts)}
    assert sorted(present - set(files["SCRIPTS"]) - set(files["RESOURCES"])) == [], \
        f"not listed in {module}/CMakeLists.txt"
    assert all(f.endswith(".py") for f in files["SCRIPTS"])
    assert len(set(files["SCRIPTS"])) == len(files["SCRIPTS"])


@pytest.mark.parametrize("module", ["LiverTumorSeg", "LiverTumorSegTrain"])
def test_each_module_builds_with_generic_tests_and_its_self_test(module):
    text = cmake_text(ROOT / module / "CMakeLists.txt")
    assert re.search(rf"set\(\s*MODULE_NAME\s+{module}\s*\)", text)
    call = re.search(r"\bslicerMacroBuildScriptedModule\(([^)]*)\)", text).group(1).split()
    assert call[:2] == ["NAME", "${MODULE_NAME}"] and "WITH_GENERIC_TESTS" in call
    testing = re.search(r"if\(BUILD_TESTING\)(.*?)endif\(\)", text, re.S)
    unittest = r"slicer_add_python_unittest\(\s*SCRIPT\s+\$\{MODULE_NAME\}\.py\s*\)"
    assert testing and re.search(unittest, testing.group(1))
    assert f"{module}.py" in listed_files(module)["SCRIPTS"]


@pytest.mark.parametrize("path, size", [
    ("Resources/Icons/LiverTumorSeg.png", 128),
    ("LiverTumorSeg/Resources/Icons/LiverTumorSeg.png", 128),
    ("LiverTumorSeg/Resources/Icons/SegmentEditorLiverTumorAI.png", 21),
    ("LiverTumorSegTrain/Resources/Icons/LiverTumorSegTrain.png", 128),
])
def test_icons_have_the_sizes_slicer_expects_and_a_transparent_background(path, size):
    image = sitk.ReadImage(str(ROOT / path))
    assert image.GetSize() == (size, size)
    assert image.GetNumberOfComponentsPerPixel() == 4  # RGBA
    alpha = sitk.GetArrayFromImage(image)[..., 3]
    assert alpha[0, 0] == 0 and alpha[-1, -1] == 0  # transparent corners
    assert (alpha == 255).mean() > 0.15  # and a drawing that fills the icon


def test_dependencies_are_declared_once_and_each_has_a_reason():
    """pyproject.toml reads the one requirements file; the README says why each dependency is there."""
    import re

    import tomllib

    requirements = ROOT / "LiverTumorSeg" / "Resources" / "requirements.txt"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert "dependencies" not in project["project"] and "dependencies" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["dependencies"]["file"] == [
        str(requirements.relative_to(ROOT))]
    lines = requirements.read_text(encoding="utf-8").splitlines()
    names = [re.split(r"[<>=!~ ]", line, maxsplit=1)[0] for line in lines if line.strip() and not line.startswith("#")]
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    table = readme[readme.index("## Dependencies"):]
    for name in names:
        assert re.search(rf"^\| {re.escape(name)} \|", table, re.M | re.I), f"no reason given for {name}"
    module = (ROOT / "LiverTumorSeg" / "LiverTumorSegModuleLib" / "install.py").read_text(encoding="utf-8")
    assert '"requirements.txt"' in module and "PIP_REQUIREMENTS = {" not in module  # the module reads the file

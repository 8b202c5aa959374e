"""Layers point one way: Slicer glue -> cores, training core -> segmentation core, never the reverse."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import SimpleITK as sitk

ROOT = Path(__file__).resolve().parents[1]
CORE = ROOT / "LiverTumorSeg" / "LiverTumorSegLib"


def imports_of(package: Path, forbidden: str) -> list[str]:
    """``file:line`` of every import of ``forbidden`` (static, dotted or relative-free) under ``package``; an
    ``importlib.import_module("...")`` with a literal name counts too."""
    found = []
    for path in sorted(package.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names = [node.module]
            elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in (
                    "import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant):
                names = [str(node.args[0].value)]
            if any(n == forbidden or n.startswith(forbidden + ".") for n in names):
                found.append(f"{path.relative_to(package.parent)}:{node.lineno}")
    return found


def test_the_segmentation_core_never_imports_the_training_package(tmp_path):
    assert imports_of(CORE, "LiverTumorSegTrainLib") == []
    planted = tmp_path / "LiverTumorSegLib"
    shutil.copytree(CORE, planted, ignore=shutil.ignore_patterns("__pycache__"))
    source = (planted / "report.py").read_text(encoding="utf-8")
    plant = "\n\ndef _x():\n    from LiverTumorSegTrainLib import metrics\n"
    (planted / "report.py").write_text(source + plant, encoding="utf-8")
    assert imports_of(planted, "LiverTumorSegTrainLib") == [f"LiverTumorSegLib/report.py:{_last_line(planted)}"]


def _last_line(planted: Path) -> int:
    return len((planted / "report.py").read_text(encoding="utf-8").splitlines())


def test_segment_imports_no_training_module(tmp_path):
    """Every Apply in Slicer runs `segment`: it must not pay for (or depend on) the training package."""
    from LiverTumorSegLib.labels import LIVER, TUMOR
    from LiverTumorSegLib.modelfile import ModelConfig, new_model, save_model
    from LiverTumorSegLib.phantom import make_phantom

    ct, _ = make_phantom(shape_zyx=(8, 40, 40), spacing_zyx=(3.0, 2.0, 2.0), seed=1, lesion_diameters_mm=())
    sitk.WriteImage(ct, str(tmp_path / "ct.nii.gz"))
    cfg = ModelConfig("rec_unet", {"in_channels": 1, "out_channels": 2, "base_width": 4}, (LIVER, TUMOR))
    save_model(new_model(cfg), tmp_path / "m.pt")
    code = ("import sys; from LiverTumorSegLib.cli import main; "
            "code = main(['segment', sys.argv[1], '-o', sys.argv[2], '--model', sys.argv[3], '--quiet', "
            "'--device', 'cpu']); "
            "print(sorted(m for m in sys.modules if m.startswith('LiverTumorSegTrainLib'))); sys.exit(code)")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "ct.nii.gz"), str(tmp_path / "out"),
                          str(tmp_path / "m.pt")], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_training_commands_still_reach_livertumorseg():
    out = subprocess.run([sys.executable, "-m", "LiverTumorSegLib", "train", "--help"], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0 and "--preset" in out.stdout


def test_the_slicer_glue_has_one_path_bootstrap():
    """Both modules find the cores through LiverTumorSegModuleLib.paths; only Scripts/train.py, which a plain
    interpreter runs before anything of ours is importable, looks for them itself."""
    inserting = sorted(str(p.relative_to(ROOT)) for folder in ("LiverTumorSeg", "LiverTumorSegTrain")
                       for p in (ROOT / folder).rglob("*.py")
                       if "sys.path.insert" in p.read_text(encoding="utf-8"))
    assert inserting == ["LiverTumorSeg/LiverTumorSegModuleLib/paths.py", "LiverTumorSegTrain/Scripts/train.py"]

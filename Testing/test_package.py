"""Package boundaries: the cores never import Slicer, and importing them at Slicer startup is cheap."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CORES = [ROOT / "LiverTumorSeg" / "LiverTumorSegLib", ROOT / "LiverTumorSegTrain" / "LiverTumorSegTrainLib"]
FORBIDDEN = re.compile(r"^\s*(import|from)\s+(slicer|qt|ctk|vtk\.qt|sitkUtils|mrml)\b", re.M)


def test_cores_do_not_import_slicer():
    offenders = [str(p.relative_to(ROOT)) for core in CORES for p in core.rglob("*.py")
                 if FORBIDDEN.search(p.read_text(encoding="utf-8"))]
    assert offenders == []


def test_importing_the_core_does_not_load_torch():
    code = ("import sys, LiverTumorSegLib, LiverTumorSegTrainLib; "
            "from LiverTumorSegLib import labels, errors; "
            "assert 'torch' not in sys.modules, 'torch imported at package import'; "
            "print(LiverTumorSegLib.__version__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    import LiverTumorSegLib

    assert out.stdout.strip() == LiverTumorSegLib.__version__
    assert callable(LiverTumorSegLib.segment) and callable(LiverTumorSegLib.load_model)


def test_version_matches_pyproject():
    import LiverTumorSegLib

    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert f'version = "{LiverTumorSegLib.__version__}"' in text

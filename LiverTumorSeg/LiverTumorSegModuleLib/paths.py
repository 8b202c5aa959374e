"""Where the module's files and the cores are: the one path bootstrap of both modules' glue (the training module
depends on this module, so this library is importable there too)."""

from __future__ import annotations

import os
import sys


def moduleFolder() -> str:
    """The folder of LiverTumorSeg.py (this library's parent): the cores sit there in an extension build."""
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def ensureCorePackagesImportable() -> None:
    """The cores sit beside the module file in an extension build; in a clone, LiverTumorSegTrainLib is in
    ../LiverTumorSegTrain."""
    here = moduleFolder()
    for folder in (here, os.path.join(os.path.dirname(here), "LiverTumorSegTrain")):
        hasCore = any(os.path.isdir(os.path.join(folder, p))
                      for p in ("LiverTumorSegLib", "LiverTumorSegTrainLib", "LiverTumorSegModuleLib"))
        if hasCore and folder not in sys.path:
            sys.path.insert(0, folder)


def effectSourcePath() -> str:
    return os.path.join(moduleFolder(), "SegmentEditorLiverTumorAILib", "SegmentEditorEffect.py")

"""LiverTumorSeg core: liver and liver-tumour segmentation of CT, free of any Slicer dependency.

Importing this package is cheap (no torch): 3D Slicer imports it at startup, and the heavy
libraries are loaded only when a function that needs them runs.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "segment": "pipeline", "run_segmentation": "pipeline", "SegmentationResult": "pipeline",
    "load_model": "modelfile", "save_model": "modelfile", "new_model": "modelfile",
    "ModelConfig": "modelfile", "SegmentationModel": "modelfile", "import_authors_weights": "authors",
    "build_model": "models", "make_phantom": "phantom", "read_image": "imageio",
    "LabelSpec": "labels", "LIVER": "labels", "TUMOR": "labels",
    "LiverTumorSegError": "errors", "InputImageError": "errors", "ModelFileError": "errors",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

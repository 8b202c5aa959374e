"""LiverTumorSeg training core (Slicer-free): datasets, trainer, evaluation.

Built on ``LiverTumorSegLib``: the same model files, architecture registry and inference pipeline,
so validation during training measures exactly what users get.
"""

__version__ = "0.1.0"

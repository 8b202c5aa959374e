"""``python -m LiverTumorSegLib`` runs the ``livertumorseg`` command (e.g. from Slicer's PythonSlicer)."""

from .cli import console_main

console_main()

"""``python -m LiverTumorSegLib`` runs the ``livertumorseg`` command (e.g. from Slicer's PythonSlicer)."""

import sys

from .cli import main

sys.exit(main())

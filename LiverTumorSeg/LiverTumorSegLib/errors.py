"""Errors that front ends show to the user as one line: each message names the problem and the fix.

Every user-facing failure derives from ``LiverTumorSegError`` so that the CLI, the Slicer module and the
trainer can catch exactly these, print them on one line, and let real bugs surface as tracebacks. How such a
line is printed lives here too, so that every command (segmentation or training) prints it the same way.
"""

import argparse
import sys


def print_error(message: str) -> None:
    """One line per problem, even when a library's message spans several."""
    print("livertumorseg: error: " + " ".join(str(message).split()), file=sys.stderr)


def print_warning(message: str) -> None:
    print("livertumorseg: warning: " + " ".join(str(message).split()), file=sys.stderr)


class OneLineArgumentParser(argparse.ArgumentParser):
    """Usage mistakes as one line (problem and where to look), exit status 1 like every other refusal."""

    def error(self, message: str):  # noqa: D102 - argparse's hook
        print_error(f"{message}; see '{self.prog} --help'")
        raise SystemExit(1)


class LiverTumorSegError(Exception):
    """A problem with the user's input, model file or environment (not a bug in LiverTumorSeg)."""


class InputImageError(LiverTumorSegError):
    """The image cannot be segmented as CT (wrong dimension, NaNs, not Hounsfield units, ...)."""


class ModelFileError(LiverTumorSegError):
    """The model file is missing, corrupt, foreign, unsafe, or does not match its architecture."""


class OutputError(LiverTumorSegError, OSError):
    """An output cannot be written (exists, read-only folder, disk full, a path through a file, ...).
    Also an OSError, so callers that handled the standard errors (FileExistsError, ...) still do."""


class OutputExistsError(OutputError, FileExistsError):
    """An output exists and replacing it was not asked for."""


class DeviceError(LiverTumorSegError):
    """The requested compute device is not available."""


class SegmentationCancelled(LiverTumorSegError):
    """The progress callback asked to stop."""

"""Keeping the C libraries' own messages off the user's terminal.

ITK and the NIfTI library print warnings and errors straight to the process's stderr (``** ERROR: NWAD: wrote
only ...``, ``... has unexpected scales in sform``), before or instead of the one line that says what went
wrong and what to do. Reads and writes of image files run with ITK's warning display off and with file
descriptor 2 captured; what was captured goes to the debug log, and the caller decides what the user sees.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import threading
from typing import Iterator

log = logging.getLogger("livertumorseg")
_lock = threading.Lock()


@contextlib.contextmanager
def quiet_native_output() -> Iterator[list[str]]:
    """Run a block with native stderr captured; yields a list that receives the captured lines afterwards."""
    import SimpleITK as sitk

    captured: list[str] = []
    with _lock:
        previous = sitk.ProcessObject.GetGlobalWarningDisplay()
        sitk.ProcessObject.SetGlobalWarningDisplay(False)
        fd = 2  # the C libraries write to file descriptor 2, whatever Python's sys.stderr is
        try:
            saved = os.dup(fd)
        except OSError:  # no stderr at all (some embedded interpreters): nothing to capture
            try:
                yield captured
            finally:
                sitk.ProcessObject.SetGlobalWarningDisplay(previous)
            return
        try:
            sys.stderr.flush()
        except (AttributeError, OSError, ValueError):
            pass
        with tempfile.TemporaryFile() as sink:
            os.dup2(sink.fileno(), fd)
            try:
                yield captured
            finally:
                try:
                    sys.stderr.flush()
                except (OSError, ValueError):
                    pass
                os.dup2(saved, fd)
                os.close(saved)
                sitk.ProcessObject.SetGlobalWarningDisplay(previous)
                sink.seek(0)
                captured.extend(line for line in sink.read().decode("utf-8", "replace").splitlines() if line.strip())
                for line in captured:
                    log.debug("native: %s", line)

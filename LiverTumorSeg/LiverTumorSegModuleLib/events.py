"""The ``segment`` command's event stream as progress: stage, slices done, overall fraction and ETA (pure Python).

``python -m LiverTumorSegLib segment ... --progress json`` prints one JSON event per line; ``EventLog`` turns those
lines into a ``Progress`` (testable on recorded lines, no process needed) and collects the error a failed run gave.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Callable

#: Share of the whole run each stage of the ``segment`` command takes, for one progress bar.
STAGE_SPANS = {
    "starting": (0.0, 0.02),
    "loading model": (0.02, 0.08),
    "reading": (0.08, 0.12),
    "segmenting": (0.12, 0.92),
    "writing": (0.92, 0.99),
    "done": (1.0, 1.0),
}
ERROR_PREFIX = "livertumorseg: error:"
#: Fewer slices than this since the first progress event give no ETA yet (the first batch includes warm-up).
_MIN_SLICES_FOR_ETA = 1


class SegmentationRunError(RuntimeError):
    """The child process failed; ``log`` is everything it printed (for the error dialog's details)."""

    def __init__(self, message: str, log: str = "", returncode: int | None = None) -> None:
        super().__init__(message)
        self.log = log
        self.returncode = returncode


class SegmentationCancelledError(RuntimeError):
    """The user cancelled; nothing was written to the scene."""


# --------------------------------------------------------------------------------------------------
# Parsing the event stream (pure)
# --------------------------------------------------------------------------------------------------


@dataclass
class Progress:
    """Where a run stands: stage, slices done of total, overall fraction (0..1) and ETA (None: unknown)."""

    stage: str = "starting"
    case: str | None = None
    done: int = 0
    total: int = 0
    fraction: float = 0.0
    etaSeconds: float | None = None

    def text(self) -> str:
        """One line for a status label, e.g. 'Segmenting: 34 / 120 slices, about 12 s left'."""
        stage = self.stage[:1].upper() + self.stage[1:]
        if self.stage == "segmenting" and self.total:
            line = f"{stage}: {self.done} / {self.total} slices"
            if self.etaSeconds is not None:
                line += f", {formatDuration(self.etaSeconds)} left"
            return line
        return stage + ("" if self.stage in ("done", "cancelled", "failed") else "...")


def formatDuration(seconds: float) -> str:
    """'about 12 s', 'about 3 min' (an ETA is an estimate, so it is rounded like one)."""
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"about {max(1, round(seconds))} s"
    if seconds < 3600:
        return f"about {round(seconds / 60)} min"
    return f"about {seconds / 3600:.1f} h"


def parseEvent(line: str) -> dict | None:
    """The event of one output line, or None for anything else (warnings, tracebacks, stderr)."""
    text = line.strip()
    if not text.startswith("{"):
        return None
    try:
        event = json.loads(text)
    except ValueError:
        return None
    return event if isinstance(event, dict) and isinstance(event.get("event"), str) else None


class EventLog:
    """Collects every output line and follows the run's progress, outputs and errors."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.lines: list[str] = []
        self.progress = Progress()
        self.outputs: dict[str, str] | None = None
        self.errors: list[str] = []
        self._rateStart: tuple[float, int] | None = None

    def feed(self, line: str) -> dict | None:
        """Take one output line; returns its event when it is one."""
        line = line.rstrip("\r\n")
        self.lines.append(line)
        event = parseEvent(line)
        if event is None:
            if line.startswith(ERROR_PREFIX):
                message = line[len(ERROR_PREFIX):].strip()
                if message and not any(message.endswith(e) for e in self.errors):
                    self.errors.append(message)
            return None
        kind = event["event"]
        if event.get("case") is not None:
            self.progress.case = str(event["case"])
        if kind == "stage":
            self._setStage(str(event.get("stage", "")))
        elif kind == "progress":
            self._setProgress(int(event.get("done", 0)), int(event.get("total", 0)))
        elif kind == "done":
            outputs = event.get("outputs")
            self.outputs = {str(k): str(v) for k, v in outputs.items()} if isinstance(outputs, dict) else {}
            self._setStage("done")
        elif kind == "error":
            message = str(event.get("message", "")).strip()
            if message:
                self.errors.append(message)
        return event

    def _setStage(self, stage: str) -> None:
        p = self.progress
        p.stage = stage or p.stage
        if stage != "segmenting":
            p.etaSeconds = None
        low, _high = STAGE_SPANS.get(stage, (p.fraction, p.fraction))
        p.fraction = max(p.fraction, low)

    def _setProgress(self, done: int, total: int) -> None:
        p = self.progress
        p.stage, p.done, p.total = "segmenting", done, total
        low, high = STAGE_SPANS["segmenting"]
        if total > 0:
            p.fraction = max(p.fraction, low + (high - low) * min(1.0, done / total))
        now = self.clock()
        if self._rateStart is None or done < self._rateStart[1]:
            self._rateStart = (now, done)  # the first batch includes the model's warm-up: measure from here
            p.etaSeconds = None
            return
        t0, d0 = self._rateStart
        if done - d0 >= _MIN_SLICES_FOR_ETA and now > t0:
            rate = (done - d0) / (now - t0)
            p.etaSeconds = max(0.0, (total - done) / rate)

    def text(self) -> str:
        return "\n".join(self.lines)

    def errorMessage(self, returncode: int | None = None) -> str:
        """One line saying what went wrong, for the error dialog (the whole log goes to its details)."""
        if self.errors:
            return self.errors[-1]
        tail = [line.strip() for line in self.lines if line.strip() and parseEvent(line) is None]
        last = tail[-1] if tail else ""
        if "No module named 'torch'" in last:
            return "PyTorch is not installed in Slicer's Python: install the PyTorch extension and let this " \
                   "module install torch (or use the PyTorch Utils module)"
        if "No module named" in last:
            return f"{last}: a package the segmentation needs is missing; click Apply again to install it"
        if last:
            return last
        return f"the segmentation process ended with exit code {returncode} and printed nothing"


# --------------------------------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------------------------------

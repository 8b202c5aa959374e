"""Runs the core's ``segment`` command in a child process, streaming progress back, and reads what it wrote.

Why a child process: inference takes from seconds to minutes and must neither freeze Slicer nor be
impossible to stop. ``SegmentationProcess`` owns the process (reader thread, non-blocking ``poll``,
``cancel`` that kills the whole process tree, a blocking ``wait`` for scripts and tests), fed by the pure
event parsing of ``events``; ``QtSegmentationRunner`` is the thin Qt part: a timer that polls while Slicer's
event loop keeps running. ``runInProcess`` is the same work without a child process (scripting, tests, or when
no Python executable can be started); both return the label map, the label descriptions and the lesion report.

Nothing here imports Slicer, Qt, numpy, SimpleITK or the core at import time.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from .events import EventLog, Progress, SegmentationCancelledError, SegmentationRunError  # noqa: F401 (re-exported)

#: Seconds to wait for the rest of the output once the process has exited.
_PIPE_GRACE = 2.0


def pythonExecutable() -> str:
    """Slicer's ``PythonSlicer`` (on PATH inside Slicer, else beside ``sys.executable``), else this Python."""
    found = shutil.which("PythonSlicer")
    if found:
        return found
    beside = Path(sys.executable).with_name("PythonSlicer.exe" if os.name == "nt" else "PythonSlicer")
    if beside.is_file():
        return str(beside)
    return sys.executable


def segmentCommand(inputFile: str | os.PathLike, outputDir: str | os.PathLike, modelFile: str | os.PathLike,
                   options=None, python: str | Sequence[str] | None = None) -> list[str]:
    """The argument list of ``segment`` for one input file; ``options`` (a core ``SegmentOptions``) become the
    same flags the core declares for them (``SegmentOptions.to_argv``)."""
    head = [python] if isinstance(python, str) else list(python or [pythonExecutable()])
    argv = head + ["-m", "LiverTumorSegLib", "segment", str(inputFile), "-o", str(outputDir),
                   "--model", str(modelFile), "--progress", "json", "--overwrite", "--quiet"]
    return argv + (options.to_argv() if options is not None else [])


def childEnvironment(base: dict[str, str] | None = None, pythonPath: Sequence[str] = ()) -> dict[str, str]:
    """``base`` (default: this process's environment) with the core's folder first on PYTHONPATH and
    unbuffered UTF-8 output, so events arrive line by line and decode the same on every platform."""
    env = dict(os.environ if base is None else base)
    paths = [str(p) for p in pythonPath] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if paths:
        env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONIOENCODING"] = "utf-8"
    return env


# --------------------------------------------------------------------------------------------------
# The process (no Qt)
# --------------------------------------------------------------------------------------------------


def killProcessTree(proc: subprocess.Popen) -> None:
    """Kill a process and everything it started.

    ``PythonSlicer`` is a launcher that starts the real Python as a child, so killing the launcher alone
    would leave the work running. On POSIX the process was started in its own session: its group is
    killed. On Windows ``taskkill /T`` kills the tree.
    """
    if proc.poll() is not None:
        return
    try:
        if os.name == "nt":
            subprocess.run(["taskkill", "/F", "/T", "/PID", str(proc.pid)], capture_output=True,
                           creationflags=getattr(subprocess, "CREATE_NO_WINDOW", 0), check=False)
        else:
            os.killpg(proc.pid, signal.SIGKILL)
    except (OSError, ProcessLookupError):
        pass
    if proc.poll() is None:
        try:
            proc.kill()
        except OSError:
            pass


class SegmentationProcess:
    """One run of the ``segment`` command: start, poll without blocking, cancel, or wait."""

    def __init__(self, argv: Sequence[str], env: dict[str, str] | None = None, cwd: str | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.argv = [str(a) for a in argv]
        self.env = env
        self.cwd = cwd
        self.log = EventLog(clock)
        self.cancelled = False
        self.returncode: int | None = None
        self._proc: subprocess.Popen | None = None
        self._lines: queue.Queue = queue.Queue()
        self._eof = False
        self._exitedAt: float | None = None
        self._thread: threading.Thread | None = None

    @property
    def progress(self) -> Progress:
        return self.log.progress

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self) -> "SegmentationProcess":
        kwargs: dict[str, Any] = dict(stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True, encoding="utf-8", errors="replace", bufsize=1, env=self.env,
                                      cwd=self.cwd)
        if os.name == "nt":  # no console window flashing up; the launcher's children stay in the tree
            info = subprocess.STARTUPINFO()
            info.dwFlags |= subprocess.STARTF_USESHOWWINDOW
            info.wShowWindow = 0
            kwargs["startupinfo"] = info
        else:
            kwargs["start_new_session"] = True  # one process group to kill on cancel
        self.log.feed(f"$ {subprocess.list2cmdline(self.argv) if os.name == 'nt' else ' '.join(self.argv)}")
        try:
            self._proc = subprocess.Popen(self.argv, **kwargs)
        except OSError as e:
            raise SegmentationRunError(f"cannot start {self.argv[0]}: {e.strerror or e}", self.log.text()) from None
        self._thread = threading.Thread(target=self._read, name="LiverTumorSeg output reader", daemon=True)
        self._thread.start()
        return self

    def _read(self) -> None:
        stream = self._proc.stdout
        try:
            for line in stream:
                self._lines.put(line)
        finally:
            self._lines.put(None)

    def poll(self) -> bool:
        """Take the output printed so far (never blocks); True once the process has ended and all is read.

        A process that has exited counts as ended without the end of its output when it was cancelled, or
        ``_PIPE_GRACE`` seconds later (something it started may still hold the pipe open).
        """
        if self._proc is None:
            raise RuntimeError("the process was not started")
        while True:
            try:
                line = self._lines.get_nowait()
            except queue.Empty:
                break
            if line is None:
                self._eof = True
                break
            self.log.feed(line)
        if self._proc.poll() is None:
            return False
        if self._exitedAt is None:
            self._exitedAt = time.monotonic()
        if self._eof or self.cancelled or time.monotonic() - self._exitedAt > _PIPE_GRACE:
            self.returncode = self._proc.returncode
            return True
        return False

    @property
    def finished(self) -> bool:
        return self.returncode is not None

    def cancel(self) -> None:
        """Stop the run now; ``result()`` then raises SegmentationCancelledError."""
        self.cancelled = True
        if self._proc is not None:
            killProcessTree(self._proc)
            self.log.progress.stage = "cancelled"

    def wait(self, callback: Callable[[Progress], Any] | None = None, interval: float = 0.1,
             timeout: float | None = None) -> dict[str, str]:
        """Block until the run ends; ``callback(progress)`` after each poll may return False to cancel.

        For scripts and tests; inside Slicer the callback is where ``slicer.app.processEvents()`` keeps
        the application responsive (and where a progress dialog's Cancel is read).
        """
        if self._proc is None:
            self.start()
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.poll():
            if callback is not None and callback(self.progress) is False and not self.cancelled:
                self.cancel()
            if deadline is not None and time.monotonic() > deadline and not self.cancelled:
                self.cancel()
                raise SegmentationRunError(f"the segmentation did not finish within {timeout:.0f} s",
                                           self.log.text())
            time.sleep(interval)
        if callback is not None:
            callback(self.progress)
        return self.result()

    def result(self) -> dict[str, str]:
        """The outputs the command wrote (labels, segmentation, report), or the error with the full log."""
        if self.cancelled:
            raise SegmentationCancelledError("segmentation cancelled")
        if self.returncode is None:
            raise RuntimeError("the process has not finished")
        if self.returncode != 0 or not self.log.outputs:
            self.log.progress.stage = "failed"
            raise SegmentationRunError(self.log.errorMessage(self.returncode), self.log.text(), self.returncode)
        return dict(self.log.outputs)


class QtSegmentationRunner:
    """Polls a ``SegmentationProcess`` from a Qt timer so that Slicer stays responsive while it runs.

    ``onProgress(progress)`` after every poll; ``onFinished(process)`` once, when it has ended (call
    ``process.result()`` there to get the outputs or the error).
    """

    def __init__(self, process: SegmentationProcess, onProgress: Callable[[Progress], Any] | None = None,
                 onFinished: Callable[[SegmentationProcess], Any] | None = None, intervalMs: int = 200) -> None:
        self.process = process
        self.onProgress = onProgress
        self.onFinished = onFinished
        self.intervalMs = intervalMs
        self._timer = None

    def start(self) -> "QtSegmentationRunner":
        import qt

        self.process.start()
        self._timer = qt.QTimer()
        self._timer.setInterval(self.intervalMs)
        self._timer.connect("timeout()", self._tick)
        self._timer.start()
        return self

    @property
    def running(self) -> bool:
        return self._timer is not None and not self.process.finished

    def cancel(self) -> None:
        self.process.cancel()

    def _tick(self) -> None:
        finished = self.process.poll()
        if self.onProgress is not None:
            self.onProgress(self.process.progress)
        if finished:
            self._timer.stop()
            if self.onFinished is not None:
                self.onFinished(self.process)


# --------------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------------


def readOutputs(outputs: dict[str, str]):
    """(label map, segment specs, report) from what ``segment`` wrote.

    The ``.seg.nrrd`` carries the labels *and* their names, colours and terminology, so it is the one
    file read for the voxels; the report is the JSON the command wrote.
    """
    from LiverTumorSegLib.labels import LabelSpec
    from LiverTumorSegLib.segfile import read_seg_nrrd_labels

    labels, segments = read_seg_nrrd_labels(outputs["segmentation"])
    specs = [LabelSpec(s["name"], int(s["labelValue"]), tuple(int(round(c * 255)) for c in s["color"][:3]),
                       s["terminology"]) for s in segments]
    report = json.loads(Path(outputs["report"]).read_text(encoding="utf-8")) if outputs.get("report") else {}
    return labels, specs, report


def runInProcess(image, modelFile: str | os.PathLike, options=None,
                 progress: Callable[[Progress], Any] | None = None, clock: Callable[[], float] = time.monotonic):
    """The same as a child process run, in this process: (label map, segment specs, report).

    ``progress(progress)`` may return False to cancel (raises SegmentationCancelledError).
    """
    from LiverTumorSegLib.errors import SegmentationCancelled
    from LiverTumorSegLib.pipeline import run_segmentation
    from LiverTumorSegLib.report import segmentation_report

    log = EventLog(clock)

    def emit(event: dict) -> Any:
        log.feed(json.dumps(event))
        return progress(log.progress) if progress is not None else None

    if emit({"event": "stage", "stage": "loading model"}) is False:
        raise SegmentationCancelledError("segmentation cancelled")
    emit({"event": "stage", "stage": "segmenting"})

    def onSlices(done: int, total: int) -> bool:
        return emit({"event": "progress", "stage": "segmenting", "done": done, "total": total}) is not False

    from LiverTumorSegLib.options import SegmentOptions

    options = options if options is not None else SegmentOptions()
    try:
        result = run_segmentation(image, str(modelFile), progress=onSlices, **options.pipeline_kwargs())
    except SegmentationCancelled:
        raise SegmentationCancelledError("segmentation cancelled") from None
    emit({"event": "stage", "stage": "writing"})
    labels = result.model.output_labels
    specs = list(labels)  # the core's label records, as read back from a child process's .seg.nrrd
    report: dict[str, Any] = segmentation_report(result)
    emit({"event": "done", "outputs": {}})
    return result.labels, specs, report


class SegmentationJob:
    """One run: the image and options going in; the label map, segment specs, report and log coming out.

    Owns a temporary folder (the child process's input and outputs), removed by ``cleanup``. The Slicer
    glue keeps the volume and segmentation nodes on it; nothing here touches them.
    """

    def __init__(self, image, modelFile: str | os.PathLike, options=None, volumeNode=None,
                 segmentationNode=None) -> None:
        self.image = image
        self.modelFile = str(modelFile)
        self.options = options  # a core SegmentOptions (None: the model's defaults)
        self.volumeNode = volumeNode
        self.segmentationNode = segmentationNode
        self.labels = None
        self.specs: list = []
        self.report: dict = {}
        self.log = ""
        self._folder: str | None = None
        self._start = time.monotonic()

    def folder(self) -> str:
        if self._folder is None:
            import tempfile

            self._folder = tempfile.mkdtemp(prefix="LiverTumorSeg-")
        return self._folder

    def seconds(self) -> float:
        return time.monotonic() - self._start

    def cleanup(self) -> None:
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None

    def childProcess(self, pythonPath: Sequence[str] = (), python: str | Sequence[str] | None = None,
                     env: dict[str, str] | None = None) -> SegmentationProcess:
        """The (not yet started) child process for this job; the image is written to the job's folder."""
        import SimpleITK as sitk

        folder = self.folder()
        inputFile = os.path.join(folder, "volume.nrrd")
        sitk.WriteImage(self.image, inputFile, False)
        argv = segmentCommand(inputFile, os.path.join(folder, "output"), self.modelFile, self.options,
                              python=python)
        return SegmentationProcess(argv, env=childEnvironment(env, pythonPath), cwd=folder)

    def takeResults(self, process: SegmentationProcess) -> None:
        """Keep a finished process's log and read its outputs (raises its error or cancellation)."""
        self.log = process.log.text()
        self.labels, self.specs, self.report = readOutputs(process.result())

    def run(self, progress: Callable[[Progress], Any] | None = None, inProcess: bool = False,
            pythonPath: Sequence[str] = (), python: str | Sequence[str] | None = None,
            interval: float = 0.1) -> "SegmentationJob":
        """Run to the end (blocking); ``progress(progress)`` may return False to cancel."""
        if inProcess:
            self.labels, self.specs, self.report = runInProcess(self.image, self.modelFile, self.options,
                                                                progress=progress)
            self.log = ""
            return self
        process = self.childProcess(pythonPath, python)
        try:
            process.wait(progress, interval=interval)
        except (SegmentationRunError, SegmentationCancelledError):
            self.log = process.log.text()
            raise
        self.takeResults(process)
        return self

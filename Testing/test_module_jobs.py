"""The module's job runner, checked without Slicer: the event stream as progress and ETA (pure), the command
line, and real runs of the core's ``segment`` command in a child process and in process: progress, outputs,
cancel and errors."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from LiverTumorSegModuleLib import events, jobs

MODULE_DIR = Path(__file__).resolve().parents[1] / "LiverTumorSeg"

# --------------------------------------------------------------------------------------------------
# Event parsing and ETA (pure)
# --------------------------------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


RECORDED = [
    '{"event": "stage", "stage": "loading model", "model": "/m/model.pt"}',
    '{"event": "stage", "case": "volume", "stage": "reading"}',
    '{"event": "stage", "case": "volume", "stage": "segmenting"}',
    '{"event": "progress", "case": "volume", "stage": "segmenting", "done": 4, "total": 40}',
    "/usr/lib/python3/site-packages/torch/nn/modules/conv.py:456: UserWarning: something",
    '{"event": "progress", "case": "volume", "stage": "segmenting", "done": 12, "total": 40}',
    '{"event": "progress", "case": "volume", "stage": "segmenting", "done": 40, "total": 40}',
    '{"event": "stage", "case": "volume", "stage": "writing"}',
    '{"event": "done", "case": "volume", "outputs": {"labels": "/o/volume.labels.nii.gz", '
    '"segmentation": "/o/volume.seg.nrrd", "report": "/o/volume.report.json"}}',
]


def test_event_log_follows_stages_slices_fraction_and_eta():
    clock = FakeClock()
    log = events.EventLog(clock)
    fractions, etas = [], []
    for line, dt in zip(RECORDED, [0, 1, 1, 2, 0, 2, 7, 0, 1]):
        clock.now += dt
        log.feed(line + "\n")
        fractions.append(log.progress.fraction)
        etas.append(log.progress.etaSeconds)
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert etas[3] is None  # the first batch carries the warm-up: no rate yet
    assert etas[5] == pytest.approx((40 - 12) / (8 / 2))  # 8 slices in 2 s after the first batch
    assert etas[6] == pytest.approx(0.0)
    assert etas[7] is None  # writing: no slice ETA
    assert log.progress.stage == "done" and log.progress.case == "volume"
    assert log.outputs == {"labels": "/o/volume.labels.nii.gz", "segmentation": "/o/volume.seg.nrrd",
                           "report": "/o/volume.report.json"}
    assert log.lines[4].startswith("/usr/lib") and len(log.lines) == len(RECORDED)
    assert log.errors == []


def test_progress_text():
    p = events.Progress(stage="segmenting", done=34, total=120, fraction=0.3, etaSeconds=12.4)
    assert p.text() == "Segmenting: 34 / 120 slices, about 12 s left"
    assert events.Progress(stage="segmenting", done=1, total=9).text() == "Segmenting: 1 / 9 slices"
    assert events.Progress(stage="loading model").text() == "Loading model..."
    assert events.formatDuration(150) == "about 2 min" and events.formatDuration(7200) == "about 2.0 h"


def test_lines_that_are_not_events_are_kept_but_not_parsed():
    for line in ("", "plain text", "{not json", '{"no": "event"}', "[1, 2]", '{"event": 3}'):
        assert events.parseEvent(line) is None
    assert events.parseEvent('  {"event": "stage", "stage": "reading"}  ') == {"event": "stage", "stage": "reading"}


def test_errors_come_from_error_events_and_error_lines():
    log = events.EventLog()
    log.feed('{"event": "error", "case": "volume", "message": "2 thresholds needed (one per label: Liver, Tumor), '
             'got 1"}')
    log.feed("livertumorseg: error: volume: 2 thresholds needed (one per label: Liver, Tumor), got 1")
    assert log.errors == ["2 thresholds needed (one per label: Liver, Tumor), got 1"]
    assert log.errorMessage(1) == "2 thresholds needed (one per label: Liver, Tumor), got 1"

    crash = events.EventLog()
    for line in ("Traceback (most recent call last):", '  File "x.py", line 1', "ModuleNotFoundError: No module "
                 "named 'torch'"):
        crash.feed(line)
    assert "PyTorch is not installed" in crash.errorMessage(1)
    assert "exit code 3" in events.EventLog().errorMessage(3)


def test_the_command_line():
    from LiverTumorSegLib.cli import build_parser
    from LiverTumorSegLib.options import SegmentOptions

    options = SegmentOptions(device="cuda", precision="fp32", batch_size=4, thresholds=(0.5, 0.25),
                             min_lesion_mm3=20, min_lesion_confidence=0.6, organ_margin_mm=2.5, keep_labels=("Liver",),
                             region=((1, 5), (0, 9), (2, 3)), use_localizer=False, allow_non_ct=True)
    argv = jobs.segmentCommand("/in/ct.nrrd", "/out", "/m/model.pt", options, python="/slicer/bin/PythonSlicer")
    assert argv[:12] == ["/slicer/bin/PythonSlicer", "-m", "LiverTumorSegLib", "segment", "/in/ct.nrrd", "-o",
                         "/out", "--model", "/m/model.pt", "--progress", "json", "--overwrite"]
    args = build_parser(with_plugins=False).parse_args(argv[3:])  # the core's own parser accepts exactly this
    assert SegmentOptions.from_args(args) == options  # and reads back every option
    assert jobs.segmentCommand("a", "b", "c")[0] == jobs.pythonExecutable()
    assert jobs.segmentCommand("a", "b", "c", SegmentOptions())[-1] == "--quiet"  # defaults add no flags


def test_python_executable_outside_slicer_is_this_python(monkeypatch):
    monkeypatch.setattr(jobs.shutil, "which", lambda name: None)
    assert jobs.pythonExecutable() == sys.executable
    monkeypatch.setattr(jobs.shutil, "which", lambda name: "/opt/Slicer/bin/PythonSlicer")
    assert jobs.pythonExecutable() == "/opt/Slicer/bin/PythonSlicer"


def test_child_environment_puts_the_core_first_once():
    env = jobs.childEnvironment({"PYTHONPATH": os.pathsep.join(["/a", "/core"]), "X": "1"}, ["/core"])
    assert env["PYTHONPATH"] == os.pathsep.join(["/core", "/a"])
    assert env["X"] == "1" and env["PYTHONUNBUFFERED"] == "1" and env["PYTHONIOENCODING"] == "utf-8"
    assert "PYTHONPATH" not in jobs.childEnvironment({}, [])


# --------------------------------------------------------------------------------------------------
# Real runs of the segment command through the runner
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> str:
    import torch

    from LiverTumorSegLib.labels import LIVER, TUMOR
    from LiverTumorSegLib.modelfile import ModelConfig, new_model, save_model

    torch.manual_seed(0)
    config = ModelConfig("rec_unet", {"in_channels": 3, "out_channels": 2, "base_width": 4}, (LIVER, TUMOR),
                         context_slices=1, name="tiny")
    return str(save_model(new_model(config), tmp_path_factory.mktemp("model") / "tiny.pt"))


@pytest.fixture(scope="module")
def phantom():
    from LiverTumorSegLib.phantom import make_phantom

    return make_phantom(shape_zyx=(16, 64, 64), spacing_zyx=(3.0, 2.0, 2.0), seed=1, lesion_diameters_mm=(14.0,))


def job_for(image, model, **options) -> jobs.SegmentationJob:
    from LiverTumorSegLib.options import SegmentOptions

    return jobs.SegmentationJob(image, model, SegmentOptions(device="cpu", **options))


def test_a_child_process_run_reports_progress_and_its_outputs(tiny_model, phantom):
    ct, _truth = phantom
    job = job_for(ct, tiny_model, batch_size=4)
    seen = []
    try:
        job.run(lambda p: seen.append((p.stage, p.done, p.total, p.fraction)), pythonPath=[str(MODULE_DIR)])
        folder = Path(job.folder())
        assert (folder / "output" / "volume.seg.nrrd").is_file()
    finally:
        job.cleanup()
    assert not folder.exists(), "cleanup removes the job's folder"
    # the callback sees the state at each poll; every event is in the log
    parsed = [events.parseEvent(line) for line in job.log.splitlines()]
    assert [e["done"] for e in parsed if e and e["event"] == "progress"] == [4, 8, 12, 16]
    assert any(s[0] == "segmenting" for s in seen)
    assert seen[-1] == ("done", 16, 16, 1.0), "progress reaches the total number of slices"
    assert [f for _, _, _, f in seen] == sorted(f for _, _, _, f in seen)
    assert job.labels.GetSize() == ct.GetSize()
    assert [(s.name, s.value) for s in job.specs] == [("Liver", 1), ("Tumor", 2)]
    assert "SCT^10200004^Liver" in job.specs[0].terminology and job.specs[0].color == (221, 130, 101)
    for key in ("organ_volume_ml", "lesion_count", "lesion_volume_ml", "lesion_burden_percent", "lesions"):
        assert key in job.report
    assert '"event": "done"' in job.log and job.log.startswith("$ ")


def test_in_process_and_child_process_agree(tiny_model, phantom):
    ct, _truth = phantom
    child = job_for(ct, tiny_model, region=((8, 56), (0, 64), (2, 14)), keep_labels=["Liver"])
    inproc = job_for(ct, tiny_model, region=((8, 56), (0, 64), (2, 14)), keep_labels=["Liver"])
    try:
        child.run(pythonPath=[str(MODULE_DIR)])
        stages = []
        inproc.run(lambda p: stages.append(p.stage), inProcess=True)
    finally:
        child.cleanup()
        inproc.cleanup()
    assert "segmenting" in stages and stages[-1] == "done"
    a, b = sitk.GetArrayFromImage(child.labels), sitk.GetArrayFromImage(inproc.labels)
    assert np.mean(a == b) > 0.999
    for arr in (a, b):
        assert not arr[:2].any() and not arr[14:].any() and not arr[:, :, :8].any() and not arr[:, :, 56:].any()
        assert set(np.unique(arr)) <= {0, 1}, "liver only: the tumour is counted as liver"
    assert [s.name for s in inproc.specs] == [s.name for s in child.specs]
    assert child.report["lesion_count"] == inproc.report["lesion_count"] == 0


def test_cancel_kills_the_run_quickly_and_leaves_no_outputs(tiny_model):
    from LiverTumorSegLib.phantom import make_phantom

    ct, _ = make_phantom(shape_zyx=(120, 128, 128), spacing_zyx=(2.0, 2.0, 2.0), seed=3)
    job = job_for(ct, tiny_model, batch_size=1)
    process = job.childProcess(pythonPath=[str(MODULE_DIR)]).start()
    try:
        deadline = time.monotonic() + 120
        while not (process.progress.stage == "segmenting" and process.progress.done >= 1):
            assert not process.poll(), f"finished before it could be cancelled:\n{process.log.text()}"
            assert time.monotonic() < deadline, process.log.text()
            time.sleep(0.02)
        assert process.progress.done < process.progress.total
        t0 = time.monotonic()
        process.cancel()
        while not process.poll():
            assert time.monotonic() - t0 < 10, "the process did not end after cancel"
            time.sleep(0.02)
        assert time.monotonic() - t0 < 5
        assert process.returncode != 0
        with pytest.raises(jobs.SegmentationCancelledError):
            process.result()
        if os.name != "nt":
            with pytest.raises(ProcessLookupError):
                os.killpg(process.pid, 0)  # the whole process group is gone
        output = Path(job.folder()) / "output"
        assert not output.exists() or not any(output.iterdir()), list(output.iterdir())
    finally:
        if process.returncode is None:
            process.cancel()
        job.cleanup()


def test_a_callback_returning_false_cancels(tiny_model, phantom):
    ct, _ = phantom
    job = job_for(ct, tiny_model)
    try:
        with pytest.raises(jobs.SegmentationCancelledError):
            job.run(lambda p: False, pythonPath=[str(MODULE_DIR)])
        with pytest.raises(jobs.SegmentationCancelledError):
            job.run(lambda p: p.stage != "segmenting", inProcess=True)
    finally:
        job.cleanup()


def test_errors_come_back_with_the_log(tiny_model, phantom, tmp_path):
    ct, _ = phantom
    flat = job_for(sitk.Image([32, 32], sitk.sitkInt16), tiny_model)  # a 2-D image
    wrong = job_for(ct, tiny_model, thresholds=(0.5,))  # one threshold for two labels
    missing = job_for(ct, str(tmp_path / "no-model.pt"))
    try:
        for job, expected in ((flat, "3-D"), (wrong, "2 thresholds needed"), (missing, "model file not found")):
            with pytest.raises(jobs.SegmentationRunError) as caught:
                job.run(pythonPath=[str(MODULE_DIR)])
            assert expected in str(caught.value), caught.value.log
            assert "\n" not in str(caught.value)
            assert caught.value.returncode != 0
            assert caught.value.log.startswith("$ ") and "livertumorseg: error:" in caught.value.log
            assert job.log == caught.value.log
    finally:
        for job in (flat, wrong, missing):
            job.cleanup()


def test_a_python_that_cannot_start_is_a_clear_error(tmp_path, phantom, tiny_model):
    ct, _ = phantom
    job = job_for(ct, tiny_model)
    try:
        with pytest.raises(jobs.SegmentationRunError, match="cannot start"):
            job.run(python=str(tmp_path / "no-python"))
    finally:
        job.cleanup()


def test_the_info_command_the_environment_panel_runs(tmp_path):
    """The module's environment panel parses ``info --json`` from the child process."""
    argv = [sys.executable, "-m", "LiverTumorSegLib", "info", "--json"]
    process = jobs.SegmentationProcess(argv, env=jobs.childEnvironment(pythonPath=[str(MODULE_DIR)])).start()
    deadline = time.monotonic() + 120
    while not process.poll():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert process.returncode == 0, process.log.text()
    lines = process.log.lines[1:]
    info = json.loads("\n".join(lines[next(i for i, line in enumerate(lines) if line.startswith("{")):]))
    assert {"torch", "torch_build", "cuda_available", "gpus"} <= set(info)


@pytest.mark.skipif(os.name == "nt", reason="POSIX process groups")
def test_cancel_also_kills_what_the_launcher_started(tmp_path):
    """PythonSlicer is a launcher that starts the real Python: cancelling must end the grandchild too."""
    script = tmp_path / "launcher.py"
    script.write_text("import subprocess, sys, time\n"
                      "child = subprocess.Popen([sys.executable, '-c', 'import time; print(\"child\", flush=True); "
                      "time.sleep(60)'])\n"
                      "print('pid', child.pid, flush=True)\n"
                      "child.wait()\n", encoding="utf-8")
    process = jobs.SegmentationProcess([sys.executable, str(script)]).start()
    deadline = time.monotonic() + 30
    while not any(line.startswith("pid ") for line in process.log.lines):
        process.poll()
        assert time.monotonic() < deadline
        time.sleep(0.02)
    grandchild = int(next(line for line in process.log.lines if line.startswith("pid ")).split()[1])
    process.cancel()
    while not process.poll():
        assert time.monotonic() < deadline
        time.sleep(0.02)
    for _ in range(250):
        if not alive(grandchild):
            break
        time.sleep(0.02)
    else:
        os.kill(grandchild, signal.SIGKILL)
        raise AssertionError("the launcher's child survived the cancel")


def alive(pid: int) -> bool:
    """Running (a killed process whose parent is gone may linger as a zombie until init reaps it)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text(encoding="ascii").rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state not in ("Z", "X")

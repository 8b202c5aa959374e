"""Every entry of the bad-input corpus through the real CLI: one line naming the problem and the fix, exit 1,
nothing left under a final name, existing files untouched; awkward but valid inputs give a correct result."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from LiverTumorSegLib.cli import main

from bad_inputs import Entry, make_base
from bad_inputs_corpus import CORPUS

CLASSES = {"damage", "dicom", "geometry", "options", "model", "outputs", "messages"}


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return make_base(tmp_path_factory.mktemp("corpus-base"))


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in root.rglob("*") if p.is_file()}


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def test_the_corpus_covers_every_class_with_at_least_60_inputs():
    assert len(CORPUS) >= 60 and {e.cls for e in CORPUS} == CLASSES
    assert len({e.name for e in CORPUS}) == len(CORPUS)


@pytest.mark.parametrize("entry", CORPUS, ids=[e.name for e in CORPUS])
def test_bad_input(entry: Entry, base, tmp_path, capfd):
    root = tmp_path / "case"
    root.mkdir()
    argv = entry.build(root, base)
    before = _snapshot(root)
    capfd.readouterr()
    try:
        code = main(argv)
    except SystemExit as e:  # usage errors leave through argparse, as the console script does
        code = e.code
    out, err = capfd.readouterr()
    lines = _lines(err)
    after = _snapshot(root)
    if entry.expect == "refuse":
        assert code == 1, f"exit {code}; stderr: {err}"
        assert len(lines) == 1, f"expected one line on stderr, got: {err}"
        assert lines[0].startswith("livertumorseg: error: ") and re.search(entry.match, lines[0]), lines[0]
        assert ";" in lines[0], f"no fix named: {lines[0]}"
        assert after == before, f"files changed: {set(after.items()) ^ set(before.items())}"
        assert not (root / "pwned.txt").exists()
        return
    if entry.expect == "partial":
        assert code == 1 and len(lines) == 1 and re.search(entry.match, lines[0]), err
        written = sorted(p.name for p in (root / "out").iterdir())
        assert written == sorted(f"good{i}.{s}" for i in (1, 2) for s in ("labels.nii.gz", "report.json",
                                                                           "seg.nrrd"))
        return
    assert code == 0, f"exit {code}; stderr: {err}"
    if entry.expect == "ok-warned":
        assert len(lines) == 1 and lines[0].startswith("livertumorseg: warning: ") and re.search(entry.match, lines[0])
        reports = list((root / "out").glob("*.report.json"))
        assert len(reports) == 1 and re.search(entry.match, reports[0].read_text(encoding="utf-8"))
    else:
        assert lines == [], err
    labels = [p for p in (root / "out").iterdir() if p.name.endswith(".labels.nii.gz")]
    assert len(labels) == 1 and not [p for p in (root / "out").iterdir() if ".tmp" in p.name]
    got = sitk.ReadImage(str(labels[0]))
    truth = base.truth
    if got.GetSize() == truth.GetSize():  # the oracle segments the corpus's CT exactly
        np.testing.assert_array_equal(sitk.GetArrayFromImage(got), sitk.GetArrayFromImage(truth))


def test_a_full_disk_leaves_no_output_and_says_so(base, tmp_path):
    """ITK's NIfTI writer fails silently when the disk is full (here: a file-size limit); the written file is
    checked before it gets its final name."""
    ct = tmp_path / "ct.nii.gz"
    sitk.WriteImage(base.ct, str(ct))
    code = ("import resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
            "resource.setrlimit(resource.RLIMIT_FSIZE, (700, 700)); "
            "sys.path.insert(0, sys.argv[1]); import conftest; from LiverTumorSegLib.cli import console_main; "
            "sys.argv = ['livertumorseg'] + sys.argv[2:]; console_main()")
    proc = subprocess.run([sys.executable, "-c", code, str(Path(__file__).parent), "segment", str(ct), "-o",
                           str(tmp_path / "out"), "--model", str(base.model), "--device", "cpu", "--quiet"],
                          capture_output=True, text=True, timeout=120)
    lines = _lines(proc.stderr)
    assert proc.returncode == 1 and len(lines) == 1, proc.stderr
    assert re.search(r"ct: .*(incomplete|no space left)", lines[0]), lines[0]
    assert [p.name for p in (tmp_path / "out").iterdir()] == []


def test_ctrl_c_in_training_says_how_to_resume(tmp_path, base):
    data = tmp_path / "data"
    data.mkdir()
    sitk.WriteImage(base.ct, str(data / "a.nii.gz"))
    sitk.WriteImage(base.truth, str(data / "a_truth.nii.gz"))
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "LiverTumorSegLib", "train", str(data), "-o", str(run),
                             "--quiet", "--device", "cpu", "--width", "4", "--epochs", "500", "--steps-per-epoch",
                             "2", "--crop", "32", "--folds", "0", "--cache-dir", str(tmp_path / "cache")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 120
    while not (run / "checkpoint.pt").exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    lines = _lines(err)
    assert proc.returncode == 130 and len(lines) == 1 and "--resume" in lines[0], err

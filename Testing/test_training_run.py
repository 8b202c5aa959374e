"""Whole training runs on phantoms: learning, exact resume after a kill, 2-process DDP, pseudo-labels."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from LiverTumorSegLib.cli import main
from LiverTumorSegLib.errors import LiverTumorSegError
from LiverTumorSegLib.modelfile import load_model
from LiverTumorSegLib.phantom import make_phantom
from LiverTumorSegTrainLib.config import PRESETS, TrainConfig
from LiverTumorSegTrainLib.datasets import find_cases
from LiverTumorSegTrainLib.trainer import CHECKPOINT, MODEL, train


@pytest.fixture(scope="module")
def phantom_data(tmp_path_factory) -> Path:
    """Eight small phantoms (varied orientation and spacing) in the `livertumorseg phantom` layout."""
    root = tmp_path_factory.mktemp("phantoms")
    for seed in range(8):
        ct, labels = make_phantom(shape_zyx=(28, 96, 96), spacing_zyx=(3.0, 2.4 + 0.1 * (seed % 3), 2.4), seed=seed,
                                  orientation=["LPS", "RAS", "LPI"][seed % 3], n_lesions=1 + seed % 3)
        sitk.WriteImage(ct, str(root / f"p{seed}.nii.gz"))
        sitk.WriteImage(labels, str(root / f"p{seed}_truth.nii.gz"))
    return root


def tiny(data: Path, out: Path, **kw) -> TrainConfig:
    values = dict(data=[str(data)], output=str(out), architecture="rec_unet", base_width=4, context_slices=1,
                  spacing_mm=3.0, crop=32, batch_size=4, epochs=3, steps_per_epoch=6, folds=0, augment=True,
                  optimizer="ranger", lr=1e-3, schedule="cosine", warmup_epochs=1, device="cpu",
                  cache_dir=str(out.parent / "cache"))
    values.update(kw)
    return TrainConfig(**values)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_short_cpu_training_reaches_liver_dice_0_9(phantom_data, tmp_path):
    cfg = TrainConfig(**{**PRESETS["demo"], "data": [str(phantom_data)], "output": str(tmp_path / "run"),
                         "val_cases": ["p6", "p7"], "device": "cpu", "cache_dir": str(tmp_path / "cache"),
                         "spacing_mm": 3.0, "epochs": 8, "steps_per_epoch": 30, "val_every": 4})
    result = train(cfg, progress=False)
    best = max(h["val_dice_liver"] for h in result.history if "val_dice_liver" in h)
    assert best >= 0.9, result.history
    model = load_model(result.model_path)
    assert model.config.metrics["val_dice_liver"] == pytest.approx(best)
    assert model.config.provenance["val_cases"] == ["p6", "p7"] and "p6" not in model.config.provenance["train_cases"]
    run = Path(cfg.output)
    log = json.loads((run / "log.json").read_text(encoding="utf-8"))
    assert [h["epoch"] for h in log] == list(range(1, 9)) and "val_per_case" in log[3]
    assert (run / "log.csv").read_text(encoding="utf-8").splitlines()[0].startswith("epoch,")
    assert (run / "curves.png").stat().st_size > 1000
    with pytest.raises(LiverTumorSegError, match="--resume"):
        train(cfg, progress=False)  # an existing run is never silently overwritten


def test_killed_run_resumes_bit_for_bit(phantom_data, tmp_path):
    reference = train(tiny(phantom_data, tmp_path / "straight"), progress=False)
    straight = torch.load(Path(reference.model_path).parent / CHECKPOINT, weights_only=True)["model"]

    out = tmp_path / "killed"
    args = [sys.executable, "-m", "LiverTumorSegLib.cli", "train", str(phantom_data), "-o", str(out), "--quiet",
            "--arch", "rec_unet", "--width", "4", "--context", "1", "--spacing", "3.0", "--crop", "32",
            "--batch-size", "4", "--epochs", "3", "--steps-per-epoch", "6", "--folds", "0", "--optimizer", "ranger",
            "--lr", "1e-3", "--schedule", "cosine", "--warmup-epochs", "1", "--device", "cpu",
            "--tumor-fraction", str(TrainConfig.tumor_fraction), "--cache-dir", str(tmp_path / "cache")]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not (out / CHECKPOINT).exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)  # mid-run, right after the first epoch's checkpoint
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()
    epoch = torch.load(out / CHECKPOINT, weights_only=True)["epoch"]
    assert epoch < 2  # the run really was interrupted

    assert main(["train", "-o", str(out), "--resume", "--quiet"]) == 0
    resumed = torch.load(out / CHECKPOINT, weights_only=True)
    assert resumed["epoch"] == 2
    for key, value in straight.items():
        assert torch.equal(value, resumed["model"][key]), key
    a, b = load_model(out / MODEL), load_model(reference.model_path)
    assert a.config.architecture_kwargs == b.config.architecture_kwargs


def test_two_process_ddp_run_writes_the_same_kind_of_model(phantom_data, tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_free_port()}",
           "-m", "LiverTumorSegLib.cli", "train", str(phantom_data), "-o", str(out), "--quiet", "--width", "4",
           "--spacing", "3.0", "--crop", "32", "--batch-size", "2", "--epochs", "2", "--steps-per-epoch", "4",
           "--folds", "4", "--fold", "1", "--device", "cpu", "--cache-dir", str(tmp_path / "cache")]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    model = load_model(out / MODEL)
    assert model.config.architecture == "rec_unet" and [lab.name for lab in model.config.labels] == ["Liver", "Tumor"]
    assert "val_dice_liver" in model.config.metrics
    log = json.loads((out / "log.json").read_text(encoding="utf-8"))
    assert [h["epoch"] for h in log] == [1, 2]  # written once (rank 0), not once per process
    ckpt = torch.load(out / CHECKPOINT, weights_only=True)
    assert len(ckpt["rng"]) == 2  # each process's random state, for an exact resume


def test_pseudo_labels_become_a_weighted_training_set(phantom_data, tmp_path):
    model_run = train(tiny(phantom_data, tmp_path / "teacher", epochs=1), progress=False)
    unlabelled = tmp_path / "unlabelled"
    unlabelled.mkdir()
    for seed in (20, 21):
        ct, _ = make_phantom(shape_zyx=(20, 80, 80), spacing_zyx=(3.0, 2.5, 2.5), seed=seed)
        sitk.WriteImage(ct, str(unlabelled / f"u{seed}.nii.gz"))
    pseudo = tmp_path / "pseudo"
    assert main(["pseudo-label", str(unlabelled), "-o", str(pseudo), "--model", str(model_run.model_path),
                 "--device", "cpu", "--quiet"]) == 0
    cases = find_cases(pseudo)
    assert sorted(c.case_id for c in cases) == ["u20", "u21"]
    ct, labels = cases[0].load()
    assert labels.GetSize() == ct.GetSize() and set(np.unique(sitk.GetArrayViewFromImage(labels))) <= {0, 1, 2}
    student = train(tiny(phantom_data, tmp_path / "student", epochs=1, pseudo=[str(pseudo)], pseudo_weight=0.3),
                    progress=False)
    assert set(load_model(student.model_path).config.provenance["config"]["pseudo"]) == {str(pseudo)}


def test_a_liver_localiser_trains_and_attaches_as_the_coarse_stage(phantom_data, tmp_path):
    loc_run = tmp_path / "loc"
    assert main(["train", str(phantom_data), "-o", str(loc_run), "--preset", "localizer", "--width", "4",
                 "--epochs", "2", "--steps-per-epoch", "4", "--val-cases", "p7", "--device", "cpu", "--quiet",
                 "--cache-dir", str(tmp_path / "cache"), "--description", "phantoms only"]) == 0
    localizer = load_model(loc_run / MODEL)
    assert [lab.name for lab in localizer.config.labels] == ["Liver"] and localizer.config.spacing_yx_mm == (6.0, 6.0)
    assert localizer.config.description == "phantoms only"
    assert "val_dice_liver" in localizer.config.metrics  # validated against liver ∪ tumour
    fine = train(tiny(phantom_data, tmp_path / "fine", epochs=1), progress=False)
    both = tmp_path / "both.pt"
    report = tmp_path / "cv" / "crossval.json"
    report.parent.mkdir()
    report.write_text(json.dumps({"aggregate": {"n_cases": 4, "structures": {"liver": {
        "dice_per_case": 0.95, "dice_global": 0.96}}, "lesions": {">0": {"recall": 0.8, "precision": 0.5}}}}))
    assert main(["attach-localizer", str(fine.model_path), str(loc_run / MODEL), "-o", str(both), "--name",
                 "Shipped", "--description", "non-commercial data", "--thresholds", "0.5,0.3",
                 "--min-lesion-confidence", "0.8", "--crossval", str(report.with_suffix(""))]) == 0
    model = load_model(both)
    assert model.localizer is not None and model.localizer.config.labels[0].name == "Liver"
    assert (model.config.name, model.config.description) == ("Shipped", "non-commercial data")
    assert model.config.thresholds == (0.5, 0.3) and model.config.min_lesion_confidence == 0.8
    crossval = model.config.metrics["crossval"]
    assert crossval["n_cases"] == 4 and crossval["liver"]["dice_per_case"] == 0.95
    assert crossval["lesions"]["recall"] == 0.8
    assert main(["attach-localizer", str(fine.model_path), str(loc_run / MODEL), "-o", str(tmp_path / "x.pt"),
                 "--min-lesion-confidence", "1.5"]) != 0  # out of [0, 1): one line, no file
    assert not (tmp_path / "x.pt").exists()
    assert model.config.provenance == load_model(fine.model_path).config.provenance  # the split and recipe stay
    ct, _ = find_cases(phantom_data)[0].load()
    from LiverTumorSegLib.pipeline import run_segmentation

    result = run_segmentation(ct, model, device="cpu")  # runs both stages (untrained: any region is fine)
    assert result.labels.GetSize() == ct.GetSize() and "localize" in result.seconds


def test_crossval_trains_every_fold_and_scores_each_patient_once(phantom_data, tmp_path):
    out = tmp_path / "cv"
    args = ["crossval", str(phantom_data), "-o", str(out), "--folds", "4", "--width", "4", "--spacing", "3.0",
            "--crop", "32", "--batch-size", "2", "--epochs", "1", "--steps-per-epoch", "2", "--device", "cpu",
            "--quiet", "--cache-dir", str(tmp_path / "cache")]
    assert main(args) == 0
    val = [load_model(out / f"fold{k}" / MODEL).config.provenance["val_cases"] for k in range(4)]
    assert sorted(sum(val, [])) == sorted(f"p{i}" for i in range(8))  # every patient validated exactly once
    rows = (out / "crossval.csv").read_text(encoding="utf-8").splitlines()
    assert len({r.split(",")[0] for r in rows[1:]}) == 8 and (out / "crossval.md").exists()
    # each prediction's tumour probability is kept, and the keep-threshold is chosen on the other folds
    assert len(list((out / "probabilities").glob("*.nii.gz"))) == 8
    chosen = json.loads((out / "confidence.json").read_text(encoding="utf-8"))
    assert sorted(chosen["nested_per_fold"]) == ["0", "1", "2", "3"]
    assert set(chosen["all_folds"]) == {"min_mm3", "min_confidence"} and 0 <= chosen["all_folds"]["min_confidence"] < 1
    assert (out / "crossval_confidence.md").exists() and len(list((out / "predictions_confidence").iterdir())) == 8
    before = (out / "fold0" / CHECKPOINT).stat().st_mtime_ns
    assert main(args) == 0  # rerunning continues: finished folds are not trained again
    assert (out / "fold0" / CHECKPOINT).stat().st_mtime_ns == before


def test_a_network_needing_multiples_of_32_trains_and_segments_end_to_end(phantom_data, tmp_path):
    """The network's size multiple goes into the model file: training crops and inference padding follow it."""
    out = tmp_path / "run"
    assert main(["train", str(phantom_data), "-o", str(out), "--arch", "unet", "--arch-arg", "depth=5", "--width", "4",
                 "--crop", "64", "--spacing", "3.0", "--epochs", "1", "--steps-per-epoch", "2", "--batch-size", "2",
                 "--folds", "0", "--device", "cpu", "--quiet", "--cache-dir", str(tmp_path / "cache")]) == 0
    model = load_model(out / MODEL)
    assert model.config.size_multiple == 32 and model.config.architecture_kwargs["depth"] == 5
    ct, _ = find_cases(phantom_data)[0].load()
    from LiverTumorSegLib.pipeline import run_segmentation

    result = run_segmentation(ct, model, device="cpu")
    assert result.labels.GetSize() == ct.GetSize() and all(s % 32 == 0 for s in result.plan.padded_size_yx)
    with pytest.raises(LiverTumorSegError, match="not a multiple of 32"):
        train(tiny(phantom_data, tmp_path / "bad", architecture="unet", arch_args={"depth": 5}, crop=48),
              progress=False)
    with pytest.raises(LiverTumorSegError, match="has no argument"):
        train(tiny(phantom_data, tmp_path / "bad2", architecture="unet", arch_args={"depht": 5}), progress=False)


def test_a_softmax_head_trains_and_its_classes_become_labels(phantom_data, tmp_path):
    cfg = tiny(phantom_data, tmp_path / "soft", architecture="unet", activation="softmax", loss="ce_dice",
               arch_args={"depth": 3}, base_width=6, crop=48, epochs=6, steps_per_epoch=15, lr=3e-3,
               val_cases=["p7"], val_every=6, folds=0, calibrate_thresholds=False)
    result = train(cfg, progress=False)
    model = load_model(result.model_path)
    assert model.config.output_activation == "softmax" and model.config.out_channels == 3
    assert result.history[-1]["val_dice_liver"] > 0.5

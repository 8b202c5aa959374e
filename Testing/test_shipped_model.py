"""The models that ship in ``LiverTumorSeg/Resources/Models``: intact, described truthfully by the catalogue, used
when no model is named, and still segmenting real CT as the model card says.

Why these tests exist: the shipped file is what every user runs first. A re-trained file copied in without updating
the catalogue's checksum, a model whose labels or spacing differ from what the module shows, a "default" that
silently falls back to something else, or weights that no longer segment a real liver would all pass every other
test.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from LiverTumorSegLib.catalog import BUNDLED_DIR, MODELS_DIR_ENV, load_catalog
from LiverTumorSegLib.cli import MODEL_ENV, default_model_path, main
from LiverTumorSegLib.modelfile import file_sha256, load_model
from LiverTumorSegLib.phantom import make_phantom
from LiverTumorSegLib.pipeline import segment

SHARED_IRCADB = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "ircadb01"
SHARED_LITS = SHARED_IRCADB.parent / "lits18"
MAX_BYTES = 25 * 1000 * 1000
SHIPPED = [e for e in load_catalog() if (BUNDLED_DIR / e.file).is_file()]
DEFAULT = next(e for e in load_catalog() if e.default)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.logical_and(a, b).sum() / max(1, a.sum() + b.sum())


def test_the_catalogue_default_model_ships_with_the_extension():
    assert sum(e.default for e in load_catalog()) == 1
    assert (BUNDLED_DIR / DEFAULT.file).is_file()
    model = load_model(BUNDLED_DIR / DEFAULT.file)
    assert model.localizer is not None, "the default runs coarse-to-fine"
    assert "non-commercial" in model.config.description, "users see the data's licence in the model selector"


@pytest.mark.parametrize("entry", SHIPPED, ids=[e.id for e in SHIPPED])
def test_each_shipped_file_is_what_its_catalogue_entry_says(entry):
    path = BUNDLED_DIR / entry.file
    assert path.stat().st_size <= MAX_BYTES
    assert file_sha256(path) == entry.sha256
    cfg = load_model(path).config
    assert [lab.name for lab in cfg.labels] == list(entry.labels)
    assert list(cfg.spacing_yx_mm) == list(entry.input_spacing_mm)
    assert cfg.context_slices == entry.context_slices
    assert "non-commercial" in entry.licence and "non-commercial" in entry.description.lower()
    train_ids, val_ids = cfg.provenance["train_cases"], cfg.provenance["val_cases"]
    assert train_ids and not set(train_ids) & set(val_ids), "the patient split is kept in the file"
    if any(lab.role == "lesion" for lab in cfg.labels):  # what users are told of its accuracy travels with it
        assert val_ids or cfg.metrics["crossval"]["n_cases"] > 0, "no held-out patients and no cross-validation"
    assert cfg.provenance["config"]["data"], "the training recipe is kept in the file"


def test_segment_without_a_model_uses_the_shipped_default_offline(tmp_path, monkeypatch):
    monkeypatch.delenv(MODEL_ENV, raising=False)
    monkeypatch.setenv(MODELS_DIR_ENV, str(tmp_path / "empty-user-folder"))
    assert default_model_path() == BUNDLED_DIR / DEFAULT.file
    ct, truth = make_phantom(shape_zyx=(48, 224, 224), spacing_zyx=(2.5, 1.4, 1.4), seed=3)
    sitk.WriteImage(ct, str(tmp_path / "ct.nii.gz"))
    assert main(["segment", str(tmp_path / "ct.nii.gz"), "-o", str(tmp_path / "out"), "--device", "cpu",
                 "--quiet"]) == 0
    report = json.loads((tmp_path / "out" / "ct.report.json").read_text(encoding="utf-8"))
    assert Path(report["model"]["file"]) == BUNDLED_DIR / DEFAULT.file
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "out" / "ct.labels.nii.gz")))
    assert _dice(labels > 0, sitk.GetArrayFromImage(truth) > 0) > 0.8, "a real-CT model finds the phantom's liver"


def _smallest_case(folder: Path, ids=None):
    from LiverTumorSegTrainLib.datasets import find_cases

    cases = {c.case_id: c for c in find_cases(folder, kind="npz")}
    return cases[min(ids or cases, key=lambda c: (folder / f"{c}.npz").stat().st_size)]


HELD_OUT = [e for e in SHIPPED if load_model(BUNDLED_DIR / e.file).config.provenance["val_cases"]
            and "Tumor" in e.labels]


@pytest.mark.skipif(not SHARED_IRCADB.is_dir(), reason="needs ../shared/data/ircadb01 (real CT; CI has it)")
@pytest.mark.parametrize("entry", HELD_OUT, ids=[e.id for e in HELD_OUT])
def test_a_shipped_model_segments_a_real_patient_it_never_saw(entry):
    model = load_model(BUNDLED_DIR / entry.file)
    ct, ref = _smallest_case(SHARED_IRCADB, model.config.provenance["val_cases"]).load()
    labels = sitk.GetArrayFromImage(segment(ct, model, device="cpu"))
    assert _dice(labels > 0, sitk.GetArrayFromImage(ref) > 0) >= 0.90


@pytest.mark.skipif(not (SHARED_IRCADB.is_dir() and SHARED_LITS.is_dir()), reason="needs ../shared/data (real CT)")
@pytest.mark.parametrize("folder", [SHARED_IRCADB, SHARED_LITS], ids=["ircadb01", "lits18"])
def test_the_default_model_still_segments_real_ct_of_both_its_sources(folder):
    """The default was trained on every case there is (its estimate is the cross-validation it carries), so this
    guards the file and the pipeline on real CT of each source, not generalisation."""
    model = load_model(BUNDLED_DIR / DEFAULT.file)
    assert model.config.metrics["crossval"]["liver"]["dice_per_case"] > 0.9
    ct, ref = _smallest_case(folder).load()
    labels = sitk.GetArrayFromImage(segment(ct, model, device="cpu"))
    assert _dice(labels > 0, sitk.GetArrayFromImage(ref) > 0) >= 0.90


def test_the_shipped_model_gives_the_labels_it_gave_before_the_refactors():
    """The v0.2.0 file through today's pipeline (stages, inferers, options, contracts) gives, voxel for voxel, the
    labels the code it shipped with (commit 6adcbff) gave on this phantom: SHA-256 of the label array."""
    import hashlib

    from LiverTumorSegLib.pipeline import run_segmentation

    ct, _ = make_phantom(shape_zyx=(40, 160, 170), spacing_zyx=(2.5, 0.9, 0.9), seed=21, orientation="RAS")
    model = load_model(Path(__file__).resolve().parents[1] / "LiverTumorSeg" / "Resources" / "Models"
                       / "liver_tumor_rec_unet_w16_ircadb01_v0.2.0.pt")
    for use_localizer in (True, False):
        labels = sitk.GetArrayFromImage(run_segmentation(ct, model, device="cpu", use_localizer=use_localizer).labels)
        assert hashlib.sha256(labels.tobytes()).hexdigest()[:16] == "b1bda83e8d37ece2"

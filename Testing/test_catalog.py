"""The model catalogue and the models folder: what the Slicer module offers, downloads, verifies and imports."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
import pickle
from pathlib import Path

import pytest
import torch

from LiverTumorSegLib.catalog import (
    DEFAULT_CATALOG,
    MODELS_DIR_ENV,
    AvailableModel,
    CatalogEntry,
    CatalogError,
    available_models,
    default_model,
    default_models_dir,
    import_model_file,
    load_catalog,
    models_dir,
    read_model_config,
    remove_model_file,
    verify_sha256,
)
from LiverTumorSegLib.errors import LiverTumorSegError, ModelFileError
from LiverTumorSegLib.labels import LIVER, TUMOR
from LiverTumorSegLib.modelfile import ModelConfig, new_model, save_model

ENTRY = {
    "id": "tiny_liver_tumor", "version": "1.0.0", "title": "Tiny REC-UNet", "description": "for tests",
    "file": "tiny_v1.pt", "url": "https://example.org/tiny_v1.pt", "sha256": "0" * 64,
    "labels": ["Liver", "Tumor"], "input_spacing_mm": [1.5, 1.5], "context_slices": 0,
    "seconds_cpu": 12.5, "seconds_gpu": None, "hardware": "2-core laptop CPU, 512x512x100 CT",
    "licence": "CC-BY-NC-SA 4.0 (LiTS)", "default": True,
}


def tiny_model_file(path: Path, name: str = "tiny", seed: int = 0) -> Path:
    torch.manual_seed(seed)
    config = ModelConfig("rec_unet", {"in_channels": 1, "out_channels": 2, "base_width": 4}, (LIVER, TUMOR),
                         name=name)
    return save_model(new_model(config), path)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_catalog(path: Path, *entries: dict, schema_version=1) -> Path:
    path.write_text(json.dumps({"schema_version": schema_version, "models": list(entries)}), encoding="utf-8")
    return path


class _Exploit:
    def __reduce__(self):
        return (os.system, (f"touch {os.environ['EXPLOIT_MARKER']}",))


# --------------------------------------------------------------------------------------------------
# The catalogue file
# --------------------------------------------------------------------------------------------------


def test_the_shipped_catalogue_parses_and_names_one_default_model():
    assert DEFAULT_CATALOG == Path(__file__).resolve().parents[1] / "LiverTumorSeg" / "Resources" / "models.json"
    entries = load_catalog()
    assert json.loads(DEFAULT_CATALOG.read_text(encoding="utf-8"))["schema_version"] == 1
    assert [e.default for e in entries].count(True) == 1  # the shipped files themselves: test_shipped_model.py


def test_a_complete_entry_is_read_with_its_types(tmp_path):
    entries = load_catalog(write_catalog(tmp_path / "models.json", ENTRY))
    assert entries == [CatalogEntry(
        id="tiny_liver_tumor", version="1.0.0", title="Tiny REC-UNet", description="for tests", file="tiny_v1.pt",
        url="https://example.org/tiny_v1.pt", sha256="0" * 64, labels=("Liver", "Tumor"), input_spacing_mm=(1.5, 1.5),
        context_slices=0, seconds_cpu=12.5, seconds_gpu=None, hardware="2-core laptop CPU, 512x512x100 CT",
        licence="CC-BY-NC-SA 4.0 (LiTS)", default=True)]


@pytest.mark.parametrize("change, message", [
    (lambda e: e.pop("sha256"), r"models\[0\] \(tiny_liver_tumor\): missing field sha256"),
    (lambda e: e.update(licence_typo="x"), "unknown field licence_typo"),
    (lambda e: e.update(file="../../.bashrc"), "must be a plain file name ending in .pt"),
    (lambda e: e.update(file="tiny.pth"), "must be a plain file name ending in .pt"),
    (lambda e: e.update(sha256="abc"), "sha256 must be 64 lowercase hexadecimal digits"),
    (lambda e: e.update(url="ftp://x"), "url must be empty or start with https://"),
    (lambda e: e.update(labels=[]), "labels must be a non-empty list"),
    (lambda e: e.update(input_spacing_mm=[0, 1]), r"input_spacing_mm must be \[row, column\]"),
    (lambda e: e.update(context_slices=-1), "context_slices must be a non-negative integer"),
    (lambda e: e.update(seconds_cpu="fast"), "seconds_cpu must be a non-negative number or null"),
    (lambda e: e.update(default="yes"), "default must be true or false"),
])
def test_a_malformed_entry_names_the_entry_and_the_field(tmp_path, change, message):
    entry = copy.deepcopy(ENTRY)
    change(entry)
    with pytest.raises(CatalogError, match=message) as err:
        load_catalog(write_catalog(tmp_path / "models.json", entry))
    assert str(tmp_path / "models.json") in str(err.value) and "\n" not in str(err.value)
    assert isinstance(err.value, LiverTumorSegError)


def test_a_malformed_catalogue_errors_clearly(tmp_path):
    bad = tmp_path / "models.json"
    bad.write_text('{"schema_version": 1, "models": [}', encoding="utf-8")
    with pytest.raises(CatalogError, match=r"not valid JSON \(.* at line 1, column \d+\)"):
        load_catalog(bad)
    bad.write_text("[]", encoding="utf-8")
    with pytest.raises(CatalogError, match="the top level must be an object"):
        load_catalog(bad)
    bad.write_text('{"schema_version": 1}', encoding="utf-8")
    with pytest.raises(CatalogError, match="'models' must be a list"):
        load_catalog(bad)
    with pytest.raises(CatalogError, match="schema_version 2, newer than this LiverTumorSeg understands"):
        load_catalog(write_catalog(bad, schema_version=2))
    second = dict(ENTRY, id="other")
    with pytest.raises(CatalogError, match="two entries have the same file 'tiny_v1.pt'"):
        load_catalog(write_catalog(bad, ENTRY, second))
    with pytest.raises(CatalogError, match="more than one default model"):
        load_catalog(write_catalog(bad, ENTRY, dict(second, file="other.pt")))
    with pytest.raises(CatalogError, match="not found"):
        load_catalog(tmp_path / "missing.json")


# --------------------------------------------------------------------------------------------------
# The models folder
# --------------------------------------------------------------------------------------------------


def test_models_folder_precedence_setting_then_environment_then_default(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv(MODELS_DIR_ENV, raising=False)
    default = models_dir()
    assert default == tmp_path / "home" / ".livertumorseg" / "models" and default.is_dir()
    monkeypatch.setenv(MODELS_DIR_ENV, str(tmp_path / "from-env"))
    assert models_dir() == tmp_path / "from-env" and (tmp_path / "from-env").is_dir()
    assert models_dir("") == tmp_path / "from-env"  # an empty setting is no setting
    assert models_dir(str(tmp_path / "from-setting")) == tmp_path / "from-setting"
    assert (tmp_path / "from-setting").is_dir()
    assert models_dir("~/mine") == tmp_path / "home" / "mine"
    monkeypatch.setenv(MODELS_DIR_ENV, "  ")
    assert models_dir() == default


def test_windows_default_is_under_local_app_data(tmp_path):
    assert default_models_dir({"LOCALAPPDATA": str(tmp_path / "Local")}, windows=True) == \
        tmp_path / "Local" / "LiverTumorSeg" / "models"
    assert default_models_dir({}, windows=False) == Path.home() / ".livertumorseg" / "models"


def test_a_models_folder_that_is_a_file_or_cannot_be_created_is_explained(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x", encoding="utf-8")
    with pytest.raises(CatalogError, match="is a file, not a folder"):
        models_dir(str(blocker))
    with pytest.raises(CatalogError, match="cannot create the models folder .*choose a writable folder"):
        models_dir(str(blocker / "below"))


# --------------------------------------------------------------------------------------------------
# What the model selector lists
# --------------------------------------------------------------------------------------------------


def test_available_models_lists_catalogue_entries_and_every_file_unusable_ones_with_the_reason(tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    monkeypatch.setenv("EXPLOIT_MARKER", str(marker))
    folder = tmp_path / "models"
    folder.mkdir()
    entries = load_catalog(write_catalog(tmp_path / "models.json", ENTRY, dict(
        ENTRY, id="not_downloaded", file="later.pt", default=False)))
    tiny_model_file(folder / "tiny_v1.pt", name="catalogued")
    tiny_model_file(folder / "B_trained.pt", name="my own training")
    (folder / "a_truncated.pt").write_bytes((folder / "tiny_v1.pt").read_bytes()[:3000])
    torch.save({"format": "LiverTumorSeg model", "format_version": 1, "payload": _Exploit()}, folder / "evil.pt")
    torch.save({"conv.weight": torch.zeros(2)}, folder / "foreign.pt")
    tiny_model_file(folder / ".tiny.1234abcd.tmp.pt")  # a copy still under way
    (folder / "notes.txt").write_text("not a model", encoding="utf-8")

    listed = available_models(entries, folder)
    assert [m.id for m in listed] == ["tiny_liver_tumor", "not_downloaded", "a_truncated.pt", "B_trained.pt",
                                     "evil.pt", "foreign.pt"]
    catalogued, missing, truncated, trained, evil, foreign = listed
    assert catalogued.installed and catalogued.usable and catalogued.entry == entries[0]
    assert catalogued.config.name == "catalogued" and catalogued.title == "Tiny REC-UNet"
    assert missing == AvailableModel(folder / "later.pt", entries[1], installed=False, usable=False)
    assert trained.usable and trained.entry is None and trained.title == "my own training"
    assert [lab.name for lab in trained.config.labels] == ["Liver", "Tumor"]
    for model, reason in ((truncated, "is corrupt, truncated or not a PyTorch file"),
                          (evil, "contains pickled Python objects"),
                          (foreign, "is a PyTorch file but not a LiverTumorSeg model file")):
        assert model.installed and not model.usable and model.config is None
        assert reason in model.problem and str(model.path) in model.problem and "\n" not in model.problem
    assert not marker.exists()  # listing never runs what a file carries


def test_listing_reads_the_description_without_loading_weights(tmp_path, monkeypatch):
    """A good file is described from its memory-mapped header; the full (slow) load is only for broken files."""
    import LiverTumorSegLib.modelfile as modelfile

    path = tiny_model_file(tmp_path / "m.pt", name="light")

    def no_full_load(*args, **kwargs):
        raise AssertionError("load_model called for a good file")

    monkeypatch.setattr(modelfile, "load_model", no_full_load)
    assert read_model_config(path).name == "light"


def test_weights_that_do_not_fit_the_architecture_are_unusable(tmp_path):
    path = tiny_model_file(tmp_path / "m.pt")
    payload = torch.load(path, weights_only=True)
    payload["config"]["architecture_kwargs"]["base_width"] = 8
    torch.save(payload, tmp_path / "wrong.pt")
    path.unlink()
    assert available_models([], tmp_path / "no-such-folder") == []
    (listed,) = available_models([], tmp_path)
    assert not listed.usable and "weights do not fit architecture rec_unet" in listed.problem


def test_default_model_is_the_installed_default_entry(tmp_path):
    entries = load_catalog(write_catalog(tmp_path / "models.json", ENTRY))
    folder = tmp_path / "models"
    folder.mkdir()
    assert default_model(entries, folder) is None
    tiny_model_file(folder / "tiny_v1.pt")
    assert default_model(entries, folder) == folder / "tiny_v1.pt"
    assert default_model([dataclasses.replace(entries[0], default=False)], folder) is None
    assert default_model([], folder) is None


def test_catalogue_models_that_ship_with_the_extension_are_installed_without_a_download(tmp_path):
    entries = load_catalog(write_catalog(tmp_path / "models.json", ENTRY, dict(
        ENTRY, id="downloaded", file="other.pt", default=False)))
    bundled, folder = tmp_path / "Resources" / "Models", tmp_path / "user-models"
    bundled.mkdir(parents=True)
    folder.mkdir()
    assert default_model(entries, folder, bundled=bundled) is None
    tiny_model_file(bundled / "tiny_v1.pt", name="shipped")
    tiny_model_file(folder / "other.pt", name="downloaded")
    assert default_model(entries, folder, bundled=bundled) == bundled / "tiny_v1.pt"
    shipped, downloaded = available_models(entries, folder, bundled=bundled)
    assert shipped.installed and shipped.usable and shipped.path == bundled / "tiny_v1.pt"
    assert shipped.config.name == "shipped"
    assert downloaded.installed and downloaded.path == folder / "other.pt"
    # a stray copy of the shipped file in the user's folder does not list the model twice
    tiny_model_file(folder / "tiny_v1.pt", name="copy")
    assert [m.id for m in available_models(entries, folder, bundled=bundled)] == ["tiny_liver_tumor", "downloaded"]


# --------------------------------------------------------------------------------------------------
# Checksums
# --------------------------------------------------------------------------------------------------


def test_a_matching_checksum_keeps_the_file(tmp_path):
    path = tiny_model_file(tmp_path / "m.pt")
    verify_sha256(path, sha256(path))
    verify_sha256(path, "SHA256:" + sha256(path).upper())  # as slicer.util.downloadFile takes it
    assert path.is_file()


def test_a_checksum_mismatch_deletes_the_file_and_says_so(tmp_path):
    path = tiny_model_file(tmp_path / "m.pt")
    actual = sha256(path)
    with pytest.raises(ModelFileError) as err:
        verify_sha256(path, "f" * 64)
    assert str(err.value) == (f"checksum mismatch for {path}: expected {'f' * 64}, got {actual}; the file was "
                              f"deleted, download it again")
    assert not path.exists()
    with pytest.raises(CatalogError, match="is not a SHA256 checksum"):
        verify_sha256(tmp_path / "x.pt", "md5:abc")


# --------------------------------------------------------------------------------------------------
# Import model file...
# --------------------------------------------------------------------------------------------------


def test_import_copies_a_valid_model_into_the_folder(tmp_path):
    src = tiny_model_file(tmp_path / "downloads" / "liver.pt", name="imported")
    folder = tmp_path / "models"
    dest = import_model_file(src, folder)
    assert dest == folder / "liver.pt" and dest.read_bytes() == src.read_bytes()
    assert sorted(p.name for p in folder.iterdir()) == ["liver.pt"]  # no temporary file left
    assert import_model_file(src, folder) == dest  # the same file again: nothing to do
    (listed,) = available_models([], folder)
    assert listed.usable and listed.title == "imported"


def test_import_gives_a_model_file_the_pt_suffix(tmp_path):
    src = tiny_model_file(tmp_path / "liver.pt")
    renamed = src.rename(tmp_path / "liver.pth")
    assert import_model_file(renamed, tmp_path / "models") == tmp_path / "models" / "liver.pt"


def test_import_refuses_a_different_file_with_the_same_name_unless_overwrite(tmp_path):
    folder = tmp_path / "models"
    first = import_model_file(tiny_model_file(tmp_path / "a" / "m.pt", seed=1), folder)
    before = first.read_bytes()
    other = tiny_model_file(tmp_path / "b" / "m.pt", seed=2)
    with pytest.raises(CatalogError, match="a different model file named m.pt is already in"):
        import_model_file(other, folder)
    assert first.read_bytes() == before
    assert import_model_file(other, folder, overwrite=True) == first
    assert first.read_bytes() == other.read_bytes()


def test_import_refuses_a_catalogue_models_file_name_for_another_file(tmp_path):
    entries = load_catalog(write_catalog(tmp_path / "models.json", ENTRY))
    src = tiny_model_file(tmp_path / "tiny_v1.pt")
    with pytest.raises(CatalogError, match="is the file name of the catalogue model 'tiny_liver_tumor'"):
        import_model_file(src, tmp_path / "models", catalog=entries)
    matching = [dataclasses.replace(entries[0], sha256=sha256(src))]
    assert import_model_file(src, tmp_path / "models", catalog=matching).is_file()


def test_import_refuses_a_malicious_pickle_without_running_it(tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    monkeypatch.setenv("EXPLOIT_MARKER", str(marker))
    folder = tmp_path / "models"
    evil = tmp_path / "evil.pt"
    torch.save({"format": "LiverTumorSeg model", "format_version": 1, "payload": _Exploit()}, evil)
    raw = tmp_path / "raw.pt"
    raw.write_bytes(pickle.dumps(_Exploit()))
    for path in (evil, raw):
        with pytest.raises(ModelFileError):
            import_model_file(path, folder)
    with pytest.raises(ModelFileError, match="contains pickled Python objects"):
        import_model_file(evil, folder)
    assert not marker.exists()
    assert not folder.exists() or list(folder.iterdir()) == []


def test_import_refuses_corrupt_and_foreign_files_with_the_model_file_messages(tmp_path):
    good = tiny_model_file(tmp_path / "good.pt")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:2000])
    foreign = tmp_path / "foreign.pt"
    torch.save({"conv.weight": torch.zeros(2)}, foreign)
    with pytest.raises(ModelFileError, match="corrupt, truncated or not a PyTorch file"):
        import_model_file(truncated, tmp_path / "models")
    with pytest.raises(ModelFileError, match="not a LiverTumorSeg model file"):
        import_model_file(foreign, tmp_path / "models")
    with pytest.raises(ModelFileError, match="model file not found"):
        import_model_file(tmp_path / "missing.pt", tmp_path / "models")


def test_only_downloaded_or_imported_models_can_be_removed(tmp_path):
    folder = tmp_path / "models"
    imported = import_model_file(tiny_model_file(tmp_path / "liver.pt"), folder)
    elsewhere = tiny_model_file(tmp_path / "other.pt")
    with pytest.raises(LiverTumorSegError, match="only downloaded or imported"):
        remove_model_file(elsewhere, folder)  # not in the models folder: not ours to delete
    with pytest.raises(LiverTumorSegError, match="only downloaded or imported"):
        remove_model_file(folder / ".." / "other.pt", folder)
    assert remove_model_file(imported, folder) == imported and not imported.exists() and elsewhere.exists()
    with pytest.raises(LiverTumorSegError, match="already removed"):
        remove_model_file(imported, folder)

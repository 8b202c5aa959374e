"""Model files round-trip, and anything that is not a safe LiverTumorSeg model file is refused clearly."""

from __future__ import annotations

import os
import pickle
import zipfile

import pytest
import torch

from LiverTumorSegLib.authors import import_authors_weights
from LiverTumorSegLib.errors import ModelFileError
from LiverTumorSegLib.labels import LIVER, TUMOR, VESSEL
from LiverTumorSegLib.modelfile import ModelConfig, load_model, new_model, save_model

from test_models import authors_state_dict


def tiny_config(**over) -> ModelConfig:
    kw = dict(architecture="rec_unet", architecture_kwargs={"in_channels": 3, "out_channels": 2, "base_width": 4},
              labels=(LIVER, TUMOR), context_slices=1, spacing_yx_mm=(1.5, 1.5), window_hu=(-150.0, 250.0),
              thresholds=(0.5, 0.4), min_lesion_mm3=25.0, name="tiny",
              provenance={"trained_on": "phantoms", "epochs": 3}, metrics={"val_dice_liver": 0.91})
    kw.update(over)
    return ModelConfig(**kw)


def test_round_trip_keeps_weights_and_everything_needed(tmp_path):
    model = new_model(tiny_config())
    path = save_model(model, tmp_path / "m.pt")
    loaded = load_model(path)
    assert loaded.config == model.config
    for (k, a), (k2, b) in zip(model.network.state_dict().items(), loaded.network.state_dict().items()):
        assert k == k2 and torch.equal(a, b)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.network(x), loaded.network(x))
    cfg = loaded.config
    assert cfg.labels[1].terminology.count("108369006") == 1 and "10200004" in cfg.labels[0].terminology
    assert cfg.in_channels == 3 and cfg.thresholds == (0.5, 0.4) and cfg.spacing_yx_mm == (1.5, 1.5)
    assert cfg.provenance["epochs"] == 3 and cfg.metrics["val_dice_liver"] == 0.91


def test_half_precision_file_is_smaller_and_loads_as_float32(tmp_path):
    model = new_model(tiny_config(architecture_kwargs={"in_channels": 3, "out_channels": 2, "base_width": 16}))
    full = save_model(model, tmp_path / "full.pt")
    half = save_model(model, tmp_path / "half.pt", half_precision=True)
    assert os.path.getsize(half) < 0.6 * os.path.getsize(full)
    loaded = load_model(half)
    assert all(p.dtype == torch.float32 for p in loaded.network.parameters())
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded.network(x), model.network(x), rtol=2e-2, atol=2e-2)


def test_save_refuses_to_overwrite_and_writes_atomically(tmp_path):
    model = new_model(tiny_config())
    path = save_model(model, tmp_path / "m.pt")
    before = path.read_bytes()
    with pytest.raises(FileExistsError):
        save_model(model, path)
    assert path.read_bytes() == before
    save_model(model, path, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt"]  # no temp files left behind


class _Exploit:
    def __reduce__(self):
        return (os.system, (f"touch {os.environ['EXPLOIT_MARKER']}",))


def test_pickle_with_code_is_refused_and_never_runs(tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    monkeypatch.setenv("EXPLOIT_MARKER", str(marker))
    path = tmp_path / "evil.pt"
    torch.save({"format": "LiverTumorSeg model", "format_version": 1, "payload": _Exploit()}, path)
    with pytest.raises(ModelFileError, match="pickled Python objects"):
        load_model(path)
    with pytest.raises(ModelFileError, match="pickled Python objects"):
        import_authors_weights(path, "rec_unet")
    assert not marker.exists()


def test_raw_pickle_file_is_refused(tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    monkeypatch.setenv("EXPLOIT_MARKER", str(marker))
    path = tmp_path / "evil.pth"
    path.write_bytes(pickle.dumps(_Exploit()))
    with pytest.raises(ModelFileError):
        load_model(path)
    assert not marker.exists()


def test_truncated_corrupt_missing_and_foreign_files(tmp_path):
    good = save_model(new_model(tiny_config()), tmp_path / "good.pt")
    data = good.read_bytes()
    (tmp_path / "trunc.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match="corrupt, truncated"):
        load_model(tmp_path / "trunc.pt")
    (tmp_path / "text.pt").write_text("this is not a model\n", encoding="utf-8")
    with pytest.raises(ModelFileError):
        load_model(tmp_path / "text.pt")
    with pytest.raises(ModelFileError, match="not found"):
        load_model(tmp_path / "missing.pt")
    torch.save({"weights": torch.zeros(3)}, tmp_path / "foreign.pt")
    with pytest.raises(ModelFileError, match="not a LiverTumorSeg model file"):
        load_model(tmp_path / "foreign.pt")
    torch.save(authors_state_dict("rec_unet"), tmp_path / "authors.pth")
    with pytest.raises(ModelFileError, match="import-weights"):
        load_model(tmp_path / "authors.pth")


def test_damaged_entries_are_named(tmp_path):
    model = new_model(tiny_config())
    payload = {"format": "LiverTumorSeg model", "format_version": 99, "config": model.config.to_dict(),
               "state_dict": model.network.state_dict()}
    torch.save(payload, tmp_path / "future.pt")
    with pytest.raises(ModelFileError, match="newer"):
        load_model(tmp_path / "future.pt")
    payload["format_version"] = 1
    state = dict(payload["state_dict"])
    state.pop("Conv.bias")
    payload["state_dict"] = state
    torch.save(payload, tmp_path / "missing_key.pt")
    with pytest.raises(ModelFileError, match="do not fit"):
        load_model(tmp_path / "missing_key.pt")
    payload["state_dict"] = model.network.state_dict()
    payload["config"] = dict(model.config.to_dict(), normalization="zscore_v9")
    torch.save(payload, tmp_path / "norm.pt")
    with pytest.raises(ModelFileError, match="normalization"):
        load_model(tmp_path / "norm.pt")
    payload["config"] = dict(model.config.to_dict(), architecture="resnet9000")
    torch.save(payload, tmp_path / "arch.pt")
    with pytest.raises(ModelFileError, match="resnet9000"):
        load_model(tmp_path / "arch.pt")


@pytest.mark.parametrize("variant", ["rec_unet", "rec_unet_em"])
def test_import_authors_weights(tmp_path, variant):
    state = authors_state_dict(variant)
    torch.save(state, tmp_path / "authors.pth")
    model = import_authors_weights(tmp_path / "authors.pth", variant, "liver,tumor")
    cfg = model.config
    assert cfg.architecture == variant and cfg.architecture_kwargs == {"in_channels": 1, "out_channels": 2,
                                                                        "base_width": 64}
    assert cfg.window_hu == (-200.0, 200.0) and cfg.normalization == "window_to_unit"
    assert cfg.context_slices == 0 and cfg.spacing_yx_mm is None
    assert [lab.name for lab in cfg.labels] == ["Liver", "Tumor"] and cfg.output_activation == "sigmoid"
    assert len(cfg.provenance["sha256"]) == 64
    ours = model.network.state_dict()
    assert all(torch.equal(ours[k[len("module."):]], v) for k, v in state.items())
    path = save_model(model, tmp_path / "converted.pt", half_precision=True)
    assert load_model(path).config == cfg


def test_import_authors_weights_vessel_labels_and_wrong_arch(tmp_path):
    torch.save({"state_dict": authors_state_dict("rec_unet")}, tmp_path / "msd08.pth")
    model = import_authors_weights(tmp_path / "msd08.pth", "rec_unet", "vessel,tumor")
    assert [lab.name for lab in model.config.labels] == ["Vessel", "Tumor"]
    assert model.config.labels[0] == VESSEL
    with pytest.raises(ModelFileError, match="use --arch rec_unet"):
        import_authors_weights(tmp_path / "msd08.pth", "rec_unet_em", "liver,tumor")
    torch.save({"a": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(ModelFileError, match="not a REC-UNet checkpoint"):
        import_authors_weights(tmp_path / "other.pth", "rec_unet")


def test_model_file_is_a_zip_of_plain_data(tmp_path):
    """The file holds only tensors and builtins: it loads with weights_only=True by itself."""
    path = save_model(new_model(tiny_config()), tmp_path / "m.pt")
    assert zipfile.is_zipfile(path)
    payload = torch.load(path, weights_only=True)
    assert payload["format"] == "LiverTumorSeg model" and payload["config"]["architecture"] == "rec_unet"


def test_a_localiser_stage_travels_inside_the_model_file(tmp_path):
    from LiverTumorSegLib.labels import LIVER as liver_label
    from LiverTumorSegLib.modelfile import attach_localizer

    localizer = new_model(tiny_config(labels=(liver_label,), thresholds=(0.5,), spacing_yx_mm=(6.0, 6.0),
                                      architecture_kwargs={"in_channels": 3, "out_channels": 1, "base_width": 2},
                                      name="loc"))
    model = attach_localizer(new_model(tiny_config()), localizer)
    loaded = load_model(save_model(model, tmp_path / "two_stage.pt"))
    assert loaded.localizer is not None and loaded.localizer.config == localizer.config
    for k, v in localizer.network.state_dict().items():
        assert torch.equal(loaded.localizer.network.state_dict()[k], v)
    assert load_model(save_model(attach_localizer(loaded, None), tmp_path / "one.pt")).localizer is None
    with pytest.raises(ValueError, match="organ label"):
        save_model(attach_localizer(model, new_model(tiny_config(labels=(TUMOR,), thresholds=(0.5,),
                   architecture_kwargs={"in_channels": 3, "out_channels": 1, "base_width": 2}))), tmp_path / "x.pt")

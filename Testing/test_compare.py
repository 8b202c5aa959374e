"""``livertumorseg compare``: systems trained on one patient-level fold, run through the pipeline on the same
held-out cases, one table; resumable; a run folder of another recipe is refused."""

from __future__ import annotations

import json

import pytest
import SimpleITK as sitk
import torch

from LiverTumorSegLib.cli import main
from LiverTumorSegLib.errors import LiverTumorSegError
from LiverTumorSegLib.models import model_names
from LiverTumorSegLib.phantom import make_phantom
from LiverTumorSegTrainLib.compare import SYSTEMS, Stage, System, run_compare, stage_config

TINY = dict(spacing_mm=3.0, crop=64, epochs=2, steps_per_epoch=4, batch_size=2, val_every=1, augment=False,
            warmup_epochs=0, lr=3e-3, window_hu=(-100.0, 200.0))

#: a single-network system and a two-stage cascade, tiny
SMALL = (
    System("unet", "U-Net", (Stage("model", "fast-cpu", dict(
        TINY, architecture="unet", base_width=4, arch_args={"depth": 2}, context_slices=0)),), budget_note="tiny"),
    System("resunet", "ResUNet cascade", (
        Stage("liver", "resunet-liver", dict(TINY, base_width=2, arch_args={"norm_momentum": 0.1})),
        Stage("tumour", "resunet-tumor", dict(TINY, base_width=2, arch_args={"norm_momentum": 0.1},
                                              tumor_fraction=0.6))),
        links=("mask:10:mask-input",), budget_note="tiny"),
)


def test_every_declared_system_is_a_valid_recipe_of_a_registered_network(tmp_path):
    assert [s.key for s in SYSTEMS] == ["rec_unet", "cares_unet", "resunet", "raunet", "unet_resnet34"]
    for system in SYSTEMS:
        configs = [stage_config(system, stage, ["DATA"], tmp_path, 3, 0) for stage in system.stages]
        assert all(c.architecture in model_names() for c in configs)
        assert all((c.window_hu, c.window_before_resampling, c.folds, c.fold) == ((-45.0, 160.0), True, 3, 0)
                   for c in configs)
        assert len(system.links) == len(system.stages) - 1 and system.budget_note


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("data")
    for seed in range(3):
        ct, labels = make_phantom(shape_zyx=(24, 48, 48), spacing_zyx=(3.0, 3.0, 3.0), seed=seed,
                                  lesion_diameters_mm=(15.0,))
        sitk.WriteImage(ct, str(folder / f"p{seed}.nii.gz"))
        sitk.WriteImage(labels, str(folder / f"p{seed}_truth.nii.gz"))
    return folder


def test_systems_share_one_fold_and_one_table_and_a_rerun_trains_nothing(data, tmp_path):
    out = tmp_path / "compare"
    report = run_compare([str(data)], out, SMALL, folds=3, fold=0, device="cpu",
                         extra={"cache_dir": str(tmp_path / "cache")}, quiet=True)
    rows = report["rows"]
    assert [r["system"] for r in rows] == ["U-Net", "ResUNet cascade"]
    assert rows[0]["labels"] == ["Liver", "Tumor"] and rows[1]["labels"] == ["Liver", "Tumor"]
    assert rows[1]["stages"] == ["liver", "tumour"] and (out / "resunet" / "model.pt").exists()
    saved = json.loads((out / "compare.json").read_text(encoding="utf-8"))
    (held_out,) = saved["val_cases"]
    for key in ("unet", "resunet"):
        assert (out / key / "predictions" / f"{held_out}.labels.nii.gz").exists()
        assert (out / key / "report.json").exists()
    assert all(r["parameters"] > 0 and r["train_minutes"] > 0 and r["seconds_per_ct"] > 0 for r in rows)
    table = (out / "compare.md").read_text(encoding="utf-8")
    assert "| U-Net |" in table and "| ResUNet cascade |" in table and "1 held-out scans" in table
    assert f"{torch.get_num_threads()} torch threads; torch {torch.__version__}" in table  # seconds name their machine
    assert not any(r["failures"] for r in rows)

    stamps = {p: p.stat().st_mtime_ns for p in out.glob("*/*/checkpoint.pt")}
    assert len(stamps) == 3
    run_compare([str(data)], out, SMALL, folds=3, fold=0, device="cpu", extra={"cache_dir": str(tmp_path / "cache")},
                quiet=True)
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/*/checkpoint.pt")} == stamps  # nothing retrained

    other = (System("unet", "U-Net", (Stage("model", "fast-cpu", dict(SMALL[0].stages[0].budget, lr=1e-2)),)),)
    with pytest.raises(LiverTumorSegError, match="holds a run of another recipe \\(lr differ\\)"):
        run_compare([str(data)], out, other, folds=3, fold=0, device="cpu", quiet=True)


def test_the_command_names_an_unknown_system(data, tmp_path, capsys):
    assert main(["compare", str(data), "-o", str(tmp_path / "c"), "--systems", "rec_unet,vnet"]) == 1
    assert "unknown system 'vnet'; choose from rec_unet, cares_unet" in capsys.readouterr().err

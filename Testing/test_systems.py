"""Every published system the extension offers trains through the real trainer and segments through the real
pipeline, from the CLI and through the module's logic: each network at a tiny width overfits one phantom case."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from LiverTumorSegLib.cli import main
from LiverTumorSegLib.phantom import make_phantom
from LiverTumorSegTrainLib.config import PRESETS, TrainConfig
from LiverTumorSegTrainLib.trainer import train

from conftest import dice

#: (preset, overrides that make it tiny): every architecture the extension offers
SYSTEMS = {
    "cares_unet": ("cares-unet", dict(base_width=4, arch_args={"compressed_channels": 8}, optimizer="adam",
                                      lr=3e-3, labels=["liver"])),
    # the Keras ports keep Keras' slow batch-norm statistics by default (momentum 0.01): after ~100 steps their
    # running statistics still lag the batch ones, so the tests use norm_momentum 0.1
    "resunet": ("resunet-liver", dict(base_width=4, arch_args={"norm_momentum": 0.1}, lr=3e-3, loss="bce_dice")),
    "raunet_2d": ("raunet-2d", dict(arch_args={"filter_num": 2, "norm_momentum": 0.1}, lr=3e-3, loss="bce_dice",
                                    batch_size=2, epochs=14)),
    # 3-D patches must be multiples of 32: the case at 6 mm fits one 32^3 patch
    "raunet_3d": ("raunet-3d-liver", dict(arch_args={"filter_num": 2, "norm_momentum": 0.1}, lr=1e-2, loss="dice",
                                          epochs=12, spacing_mm=6.0, patch_size=[32, 32, 32], stage_margin_mm=None,
                                          batch_size=2)),
    # 41 M parameters at their fixed ResNet-34 widths: few, small batches
    "unet_resnet34": ("unet-resnet34", dict(lr=1e-3, epochs=4, batch_size=2)),
    "unet": ("fast-cpu", dict(architecture="unet", base_width=4, arch_args={"depth": 3}, context_slices=0,
                              labels=["liver"], lr=3e-3)),
}


@pytest.fixture(scope="module")
def one_case(tmp_path_factory):
    folder = tmp_path_factory.mktemp("one-case")
    ct, labels = make_phantom(shape_zyx=(32, 64, 64), spacing_zyx=(3.0, 3.0, 3.0), seed=2, lesion_diameters_mm=(15.0,))
    sitk.WriteImage(ct, str(folder / "case.nii.gz"))
    sitk.WriteImage(labels, str(folder / "case_truth.nii.gz"))
    return folder, ct, sitk.GetArrayFromImage(labels)


@pytest.fixture(scope="module")
def trained(one_case, tmp_path_factory):
    """Model files trained once per module on the phantom case, keyed by a name: the cascades reuse the systems'
    liver stages."""
    folder = one_case[0]
    root = tmp_path_factory.mktemp("runs")
    done: dict[str, Path] = {}

    def get(key: str, preset: str, **overrides) -> Path:
        if key not in done:
            values = {**PRESETS["fast-cpu"], **PRESETS[preset], "preset": preset, "data": [str(folder)],
                      "output": str(root / key), "folds": 0, "epochs": 8, "steps_per_epoch": 12, "crop": 64,
                      "batch_size": 4, "tumor_fraction": 0.0, "background_fraction": 0.0, "augment": False,
                      "warmup_epochs": 0, "spacing_mm": 3.0, "window_hu": (-100.0, 200.0), "device": "cpu",
                      "cache_dir": str(root / "cache"), "calibrate_thresholds": False, **overrides}
            torch.manual_seed(0)
            done[key] = train(TrainConfig(**values), progress=False).model_path
        return done[key]

    return get


@pytest.mark.parametrize("name", list(SYSTEMS))
def test_each_system_overfits_a_phantom_and_segments_it_from_the_cli_and_the_module(name, one_case, trained,
                                                                                     tmp_path):
    from LiverTumorSegModuleLib.jobs import runInProcess

    from LiverTumorSegLib.options import SegmentOptions

    folder, ct, truth = one_case
    preset, overrides = SYSTEMS[name]
    model_path = trained(name, preset, **overrides)
    assert main(["segment", str(folder / "case.nii.gz"), "-o", str(tmp_path / "out"), "--model",
                 str(model_path), "--device", "cpu", "--quiet"]) == 0
    got = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "out" / "case.labels.nii.gz")))
    assert dice(got > 0, truth > 0) >= 0.9, f"{name}: liver Dice {dice(got > 0, truth > 0):.3f}"
    labels, specs, report = runInProcess(ct, model_path, SegmentOptions(device="cpu"))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(labels), got)
    assert [s.name for s in specs] == ["Liver"] and report["labels"] == {"Liver": 1}


#: tumour stages: trained on the reference liver's box (the presets' 10 mm), tumour slices oversampled
TUMOUR_STAGES = {
    "resunet": ("resunet-tumor", dict(base_width=4, arch_args={"norm_momentum": 0.1}, lr=3e-3, loss="bce_dice",
                                      tumor_fraction=0.7, epochs=10)),
    # a 5-voxel lesion in 32^3 patches: filter_num 2 stays below 0.5 probability after 144 steps, 4 learns it
    "raunet_3d": ("raunet-3d-tumor", dict(arch_args={"filter_num": 4, "norm_momentum": 0.1}, lr=3e-3,
                                          loss="bce_dice", tumor_fraction=0.7, epochs=12, patch_size=[32, 32, 32],
                                          batch_size=2)),
}

#: the published cascades as ``livertumorseg cascade`` builds them: stages and the links between them
CASCADES = {
    "ResUNet cascade": (["resunet", "resunet tumour"], ["mask:10:mask-input"]),
    "RA-UNet": (["raunet_2d", "raunet_3d", "raunet_3d tumour"], ["box:10", "mask:10"]),
}


@pytest.mark.parametrize("system", list(CASCADES))
def test_published_cascades_round_trip_and_segment_a_phantom(system, one_case, trained, tmp_path):
    from LiverTumorSegModuleLib.jobs import runInProcess

    from LiverTumorSegLib.modelfile import load_model
    from LiverTumorSegLib.options import SegmentOptions

    folder, ct, truth = one_case
    stage_names, links = CASCADES[system]
    paths = []
    for stage in stage_names:
        name = stage.split()[0]
        preset, overrides = TUMOUR_STAGES[name] if stage.endswith("tumour") else SYSTEMS[name]
        paths.append(str(trained(stage, preset, **overrides)))
    out = tmp_path / "cascade.pt"
    link_args = [a for link in links for a in ("--link", link)]
    assert main(["cascade", *paths, *link_args, "-o", str(out), "--name", system]) == 0

    back = load_model(out)
    stages = [*back.stages_before, back]
    assert [s.config.architecture for s in stages] == [s.split()[0] for s in stage_names]
    assert [lab.name for lab in back.output_labels] == ["Liver", "Tumor"] and back.config.name == system
    assert main(["segment", str(folder / "case.nii.gz"), "-o", str(tmp_path / "out"), "--model", str(out),
                 "--device", "cpu", "--quiet"]) == 0
    got = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "out" / "case.labels.nii.gz")))
    liver, tumour = dice(got > 0, truth > 0), dice(got == 2, truth == 2)
    assert liver >= 0.9 and tumour >= 0.5, f"{system}: liver {liver:.3f}, tumour {tumour:.3f}"
    labels, specs, report = runInProcess(ct, out, SegmentOptions(device="cpu"))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(labels), got)
    assert [s.name for s in specs] == ["Liver", "Tumor"]


def test_cares_unet_semi_supervised_round_from_the_command_line(one_case, trained, tmp_path):
    """README's sequence: a teacher, its pseudo-labels on unlabelled CT, a student trained from scratch on both
    in CARes-UNet's 1:1 batches at full weight (its preset), used like any model."""
    from LiverTumorSegLib.modelfile import load_model

    folder, _, _ = one_case
    preset, overrides = SYSTEMS["cares_unet"]
    teacher = trained("cares_unet", preset, **overrides)
    unlabelled, held_out = tmp_path / "unlabelled", tmp_path / "held-out"
    for seed, where in ((5, unlabelled), (6, unlabelled), (7, held_out)):
        where.mkdir(exist_ok=True)
        ct, labels = make_phantom(shape_zyx=(32, 64, 64), spacing_zyx=(3.0, 3.0, 3.0), seed=seed)
        sitk.WriteImage(ct, str(where / f"p{seed}.nii.gz"))
    assert main(["pseudo-label", str(unlabelled), "-o", str(tmp_path / "pseudo"), "--model", str(teacher),
                 "--device", "cpu", "--quiet"]) == 0
    torch.manual_seed(0)
    assert main(["train", str(folder), "--pseudo", str(tmp_path / "pseudo"), "-o", str(tmp_path / "student"),
                 "--preset", "cares-unet", "--width", "4", "--arch-arg", "compressed_channels=8", "--labels", "liver",
                 "--optimizer", "adam", "--lr", "3e-3", "--epochs", "8", "--steps-per-epoch", "12", "--crop", "64",
                 "--batch-size", "4", "--tumor-fraction", "0", "--no-augment", "--warmup-epochs", "0",
                 "--spacing", "3", "--window", "-100", "200", "--folds", "0", "--device", "cpu",
                 "--cache-dir", str(tmp_path / "cache"), "--quiet"]) == 0
    student = load_model(tmp_path / "student" / "model.pt")
    recipe = student.config.provenance["config"]
    assert (recipe["pseudo_fraction"], recipe["pseudo_weight"], recipe["architecture"]) == (0.5, 1.0, "cares_unet")
    assert main(["segment", str(held_out / "p7.nii.gz"), "-o", str(tmp_path / "out"), "--model",
                 str(tmp_path / "student" / "model.pt"), "--device", "cpu", "--quiet"]) == 0
    got = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "out" / "p7.labels.nii.gz")))
    truth = sitk.GetArrayFromImage(make_phantom(shape_zyx=(32, 64, 64), spacing_zyx=(3.0, 3.0, 3.0), seed=7)[1])
    assert dice(got > 0, truth > 0) >= 0.85, f"student liver Dice {dice(got > 0, truth > 0):.3f}"

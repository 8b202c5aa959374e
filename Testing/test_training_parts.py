"""The training building blocks: splits, sampling, targets, augmentation, losses, optimisers, cache."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from LiverTumorSegLib.errors import LiverTumorSegError
from LiverTumorSegLib.labels import LIVER, TUMOR, VESSEL
from LiverTumorSegLib.phantom import make_phantom
from LiverTumorSegTrainLib.augment import augment
from LiverTumorSegTrainLib.batches import build_batch, channel_targets, epoch_samples
from LiverTumorSegTrainLib.cache import CachedCase, cache_key, prepare_cases
from LiverTumorSegTrainLib.config import PRESETS, TrainConfig, label_specs
from LiverTumorSegTrainLib.datasets import find_cases
from LiverTumorSegTrainLib.losses import bce_dice, soft_dice
from LiverTumorSegTrainLib.optim import Ranger, lr_factor
from LiverTumorSegTrainLib.selection import split_cases


def _cfg(**kw) -> TrainConfig:
    return TrainConfig(**{"data": ["x"], "output": "y", **kw})


def test_split_is_by_patient_seeded_and_covers_every_case_once():
    ids = [f"p{i:02d}" for i in range(17)]
    folds = [split_cases(ids, _cfg(folds=5, fold=k, split_seed=3)) for k in range(5)]
    vals = [set(v) for _, v in folds]
    assert set().union(*vals) == set(ids) and sum(len(v) for v in vals) == 17
    assert all(not (set(t) & v) for (t, _), v in zip(folds, vals))
    assert split_cases(ids, _cfg(folds=5, fold=2, split_seed=3)) == folds[2]
    assert split_cases(ids, _cfg(folds=5, fold=2, split_seed=4)) != folds[2]
    assert split_cases(ids, _cfg(val_cases=["p03"]))[1] == ["p03"]


def test_split_never_separates_a_patient_group_and_without_groups_is_unchanged():
    ids = [f"a{i:02d}" for i in range(10)] + [f"rep{i}" for i in range(6)]
    groups = {f"rep{i}": f"patient{i // 3}" for i in range(6)}  # two patients scanned three times each
    for k in range(4):
        train, val = split_cases(ids, _cfg(folds=4, fold=k), groups)
        for g in ("patient0", "patient1"):
            members = {i for i, grp in groups.items() if grp == g}
            assert members <= set(train) or members <= set(val)
    vals = [set(split_cases(ids, _cfg(folds=4, fold=k), groups)[1]) for k in range(4)]
    assert set().union(*vals) == set(ids) and sum(map(len, vals)) == len(ids)
    assert split_cases(ids, _cfg(folds=4, fold=1), {}) == split_cases(ids, _cfg(folds=4, fold=1))
    with pytest.raises(LiverTumorSegError, match="rep1 is in patient group patient0 with a validation case"):
        split_cases(ids, _cfg(val_cases=["rep0"]), groups)
    with pytest.raises(LiverTumorSegError, match="3 patient groups cannot make 4 folds"):
        split_cases(["rep0", "rep1", "rep2", "rep3", "x"], _cfg(folds=4), groups)


def test_a_window_outside_a_cases_valid_hu_is_refused_naming_the_case():
    from LiverTumorSegTrainLib.datasets import LabeledCase
    from LiverTumorSegTrainLib.selection import check_window_inside_valid_hu

    lits = LabeledCase("lits18_v004", "npz", ("liver", "tumor"), Path("x.npz"), hu_valid=(-45.0, 160.0))
    full = LabeledCase("ct", "lits", ("liver", "tumor"), Path("y.nii"))
    check_window_inside_valid_hu((-45.0, 160.0), [lits, full])
    with pytest.raises(LiverTumorSegError, match=r"case lits18_v004: its HU are valid only in \[-45, 160\].*"
                                                  r"--window -45 160"):
        check_window_inside_valid_hu((-200.0, 250.0), [full, lits])


def test_context_in_millimetres_interpolates_between_slices_and_training_matches_inference():
    """Neighbours 2 mm apart on a 4 mm scan fall half-way between slices; on a 1 mm scan two slices away.
    The training batch and the inference input are built by the same function and must agree exactly."""
    from LiverTumorSegLib.context import context_positions, context_step_slices, read_context

    vol = np.arange(10, dtype=np.float32)[:, None, None] * np.ones((1, 4, 4), np.float32) * 10  # slice z = 10 z
    pos = context_positions(np.array([0, 5, 9]), 1, context_step_slices(2.0, 4.0), 10)
    got = read_context(lambda idx: vol[idx], pos, 10)[..., 0, 0]
    np.testing.assert_allclose(got, [[0, 0, 5], [45, 50, 55], [85, 90, 90]])
    pos = context_positions(np.array([5]), 2, context_step_slices(2.0, 1.0), 10)
    np.testing.assert_allclose(read_context(lambda idx: vol[idx], pos, 10)[0, :, 0, 0], [10, 30, 50, 70, 90])
    # slice-counted models (no step in mm) read the stored slices bit for bit
    assert context_step_slices(None, 4.0) == 1.0
    raw = np.random.default_rng(0).normal(size=(6, 3, 3)).astype(np.float32)
    pos = context_positions(np.arange(6), 1, 1.0, 6)
    np.testing.assert_array_equal(read_context(lambda idx: raw[idx], pos, 6),
                                  raw[np.clip(np.arange(6)[:, None] + [-1, 0, 1], 0, 5)])

    case = _case(0)  # 2 mm slices
    sample = epoch_samples([case], 1, 0, 0, 1.0, 0.0)[0]
    hu, _, _ = build_batch([case], [sample], (LIVER, TUMOR), context=1, crop=None, multiple=16, epoch=0, seed=0,
                           context_step_mm=3.0)
    z = sample.z
    lo, hi = max(z - 1.5, 0), min(z + 1.5, 19)
    expect = [case.image[int(p)] * (1 - p % 1) + case.image[min(int(p) + 1, 19)] * (p % 1) for p in (lo, z, hi)]
    np.testing.assert_allclose(hu[0, :, :40, :40].numpy(), np.stack(expect), rtol=1e-5)


def _case(seed: int, tumor: bool = True) -> CachedCase:
    rng = np.random.default_rng(seed)
    labels = np.zeros((20, 40, 40), np.uint8)
    labels[5:15, 10:30, 10:30] = 1
    if tumor:
        labels[8:10, 15:20, 15:20] = 2
    image = rng.integers(-100, 200, labels.shape).astype(np.int16)
    organ = np.flatnonzero(labels.any(axis=(1, 2)))
    lesion = np.flatnonzero((labels == 2).any(axis=(1, 2)))
    return CachedCase(f"c{seed}", image, labels, (2.0, 1.0, 1.0), organ, lesion)


def test_epoch_samples_are_deterministic_and_oversample_tumour():
    cases = [_case(0), _case(1, tumor=False)]
    a = epoch_samples(cases, 2000, epoch=3, seed=7, tumor_fraction=0.5, background_fraction=0.1)
    assert a == epoch_samples(cases, 2000, epoch=3, seed=7, tumor_fraction=0.5, background_fraction=0.1)
    assert a != epoch_samples(cases, 2000, epoch=4, seed=7, tumor_fraction=0.5, background_fraction=0.1)
    tumour = np.mean([s.z in cases[s.case].lesion_slices and s.case == 0 for s in a])
    assert 0.5 <= tumour < 0.65  # 50 % drawn from tumour slices, plus the tumour slices hit by chance
    background = np.mean([s.z not in cases[s.case].organ_slices for s in a])
    assert 0.03 < background < 0.12


def test_pseudo_fraction_fixes_the_share_of_pseudo_labelled_samples_whatever_their_number():
    """CARes-UNet's 1:1 batches: 3 labelled and 30 pseudo-labelled cases give half and half, not 1 in 11."""
    cases = [_case(seed, tumor=seed % 2 == 0) for seed in range(33)]
    alike = epoch_samples(cases, 3000, epoch=0, seed=1, tumor_fraction=0.3, background_fraction=0.1)
    assert alike == epoch_samples(cases, 3000, epoch=0, seed=1, tumor_fraction=0.3, background_fraction=0.1,
                                  pseudo_fraction=None, n_labelled=3)  # unchanged without the option
    assert np.mean([s.case < 3 for s in alike]) < 0.15
    half = epoch_samples(cases, 3000, epoch=0, seed=1, tumor_fraction=0.3, background_fraction=0.1,
                         pseudo_fraction=0.5, n_labelled=3)
    assert 0.46 < np.mean([s.case < 3 for s in half]) < 0.54
    tumour_labelled = [s for s in half if s.case < 3 and s.z in cases[s.case].lesion_slices]
    assert {s.case for s in tumour_labelled} == {0, 2}  # tumour oversampling stays inside each group


def test_channel_targets_nest_lesions_in_the_organ_only():
    labels = np.array([[0, 1, 2]], np.uint8)
    np.testing.assert_array_equal(channel_targets(labels, (LIVER, TUMOR)), [[[0, 1, 1]], [[0, 0, 1]]])
    vessel = label_specs(("vessel", "tumor"))
    assert vessel[0].name == VESSEL.name and vessel[0].role == "structure"
    np.testing.assert_array_equal(channel_targets(labels, vessel), [[[0, 1, 0]], [[0, 0, 1]]])


def test_build_batch_crops_contain_foreground_and_context_is_ordered():
    case = _case(0)
    samples = epoch_samples([case], 6, 0, 0, 1.0, 0.0)
    hu, y, w = build_batch([case], samples, (LIVER, TUMOR), context=1, crop=32, multiple=16, epoch=0, seed=0)
    assert hu.shape == (6, 3, 32, 32) and y.shape == (6, 2, 32, 32) and torch.all(w == 1)
    assert torch.all(y[:, 1].flatten(1).sum(1) > 0)  # tumour slices: the crop holds tumour
    s = samples[0]
    full, _, _ = build_batch([case], [s], (LIVER, TUMOR), context=1, crop=None, multiple=16, epoch=0, seed=0)
    zs = np.clip([s.z - 1, s.z, s.z + 1], 0, 19)
    np.testing.assert_array_equal(full[0, :, :40, :40].numpy(), case.image[zs])
    assert torch.all(full[0, :, 40:, :] == -1024)  # padded to a multiple of 16 with air


def test_augmentation_is_seeded_and_moves_image_and_labels_together():
    yy, xx = torch.meshgrid(torch.arange(64), torch.arange(64), indexing="ij")
    mask = (((yy - 30) ** 2 + (xx - 36) ** 2) < 15 ** 2).float()
    x = (mask * 1.2 - 0.6).expand(4, 3, 64, 64).clone()
    y = mask.expand(4, 1, 64, 64).clone()
    seeds = [(0, 1, i) for i in range(4)]
    xa, ya = augment(x.clone(), y.clone(), seeds)
    xb, yb = augment(x.clone(), y.clone(), seeds)
    assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert not torch.equal(xa, x)
    for i in range(4):  # the label still marks the bright disc wherever geometry moved it
        inside, outside = xa[i, 1][ya[i, 0] > 0], xa[i, 1][ya[i, 0] == 0]
        assert inside.mean() > outside.mean() + 0.6


def test_intensity_augmentation_strength_follows_the_configuration():
    """The same seeds draw the same shifts, scaled to the configured range: a liver at 26 HU or 165 HU
    (both in 3D-IRCADb) must be reachable from a typical 100 HU one."""
    x = torch.full((64, 1, 16, 16), 0.33)  # 100 HU in the [-200, 250] window
    y = torch.zeros(64, 1, 16, 16)
    seeds = [(0, 3, i) for i in range(64)]

    def centres(shift: float, scale: float) -> torch.Tensor:
        xa, _ = augment(x.clone(), y.clone(), seeds, intensity_shift=shift, intensity_scale=scale)
        return xa[:, 0, 6:10, 6:10].mean(dim=(1, 2))

    mild, strong = centres(0.08, 0.1), centres(0.3, 0.25)
    assert torch.equal(centres(0.08, 0.1), augment(x.clone(), y.clone(), seeds)[0][:, 0, 6:10, 6:10].mean(dim=(1, 2)))
    assert mild.min() > 0.33 - 0.25 and mild.max() < 0.33 + 0.25
    assert strong.min() < 0.0 and strong.max() > 0.6  # 26 HU is 0.0, 165 HU is 0.62


def test_bce_dice_matches_the_authors_formula():
    torch.manual_seed(0)
    z, t = torch.randn(3, 2, 8, 8), (torch.rand(3, 2, 8, 8) > 0.7).float()
    p = torch.sigmoid(z)
    bce = -(t * torch.log(p) + (1 - t) * torch.log(1 - p)).mean()
    d = [(2 * (p[:, c] * t[:, c]).flatten(1).sum(1) + 1e-5) / (p[:, c].flatten(1).sum(1) + t[:, c].flatten(1).sum(1)
                                                            + 1e-5) for c in range(2)]
    expected = bce + 0.5 * ((1 - d[0].mean()) + (1 - d[1].mean()))
    torch.testing.assert_close(bce_dice(z, t).mean(), expected, rtol=1e-5, atol=1e-6)
    assert soft_dice(torch.full((1, 1, 4, 4), 20.0), torch.ones(1, 1, 4, 4)).item() == pytest.approx(1.0, abs=1e-6)


def test_ranger_centralises_gradients_and_syncs_lookahead_every_k_steps():
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(3, 4))
    opt = Ranger([w], lr=0.1, k=3)
    start = w.detach().clone()
    for step in range(1, 4):
        opt.zero_grad()
        (w * torch.arange(12.0).view(3, 4)).sum().backward()
        grad = w.grad.clone()
        opt.step()
        assert torch.allclose(w.grad.sum(dim=1), torch.zeros(3), atol=1e-5)  # centralised in place
        assert not torch.allclose(grad.sum(dim=1), torch.zeros(3))
    slow = opt.state[w]["slow_buffer"]
    assert torch.equal(slow, w.detach())  # after k steps the weights are the synced slow weights
    assert not torch.equal(slow, start)
    state = opt.state_dict()
    assert state["param_groups"][0]["lookahead_step"] == 3


def test_recunet_lits_schedule_and_cosine_warmup():
    cfg = _cfg(**PRESETS["rec-unet-lits"])
    lrs = [cfg.lr * lr_factor(cfg, e) for e in range(cfg.epochs)]
    assert cfg.epochs == 120 and lrs[0] == pytest.approx(3e-4) and lrs[99] == pytest.approx(3e-4)
    assert lrs[100] == pytest.approx(1e-4) and lrs[119] == pytest.approx(1e-4)
    cos = _cfg(schedule="cosine", warmup_epochs=2, epochs=10)
    f = [lr_factor(cos, e) for e in range(10)]
    assert f[0] < f[1] < f[2] == pytest.approx(1.0) and f[-1] < 0.1 and all(a >= b for a, b in zip(f[2:], f[3:]))


def test_clipping_before_resampling_is_the_same_in_the_training_cache_and_in_the_pipeline(tmp_path):
    """With ``window_before_resampling`` no resampled edge mixes HU outside the window (fat at -100 HU next to
    liver reads as if fat were -45): a cached training slice and the pipeline's network input agree."""
    from LiverTumorSegLib.inference import make_plan, network_input, normalize_hu
    from LiverTumorSegLib.modelfile import ModelConfig

    ct, labels = make_phantom(shape_zyx=(10, 120, 128), spacing_zyx=(3.0, 0.7, 0.7), seed=2, lesion_diameters_mm=())
    data = tmp_path / "data"
    data.mkdir()
    sitk.WriteImage(ct, str(data / "a.nii.gz"))
    sitk.WriteImage(labels, str(data / "a_truth.nii.gz"))
    case = find_cases(data)[0]
    window = (-45.0, 160.0)
    clipped = prepare_cases([case], tmp_path / "cache", 1.5, (2,), progress=False, clip_hu=window)[0]
    plain = prepare_cases([case], tmp_path / "cache", 1.5, (2,), progress=False)[0]
    assert cache_key(case, 1.5, (2,), window) != cache_key(case, 1.5, (2,))
    assert clipped.image.min() >= -45 and clipped.image.max() <= 160
    assert np.any(np.clip(plain.image, -45, 160) != clipped.image)  # the order matters at edges
    cfg = ModelConfig(architecture="rec_unet", architecture_kwargs={}, labels=(LIVER, TUMOR), window_hu=window,
                      spacing_yx_mm=(1.5, 1.5), window_before_resampling=True, size_multiple=1)
    model = type("M", (), {"config": cfg})()
    hu = sitk.GetArrayFromImage(ct)
    plan = make_plan(model, hu.shape, (3.0, 0.7, 0.7), torch.device("cpu"))
    x = network_input(torch.from_numpy(hu[3:4].astype(np.float32))[None], plan, model)[0, 0]
    expect = normalize_hu(torch.from_numpy(clipped.image[3].astype(np.float32)), window)
    torch.testing.assert_close(x, expect, atol=0.5 / 102.5 + 1e-6, rtol=0)  # the cache rounds to whole HU


def test_cache_is_built_once_and_invalidated_by_settings_and_edits(tmp_path):
    ct, labels = make_phantom(shape_zyx=(16, 48, 56), spacing_zyx=(3.0, 1.5, 1.5), seed=1, orientation="RAS",
                              lesion_diameters_mm=(10.0,))
    data = tmp_path / "data"
    data.mkdir()
    sitk.WriteImage(ct, str(data / "a.nii.gz"))
    sitk.WriteImage(labels, str(data / "a_truth.nii.gz"))
    case = find_cases(data)[0]
    cached = prepare_cases([case], tmp_path / "cache", 2.0, (2,), progress=False)[0]
    # canonical (LPS) orientation and 2 mm grid: the same arrays the inference pipeline would build
    lps = sitk.GetArrayFromImage(sitk.DICOMOrient(labels, "LPS"))
    assert cached.image.dtype == np.int16 and cached.labels.shape == (16, 36, 42)
    assert abs(int(np.count_nonzero(cached.labels)) * 2.0 * 2.0 - np.count_nonzero(lps) * 1.5 * 1.5) \
        < 0.05 * np.count_nonzero(lps) * 1.5 * 1.5
    assert list(cached.organ_slices) == list(np.flatnonzero(lps.any(axis=(1, 2))))
    assert cache_key(case, 2.0, (2,)) != cache_key(case, 1.5, (2,))
    before = cache_key(case, 2.0, (2,))
    native = prepare_cases([case], tmp_path / "cache", None, (2,), progress=False)[0]
    np.testing.assert_array_equal(native.labels, lps)
    assert len(list((tmp_path / "cache").iterdir())) == 2
    sitk.WriteImage(sitk.Cast(labels * 0, sitk.sitkUInt8), str(data / "a_truth.nii.gz"))  # the labels change
    assert cache_key(case, 2.0, (2,)) != before
    assert math.isclose(cached.spacing_zyx[1], 1.5 * 48 / 36)


def _calibrate_oracle(small_phantom, tumour_level: float):
    """An oracle whose tumour channel ramps around ``tumour_level``: (model, uncalibrated, calibrated result)."""
    from LiverTumorSegLib.modelfile import ModelConfig, SegmentationModel
    from LiverTumorSegTrainLib.selection import calibrate_thresholds, validate

    from conftest import OracleNet, encode_labels

    ct, truth = small_phantom
    levels = (0.25, tumour_level)
    model = SegmentationModel(OracleNet(levels=levels), ModelConfig("test_oracle", {"levels": levels}, (LIVER, TUMOR),
                                                                    min_lesion_mm3=0.0))
    val = [("a", encode_labels(ct, truth), truth)]
    baseline = validate(model, val, "cpu")
    return model, baseline, calibrate_thresholds(model, val, "cpu", baseline)


def test_threshold_calibration_finds_the_under_confident_lesion_threshold(small_phantom):
    # tumour voxels (0.9 after windowing) get probability sigmoid(200 * (0.9 - 0.9031)) = 0.35 only
    model, baseline, result = _calibrate_oracle(small_phantom, 0.9031)
    assert baseline["dice"]["tumor"] == 0.0 and baseline["dice"]["liver"] == 1.0
    assert model.config.thresholds == (0.5, 0.3)
    assert result["dice"] == {"liver": 1.0, "tumor": 1.0}


def test_threshold_calibration_also_raises_an_over_confident_lesion_threshold(small_phantom):
    # liver voxels (0.5 after windowing) get tumour probability sigmoid(200 * (0.5 - 0.4945)) = 0.75
    model, baseline, result = _calibrate_oracle(small_phantom, 0.4945)
    assert baseline["dice"]["tumor"] < 0.5
    assert model.config.thresholds == (0.5, 0.8)
    assert result["dice"] == {"liver": 1.0, "tumor": 1.0}


def test_epoch_selection_scores_lesions_globally_so_predicting_no_tumour_cannot_win(small_phantom):
    """Two of three validation cases are tumour-free: per-case tumour Dice gives a model that predicts no
    tumour 2/3 and a model that finds the tumour (and the same bright spots in the tumour-free cases) 1/3;
    the selection score must still prefer the one that finds tumours."""
    from LiverTumorSegLib.modelfile import ModelConfig, SegmentationModel
    from LiverTumorSegTrainLib.selection import validate

    from conftest import OracleNet, encode_labels

    ct, truth = small_phantom
    no_tumour = sitk.Cast(sitk.Clamp(truth, upperBound=1), truth.GetPixelID())  # tumour counted as liver
    encoded = encode_labels(ct, truth)
    val = [("a", encoded, truth), ("b", encoded, no_tumour), ("c", encoded, no_tumour)]

    def score(tumour_level: float, lesion_floor: float = 0.0) -> dict:
        levels = (0.25, tumour_level)
        model = SegmentationModel(OracleNet(levels=levels),
                                  ModelConfig("test_oracle", {"levels": levels}, (LIVER, TUMOR), min_lesion_mm3=0.0))
        return validate(model, val, "cpu", lesion_floor=lesion_floor)

    finds, blind = score(0.7), score(0.95)
    assert finds["dice"]["tumor"] == pytest.approx(1 / 3) and blind["dice"]["tumor"] == pytest.approx(2 / 3)
    assert finds["global_dice"]["tumor"] == pytest.approx(0.5) and blind["global_dice"]["tumor"] == 0.0
    assert finds["dice"]["liver"] == blind["dice"]["liver"] == 1.0
    assert finds["score"] == pytest.approx(0.75) and blind["score"] == pytest.approx(0.5)
    # below the floor a lesion Dice is noise: it ranks nothing, so the organ alone decides
    assert score(0.7, lesion_floor=0.6)["score"] == pytest.approx(0.5)
    assert score(0.7, lesion_floor=0.5)["score"] == pytest.approx(0.75)

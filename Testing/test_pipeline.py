"""The one pipeline: exact geometry round trips, 2.5-D context, resampling, batching, progress."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from LiverTumorSegLib.errors import SegmentationCancelled
from LiverTumorSegLib.labels import LIVER, TUMOR
from LiverTumorSegLib.modelfile import ModelConfig, SegmentationModel, new_model
from LiverTumorSegLib.phantom import make_phantom, rotate_direction
from LiverTumorSegLib.pipeline import run_segmentation, segment

from conftest import dice, encode_labels, oracle_model

GEOMETRY_CASES = [  # (shape zyx, spacing zyx, orientation, degrees of obliquity about z)
    ((30, 75, 90), (3.0, 1.8, 1.8), "LPS", 0),
    ((27, 64, 83), (2.5, 1.4, 1.6), "RAS", 0),
    ((33, 70, 70), (4.0, 2.0, 2.0), "PIR", 0),
    ((25, 61, 77), (2.0, 2.2, 1.9), "SAL", 0),
    ((31, 66, 72), (3.3, 1.7, 1.7), "LPI", 0),
    ((29, 80, 69), (2.7, 2.0, 2.4), "RAI", 0),
    ((30, 72, 88), (3.0, 1.9, 1.9), "LPS", 12),
    ((28, 70, 81), (2.8, 1.8, 2.1), "ASL", -7),
]


def same_geometry(a: sitk.Image, b: sitk.Image) -> bool:
    return (a.GetSize() == b.GetSize() and np.allclose(a.GetSpacing(), b.GetSpacing(), atol=0)
            and np.allclose(a.GetOrigin(), b.GetOrigin(), atol=0)
            and np.allclose(a.GetDirection(), b.GetDirection(), atol=0))


@pytest.mark.parametrize("shape,spacing,orientation,oblique", GEOMETRY_CASES)
def test_truth_model_reproduces_phantom_labels_exactly(shape, spacing, orientation, oblique):
    """Any error in reorientation, padding, batching or their inverses changes voxels here."""
    ct, truth = make_phantom(shape_zyx=shape, spacing_zyx=spacing, seed=sum(shape), orientation=orientation,
                             lesion_diameters_mm=(10.0, 16.0))
    if oblique:
        ct, truth = rotate_direction(ct, oblique), rotate_direction(truth, oblique)
    image = encode_labels(ct, truth)
    result = run_segmentation(image, oracle_model(), device="cpu", batch_size=7)
    assert same_geometry(result.labels, image)
    assert result.labels.GetPixelID() == sitk.sitkUInt8
    expected = sitk.GetArrayViewFromImage(truth)
    got = sitk.GetArrayViewFromImage(result.labels)
    assert np.count_nonzero(expected == 2) > 0
    np.testing.assert_array_equal(got, expected)


def random_tiny_model(seed: int) -> SegmentationModel:
    """An untrained REC-UNet (width 4): spatially non-trivial, smooth probabilities, no trained answer."""
    torch.manual_seed(seed)
    return new_model(ModelConfig("rec_unet", {"in_channels": 3, "out_channels": 2, "base_width": 4}, (LIVER, TUMOR),
                                 context_slices=1, thresholds=(0.5, 0.5), min_lesion_mm3=0.0))


@pytest.mark.parametrize("orientation", ["RAS", "PIR", "SAL", "ILA"])
def test_network_sees_the_same_canonical_input_whatever_the_orientation(orientation, small_phantom):
    """A random (spatially non-trivial) network gives the same answer in physical space for any layout."""
    ct, _ = small_phantom
    model = random_tiny_model(seed=0)
    logits = []
    hook = model.network.register_forward_hook(lambda m, i, o: logits.append(o))
    segment(ct, model, device="cpu")
    hook.remove()
    # thresholds at each channel's median probability, so that both outcomes occur everywhere
    probs = torch.sigmoid(torch.cat(logits))
    thresholds = tuple(float(probs[:, c].median()) for c in range(2))
    reference = sitk.GetArrayFromImage(segment(ct, model, device="cpu", thresholds=thresholds))
    assert 0 < np.count_nonzero(reference) < reference.size  # the test needs a non-trivial output
    moved = segment(sitk.DICOMOrient(ct, orientation), model, device="cpu", thresholds=thresholds)
    back = sitk.GetArrayFromImage(sitk.DICOMOrient(moved, "LPS"))
    np.testing.assert_array_equal(back, reference)


def test_lps_input_reaches_the_network_unchanged_and_windowed(small_phantom):
    ct, _ = small_phantom
    seen = []
    model = oracle_model()
    model.network.register_forward_hook(lambda m, inp, out: seen.append(inp[0].clone()))
    segment(ct, model, device="cpu", batch_size=64)
    x = torch.cat(seen)[:, 0]
    z, h, w = ct.GetSize()[::-1]
    assert x.shape == (z, 80, 96)  # padded up to multiples of 16
    hu = torch.from_numpy(sitk.GetArrayFromImage(ct)).float()
    torch.testing.assert_close(x[:, :h, :w], hu.clamp(-200, 200) / 200)
    assert torch.all(x[:, h:, :] == -1) and torch.all(x[:, :, w:] == -1)


@pytest.mark.parametrize("channel,shift", [(0, -1), (1, 0), (2, 1)])
def test_context_slices_are_in_order_and_clamped_at_the_ends(channel, shift, small_phantom):
    """Channel j of a 2k+1 stack is slice z-k+j: a model reading channel 0 predicts the slice below."""
    ct, truth = small_phantom
    image = encode_labels(ct, truth)
    got = sitk.GetArrayFromImage(run_segmentation(image, oracle_model(context_slices=1, channel=channel),
                                                  device="cpu", batch_size=4).labels)
    t = sitk.GetArrayFromImage(truth)
    idx = np.clip(np.arange(t.shape[0]) + shift, 0, t.shape[0] - 1)
    np.testing.assert_array_equal(got, t[idx])


@pytest.mark.parametrize("orientation", ["LPS", "PIR"])
def test_context_in_millimetres_reaches_the_same_anatomy_at_any_slice_spacing(orientation):
    """A 6 mm context step is two slices of a 3 mm scan and half a slice of a 12 mm one (interpolated:
    the oracle's threshold then sees the mean of two slices)."""
    ct, truth = make_phantom(shape_zyx=(24, 60, 70), spacing_zyx=(3.0, 1.8, 1.8), seed=4, orientation=orientation,
                             lesion_diameters_mm=(15.0,))
    image = encode_labels(ct, truth)
    model = oracle_model(context_slices=1, channel=2, context_step_mm=6.0)
    got = sitk.GetArrayFromImage(sitk.DICOMOrient(run_segmentation(image, model, device="cpu").labels, "LPS"))
    t = sitk.GetArrayFromImage(sitk.DICOMOrient(truth, "LPS"))
    np.testing.assert_array_equal(got, t[np.clip(np.arange(t.shape[0]) + 2, 0, t.shape[0] - 1)])



def test_context_in_millimetres_interpolates_between_thick_slices():
    ct, truth = make_phantom(shape_zyx=(24, 60, 70), spacing_zyx=(12.0, 1.8, 1.8), seed=4, lesion_diameters_mm=(15.0,))
    image = encode_labels(ct, truth)
    got = sitk.GetArrayFromImage(run_segmentation(image, oracle_model(context_slices=1, channel=2, context_step_mm=6.0),
                                                  device="cpu").labels)
    hu = sitk.GetArrayFromImage(image).astype(np.float32)
    half = (hu + hu[np.clip(np.arange(hu.shape[0]) + 1, 0, hu.shape[0] - 1)]) / 2  # the slice at z + 6 mm
    expect = np.where(half.clip(-200, 200) / 200 > 0.7, 2, np.where(half.clip(-200, 200) / 200 > 0.25, 1, 0))
    assert dice(got > 0, expect > 0) > 0.98  # post-processing (largest component) may trim specks
    assert dice(got == 2, expect == 2) > 0.9


@pytest.mark.parametrize("spacing_yx", [(2.6, 2.6), (1.0, 1.2)])
@pytest.mark.parametrize("orientation", ["LPS", "PIR"])
def test_inplane_resampling_round_trip(spacing_yx, orientation):
    ct, truth = make_phantom(shape_zyx=(24, 90, 101), spacing_zyx=(3.0, 1.6, 1.7), seed=5,
                             orientation=orientation, lesion_diameters_mm=(18.0,))
    result = run_segmentation(encode_labels(ct, truth), oracle_model(spacing_yx_mm=spacing_yx), device="cpu")
    assert same_geometry(result.labels, ct)
    got = sitk.GetArrayFromImage(sitk.DICOMOrient(result.labels, "LPS"))
    t = sitk.GetArrayFromImage(sitk.DICOMOrient(truth, "LPS"))
    assert dice(got > 0, t > 0) > 0.95 and dice(got == 2, t == 2) > 0.8
    # no systematic shift: the liver's centre lands within a fraction of a voxel
    sp = np.array(sitk.DICOMOrient(ct, "LPS").GetSpacing())[::-1]
    shift_mm = (np.array(np.nonzero(got)).mean(1) - np.array(np.nonzero(t)).mean(1)) * sp
    assert np.all(np.abs(shift_mm) < 0.3), shift_mm


def test_postprocessing_keeps_largest_liver_fills_holes_and_filters_lesions(small_phantom):
    ct, truth = small_phantom
    t = sitk.GetArrayFromImage(truth)
    spacing = np.array(ct.GetSpacing())[::-1]
    noisy = t.copy()
    inner = sitk.GetArrayFromImage(sitk.BinaryErode(sitk.GetImageFromArray((t > 0).astype(np.uint8)), [1, 1, 1]))
    zs, ys, xs = np.nonzero((inner > 0) & (t == 1))
    noisy[zs[len(zs) // 2], ys[len(ys) // 2], xs[len(xs) // 2]] = 0  # a hole inside the liver
    noisy[1:3, 2:5, -6:-3] = 1                                    # a separate blob far from the liver
    noisy[1:2, 8:9, -10:-9] = 2                                   # a "tumour" outside the liver
    body = sitk.GetArrayFromImage(ct)
    image = encode_labels(ct, sitk.Cast(_like(noisy, truth), sitk.sitkUInt8))
    got = sitk.GetArrayFromImage(segment(image, oracle_model(min_lesion_mm3=0.0), device="cpu"))
    np.testing.assert_array_equal(got, t)
    assert body.shape == got.shape
    # a minimum lesion volume between the two lesions' volumes removes only the smaller one
    vol = [np.count_nonzero(c) * spacing.prod() for c in _components(t == 2)]
    cut = (min(vol) + max(vol)) / 2
    got = sitk.GetArrayFromImage(segment(encode_labels(ct, truth), oracle_model(), device="cpu", min_lesion_mm3=cut))
    assert len(_components(got == 2)) == 1 and np.count_nonzero(got == 2) * spacing.prod() == pytest.approx(max(vol))
    assert np.array_equal(got > 0, t > 0)  # removed lesions stay liver


def test_lesions_carry_their_mean_probability_and_a_keep_threshold_drops_unconfident_ones(small_phantom):
    """The oracle's tumour probability is sigmoid(HU - 140): a lesion at 142 HU has confidence 0.88, one at
    180 HU 1.0. The report shows each lesion's confidence; a keep-threshold of 0.95 removes the first only."""
    from LiverTumorSegLib.report import segmentation_report

    ct, truth = small_phantom
    t = sitk.GetArrayFromImage(truth)
    lesions = _components(t == 2)
    hu = sitk.GetArrayFromImage(encode_labels(ct, truth)).astype(np.int16)
    hu[lesions[0]] = 142
    image = _like(hu, truth)
    result = run_segmentation(image, oracle_model(), device="cpu")
    report = segmentation_report(result)
    by_size = {round(les["volume_ml"] * 1000 / np.prod(ct.GetSpacing())): les for les in report["lesions"]}
    weak, strong = by_size[np.count_nonzero(lesions[0])], by_size[np.count_nonzero(lesions[1])]
    assert weak["confidence"] == pytest.approx(1 / (1 + np.exp(-2)), abs=0.01)
    assert strong["confidence"] == pytest.approx(1.0, abs=0.005)
    kept = sitk.GetArrayFromImage(run_segmentation(image, oracle_model(), device="cpu",
                                                   min_lesion_confidence=0.95).labels)
    np.testing.assert_array_equal(kept == 2, lesions[1])
    assert np.array_equal(kept > 0, t > 0)  # a dropped lesion stays liver


def _like(array, ref):
    img = sitk.GetImageFromArray(array)
    img.CopyInformation(ref)
    return img


def _components(mask):
    cc = sitk.GetArrayFromImage(sitk.ConnectedComponent(sitk.GetImageFromArray(mask.astype(np.uint8)), True))
    return [cc == i for i in range(1, cc.max() + 1)]


def test_progress_is_reported_and_cancel_stops(small_phantom):
    ct, truth = small_phantom
    calls = []
    segment(ct, oracle_model(), device="cpu", batch_size=8, progress=lambda d, t: calls.append((d, t)))
    n = ct.GetSize()[2]
    assert calls == [(min(n, k), n) for k in range(8, n + 8, 8)]
    seen = []
    with pytest.raises(SegmentationCancelled):
        segment(ct, oracle_model(), device="cpu", batch_size=8, progress=lambda d, t: seen.append(d) or False)
    assert seen == [8]


class _RunsOutOfMemory(torch.nn.Module):
    """Wraps a network and fails like a full GPU whenever a batch is larger than ``limit``."""

    def __init__(self, inner, limit):
        super().__init__()
        self.inner, self.limit, self.batches = inner, limit, []

    def forward(self, x):
        if x.shape[0] > self.limit:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        self.batches.append(x.shape[0])
        return self.inner(x)


def test_out_of_memory_halves_the_batch_and_gives_the_same_answer(small_phantom):
    ct, truth = small_phantom
    image = encode_labels(ct, truth)
    base = oracle_model()
    flaky = SegmentationModel(_RunsOutOfMemory(base.network, limit=3), base.config)
    result = run_segmentation(image, flaky, device="cpu", batch_size=16)
    assert result.plan.batch_size == 2 and max(flaky.network.batches) == 2
    np.testing.assert_array_equal(sitk.GetArrayFromImage(result.labels), sitk.GetArrayFromImage(truth))


def test_softmax_models_map_argmax_to_label_values(small_phantom):
    ct, truth = small_phantom

    class Softmax3(torch.nn.Module):
        def forward(self, x):
            c = x[:, :1]
            return torch.cat([200 * (0.25 - c), torch.zeros_like(c), 200 * (c - 0.7)], 1) + 0 * c

    cfg = ModelConfig("test_oracle", {}, (LIVER, TUMOR), output_activation="softmax", min_lesion_mm3=0)
    got = segment(encode_labels(ct, truth), SegmentationModel(Softmax3(), cfg), device="cpu")
    np.testing.assert_array_equal(sitk.GetArrayFromImage(got), sitk.GetArrayFromImage(truth))


def test_bf16_autocast_path_runs_on_cpu(small_phantom):
    ct, truth = small_phantom
    result = run_segmentation(encode_labels(ct, truth), oracle_model(), device="cpu", precision="bf16")
    assert result.plan.precision == "bf16"
    assert dice(sitk.GetArrayFromImage(result.labels) > 0, sitk.GetArrayFromImage(truth) > 0) > 0.99


def test_region_restricts_the_work_to_a_box_and_keeps_the_grid(small_phantom):
    ct, truth = small_phantom
    t = sitk.GetArrayFromImage(truth)
    zs = np.flatnonzero((t > 0).any(axis=(1, 2)))
    k0, k1 = int(zs[0]) + 3, int(zs[-1]) - 3  # a slice range through the liver
    box = ((0, ct.GetSize()[0]), (0, ct.GetSize()[1]), (k0, k1))
    seen = []
    result = run_segmentation(encode_labels(ct, truth), oracle_model(), device="cpu", region=box,
                              progress=lambda d, n: seen.append(n))
    got = sitk.GetArrayFromImage(result.labels)
    assert same_geometry(result.labels, ct) and set(seen) == {k1 - k0}
    assert not got[:k0].any() and not got[k1:].any()
    inside = t[k0:k1]
    assert dice(got[k0:k1] > 0, inside > 0) > 0.99  # the largest-component rule now sees a cut liver
    with pytest.raises(Exception, match="not a box inside the image"):
        run_segmentation(ct, oracle_model(), device="cpu", region=((0, 10), (0, 10), (5, 400)))


def test_liver_only_output_counts_tumour_as_liver(small_phantom):
    ct, truth = small_phantom
    got = sitk.GetArrayFromImage(segment(encode_labels(ct, truth), oracle_model(), device="cpu",
                                         keep_labels=["Liver"]))
    t = sitk.GetArrayFromImage(truth)
    np.testing.assert_array_equal(got, (t > 0).astype(np.uint8))
    only_tumour = sitk.GetArrayFromImage(segment(encode_labels(ct, truth), oracle_model(), device="cpu",
                                                 keep_labels=["tumor"]))
    np.testing.assert_array_equal(only_tumour, np.where(t == 2, 2, 0))
    with pytest.raises(Exception, match="unknown label"):
        segment(ct, oracle_model(), device="cpu", keep_labels=["spleen"])


def _localizer(levels=(0.25,), spacing=(6.0, 6.0)):
    from LiverTumorSegLib.modelfile import SegmentationModel as Model

    from conftest import OracleNet

    cfg = ModelConfig("test_oracle", {"levels": levels}, (LIVER,), spacing_yx_mm=spacing, name="localiser")
    return Model(OracleNet(levels=levels), cfg)


def test_coarse_to_fine_runs_the_fine_model_only_around_the_liver_and_gives_the_same_labels():
    from LiverTumorSegLib.modelfile import attach_localizer

    ct, truth = make_phantom(shape_zyx=(60, 110, 120), spacing_zyx=(2.5, 1.6, 1.6), seed=8, orientation="RAS",
                             lesion_diameters_mm=(12.0, 18.0), liver_slice_fraction=(0.3, 0.7))
    image = encode_labels(ct, truth)
    fine = oracle_model(spacing_yx_mm=(2.0, 2.0))
    fine.config.localizer_crop_inplane = True  # the pixel-wise oracle gives the same answer on any crop
    shapes = []
    fine.network.register_forward_hook(lambda m, i, o: shapes.append(tuple(i[0].shape)))
    slow = run_segmentation(image, fine, device="cpu")
    full_width = shapes[0][-1]
    shapes.clear()
    calls = []
    fast = run_segmentation(image, attach_localizer(fine, _localizer()), device="cpu",
                            progress=lambda d, t: calls.append((d, t)))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(fast.labels), sitk.GetArrayFromImage(slow.labels))
    region = fast.plan.region
    t = sitk.GetArrayFromImage(sitk.DICOMOrient(truth, "LPS"))
    zs = np.flatnonzero(t.any(axis=(1, 2)))
    assert region["slices"][0] <= zs[0] and region["slices"][1] > zs[-1]
    assert region["slices"][1] - region["slices"][0] < 0.75 * t.shape[0]  # liver-free slices skipped
    assert max(s[-1] for s in shapes) < full_width and sum(s[0] for s in shapes) == np.diff(region["slices"])[0]
    assert calls[-1][0] == calls[-1][1] and all(a <= b for a, b in calls)
    assert "localize" in fast.seconds
    fine.config.localizer_crop_inplane = False  # the default: slice range only, whole slices
    shapes.clear()
    whole = run_segmentation(image, attach_localizer(fine, _localizer()), device="cpu")
    np.testing.assert_array_equal(sitk.GetArrayFromImage(whole.labels), sitk.GetArrayFromImage(slow.labels))
    assert whole.plan.region["box_yx"] is None and max(s[-1] for s in shapes) == full_width


def test_a_localiser_that_finds_nothing_falls_back_to_the_whole_volume(small_phantom):
    from LiverTumorSegLib.modelfile import attach_localizer

    ct, truth = small_phantom
    blind = attach_localizer(oracle_model(), _localizer(levels=(5.0,)))
    with pytest.warns(RuntimeWarning, match="no liver"):
        result = run_segmentation(encode_labels(ct, truth), blind, device="cpu")
    np.testing.assert_array_equal(sitk.GetArrayFromImage(result.labels), sitk.GetArrayFromImage(truth))
    assert result.plan.region is None


def test_several_threshold_sets_share_one_network_pass_and_match_separate_runs(small_phantom):
    """Threshold calibration relies on this: each map equals its own ``segment`` run, for a third of the work."""
    from LiverTumorSegLib.pipeline import segment_at_thresholds

    ct, _ = small_phantom
    model = random_tiny_model(seed=3)
    calls = []
    model.network.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    sets = [(0.5, 0.45), None, (0.4, 0.55)]
    shared = segment_at_thresholds(ct, model, sets, device="cpu")
    slices_once = sum(calls)
    calls.clear()
    separate = [segment(ct, model, device="cpu", thresholds=t) for t in sets]
    assert sum(calls) == 3 * slices_once == 3 * ct.GetSize()[2]
    arrays = [sitk.GetArrayFromImage(m) for m in shared]
    for got, expected in zip(arrays, separate):
        np.testing.assert_array_equal(got, sitk.GetArrayFromImage(expected))
    assert not np.array_equal(arrays[0], arrays[2])  # the thresholds did change the labels
    with pytest.raises(Exception, match="2 thresholds needed"):
        segment_at_thresholds(ct, model, [(0.5,)], device="cpu")


def test_a_region_inside_the_liver_is_still_ct(small_phantom):
    """The CT check looks at the whole image: a box holding only liver (no fat or air) used to be refused as MR."""
    ct, truth = small_phantom
    t = sitk.GetArrayFromImage(truth)
    z, y, x = (int(np.median(a)) for a in np.nonzero(t == 1))
    box = ((x - 2, x + 2), (y - 2, y + 2), (z - 1, z + 1))
    image = encode_labels(ct, truth)
    assert (sitk.GetArrayFromImage(image)[z - 1:z + 1, y - 2:y + 2, x - 2:x + 2] > 0).all()  # liver only
    got = sitk.GetArrayFromImage(segment(image, oracle_model(), device="cpu", region=box))
    assert (got[z - 1:z + 1, y - 2:y + 2, x - 2:x + 2] > 0).all() and not got[:z - 1].any()


def test_a_ninth_label_is_painted():
    """Bits used to be one byte: with nine labels the ninth was shifted out and never appeared."""
    from LiverTumorSegLib.labels import LabelSpec, terminology_string

    from conftest import OracleNet

    levels = tuple(0.05 + 0.1 * k for k in range(9))
    specs = tuple(LabelSpec(f"S{k + 1}", k + 1, (10 * k, 100, 100),
                            terminology_string(("SCT", "123037004", "Anatomical Structure"), ("", "", f"s{k}")),
                            "structure") for k in range(9))
    kwargs = {"in_channels": 1, "channel": 0, "levels": levels}
    model = SegmentationModel(OracleNet(**kwargs), ModelConfig("test_oracle", kwargs, specs, min_lesion_mm3=0.0))
    stripes = np.repeat((np.arange(10) * 20 + 5).astype(np.int16), 4)  # 5, 25, ..., 185 HU; x = HU / 200
    volume = np.broadcast_to(stripes[None, None, :], (4, 16, 40)).copy()
    volume[:, :2, :2] = -1000  # air: a plausible CT
    image = sitk.GetImageFromArray(volume)
    got = sitk.GetArrayFromImage(segment(image, model, device="cpu"))
    expected = np.searchsorted(np.array(levels) * 200, stripes, side="left")  # labels whose level is below
    np.testing.assert_array_equal(got[0, 8], expected)
    assert got.max() == 9

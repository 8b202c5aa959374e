"""Training data readers and the exporter, on phantoms written in every supported layout."""

from __future__ import annotations

import argparse
import json
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import slicerio

from LiverTumorSegLib.errors import LiverTumorSegError
from LiverTumorSegLib.phantom import make_phantom
from LiverTumorSegLib.segfile import ijk_to_lps_matrix
from LiverTumorSegTrainLib.datasets import LabeledCase, find_cases
from LiverTumorSegTrainLib.export import add_parser, export_cases, export_dataset

from conftest import write_dicom_series

SHARED_IRCADB = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "ircadb01"

LIVER_TERM = {"contextName": "Segmentation category and type - DICOM master list",
              "category": ["SCT", "123037004", "Anatomical Structure"], "type": ["SCT", "10200004", "Liver"]}
MASS_TERM = {"contextName": "Segmentation category and type - DICOM master list",
             "category": ["SCT", "49755003", "Morphologically Altered Structure"], "type": ["SCT", "4147007", "Mass"],
             "anatomicContextName": "Anatomic codes - DICOM master list",
             "anatomicRegion": ["SCT", "10200004", "Liver"]}
SPLEEN_TERM = {"contextName": "Segmentation category and type - DICOM master list",
               "category": ["SCT", "123037004", "Anatomical Structure"], "type": ["SCT", "78961009", "Spleen"]}


def phantom(seed: int) -> tuple[sitk.Image, sitk.Image]:
    return make_phantom(shape_zyx=(20, 64, 64), spacing_zyx=(2.5, 1.5, 1.5), seed=seed, orientation="RAS",
                        lesion_diameters_mm=(12.0,))


@pytest.fixture(scope="module")
def phantoms() -> list[tuple[str, sitk.Image, sitk.Image]]:
    return [(f"case_{name}", *phantom(seed)) for name, seed in (("a", 1), ("b", 2), ("c", 3))]


def arr(image: sitk.Image) -> np.ndarray:
    return sitk.GetArrayFromImage(image)


def assert_same_image(a: sitk.Image, b: sitk.Image) -> None:
    np.testing.assert_array_equal(arr(a), arr(b))
    assert a.GetSize() == b.GetSize()
    np.testing.assert_allclose(a.GetSpacing(), b.GetSpacing(), atol=1e-6)
    np.testing.assert_allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-5)
    np.testing.assert_allclose(a.GetDirection(), b.GetDirection(), atol=1e-6)


def assert_loads_as(case: LabeledCase, ct: sitk.Image, labels: sitk.Image) -> None:
    got_ct, got_labels = case.load()
    assert got_labels.GetPixelID() == sitk.sitkUInt8
    assert_same_image(got_ct, ct)
    assert_same_image(got_labels, labels)
    # same grid exactly, not just within tolerance: trainers compare headers
    assert got_labels.GetOrigin() == got_ct.GetOrigin() and got_labels.GetSpacing() == got_ct.GetSpacing()


# ---- exporter round trips -------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["lits", "msd"])
def test_export_and_read_back(tmp_path, phantoms, layout):
    out = export_dataset(iter(phantoms), tmp_path / "export", layout=layout)
    cases = find_cases(out)
    assert [c.case_id for c in cases] == ["case_a", "case_b", "case_c"]
    assert {c.kind for c in cases} == {layout} and all(c.label_names == ("liver", "tumor") for c in cases)
    for case, (_, ct, labels) in zip(cases, phantoms):
        assert_loads_as(case, ct, labels)
    if layout == "lits":
        assert sorted(p.name for p in out.iterdir()) == ["cases.json"] + [
            f"{kind}-{i}.nii.gz" for kind in ("segmentation", "volume") for i in range(3)]
        assert sitk.ReadImage(str(out / "volume-0.nii.gz")).GetPixelID() == sitk.sitkInt16
    else:
        meta = json.loads((out / "dataset.json").read_text(encoding="utf-8"))
        assert meta["labels"] == {"0": "background", "1": "liver", "2": "tumor"}
        assert meta["modality"] == {"0": "CT"} and meta["tensorImageSize"] == "3D"
        assert meta["numTraining"] == 3 and meta["numTest"] == 0 and meta["test"] == []
        assert meta["training"][1] == {"image": "./imagesTr/livertumorseg_export_1.nii.gz",
                                       "label": "./labelsTr/livertumorseg_export_1.nii.gz"}
        for entry in meta["training"]:
            assert (out / entry["image"]).is_file() and (out / entry["label"]).is_file()
            assert sitk.ReadImage(str(out / entry["label"])).GetPixelID() == sitk.sitkUInt8
    cases_json = json.loads((out / "cases.json").read_text(encoding="utf-8"))
    assert cases_json["cases"] == {"0": "case_a", "1": "case_b", "2": "case_c"}


def test_export_refuses_non_empty_folder_and_overwrite_replaces_a_larger_export(tmp_path, phantoms):
    out = export_dataset(iter(phantoms), tmp_path / "export")
    with pytest.raises(LiverTumorSegError, match="not empty.*overwrite"):
        export_dataset(iter(phantoms[:1]), out)
    export_dataset(iter(phantoms[1:2]), out, overwrite=True)
    cases = find_cases(out)
    assert [c.case_id for c in cases] == ["case_b"]  # no stale volume-1/volume-2 left behind
    assert_loads_as(cases[0], phantoms[1][1], phantoms[1][2])
    export_dataset(iter(phantoms[:2]), out, layout="msd", overwrite=True)
    assert [(c.kind, c.case_id) for c in find_cases(out)] == [("msd", "case_a"), ("msd", "case_b")]
    assert not (out / "volume-0.nii.gz").exists()
    (out / "notes.txt").write_text("kept", encoding="utf-8")
    export_dataset(iter(phantoms[2:]), out, layout="lits", overwrite=True)  # the old dataset.json must go
    assert [(c.kind, c.case_id) for c in find_cases(out)] == [("lits", "case_c")]
    assert sorted(p.name for p in out.iterdir()) == ["cases.json", "notes.txt", "segmentation-0.nii.gz",
                                                     "volume-0.nii.gz"]


def test_export_rejects_bad_items(tmp_path, phantoms):
    _, ct, labels = phantoms[0]
    with pytest.raises(LiverTumorSegError, match="case bad: the label map is not on the CT grid"):
        export_dataset([("bad", ct, labels[:, :, 1:])], tmp_path / "a")
    with pytest.raises(LiverTumorSegError, match="case three: label values span 1..3; expected whole numbers 0..2"):
        export_dataset([("three", ct, labels + 1)], tmp_path / "b")
    with pytest.raises(LiverTumorSegError, match="unknown export layout"):
        export_dataset([("x", ct, labels)], tmp_path / "c", layout="nnunet")


def test_cli_export_of_a_phantom_folder_and_vessel_labels_in_msd(tmp_path, phantoms):
    src = tmp_path / "phantoms"
    for case_id, ct, labels in phantoms[:2]:
        src.mkdir(exist_ok=True)
        sitk.WriteImage(ct, str(src / f"{case_id}.nii.gz"))
        sitk.WriteImage(labels, str(src / f"{case_id}_truth.nii.gz"))
    sitk.WriteImage(phantoms[2][1], str(src / "unlabelled.nii.gz"))
    assert [c.case_id for c in find_cases(src)] == ["case_a", "case_b"]
    assert [c.label_path is None for c in find_cases(src, include_unlabelled=True)] == [False, False, True]

    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    args = parser.parse_args(["export", str(src), "-o", str(tmp_path / "msd"), "--layout", "msd", "--quiet"])
    assert args.func(args) == 0
    cases = find_cases(tmp_path / "msd")
    assert [(c.kind, c.case_id) for c in cases] == [("msd", "case_a"), ("msd", "case_b")]
    assert_loads_as(cases[1], phantoms[1][1], phantoms[1][2])

    # Task08-style: vessel/tumour labels; no liver label is invented
    vessels = [(i, ct, labels) for i, ct, labels in phantoms[:1]]
    out = export_dataset(vessels, tmp_path / "task08", layout="msd", label_names=("vessel", "tumor"),
                         name="HepaticVessel")
    (out / "cases.json").unlink()  # as downloaded: only dataset.json
    meta = json.loads((out / "dataset.json").read_text(encoding="utf-8"))
    meta["labels"] = {"0": "background", "1": "Vessel", "2": "Tumour"}
    meta["test"] = ["./imagesTs/hepaticvessel_9.nii.gz"]
    (out / "imagesTs").mkdir()
    sitk.WriteImage(phantoms[1][1], str(out / "imagesTs" / "hepaticvessel_9.nii.gz"))
    (out / "dataset.json").write_text(json.dumps(meta), encoding="utf-8")
    cases = find_cases(out)
    assert [(c.case_id, c.label_names) for c in cases] == [("hepaticvessel_0", ("vessel", "tumor"))]
    with_test = find_cases(out, include_unlabelled=True)
    assert [(c.case_id, c.label_path is None) for c in with_test] == [("hepaticvessel_0", False),
                                                                      ("hepaticvessel_9", True)]
    ct, labels = with_test[1].load()
    assert labels is None and ct.GetSize() == (64, 64, 20)


# ---- LiTS -----------------------------------------------------------------------------------------


def test_lits_batches_float_noise_and_mismatched_grids(tmp_path, phantoms):
    for n, (batch, (_, ct, labels)) in enumerate(zip(["batch1", "batch2", "batch2"], phantoms)):
        (tmp_path / batch).mkdir(exist_ok=True)
        sitk.WriteImage(ct, str(tmp_path / batch / f"volume-{n * 5}.nii"))
        noisy = sitk.Image(labels)
        noisy.SetOrigin([v + 3e-5 for v in labels.GetOrigin()])
        seg_dir = tmp_path / "segmentations"
        seg_dir.mkdir(exist_ok=True)
        sitk.WriteImage(noisy, str(seg_dir / f"segmentation-{n * 5}.nii.gz"))
    cases = find_cases(tmp_path)
    assert [c.case_id for c in cases] == ["volume-0", "volume-5", "volume-10"]  # natural order
    for case, (_, ct, labels) in zip(cases, phantoms):
        assert_loads_as(case, ct, labels)

    shifted = sitk.Image(phantoms[1][2])
    shifted.SetOrigin([v + 0.5 for v in shifted.GetOrigin()])
    sitk.WriteImage(shifted, str(tmp_path / "segmentations" / "segmentation-5.nii.gz"))
    with pytest.raises(LiverTumorSegError, match=r"case volume-5: the label map is not on the CT grid.*origin"):
        find_cases(tmp_path)[1].load()
    sitk.WriteImage(phantoms[1][2][:, :, 2:], str(tmp_path / "segmentations" / "segmentation-5.nii.gz"))
    with pytest.raises(LiverTumorSegError, match=r"case volume-5: .* size \(64, 64, 20\) vs \(64, 64, 18\)"):
        find_cases(tmp_path)[1].load()


def test_unknown_layout_and_bad_kind(tmp_path):
    (tmp_path / "notes.txt").write_text("nothing here", encoding="utf-8")
    with pytest.raises(LiverTumorSegError, match="no training data layout recognised.*LiTS.*MSD|MSD.*LiTS") as e:
        find_cases(tmp_path)
    assert "\n" not in str(e.value)
    with pytest.raises(LiverTumorSegError, match="unknown dataset kind 'kits'"):
        find_cases(tmp_path, kind="kits")
    with pytest.raises(LiverTumorSegError, match="no lits cases"):
        find_cases(tmp_path, kind="lits")
    with pytest.raises(LiverTumorSegError, match="dataset folder not found"):
        find_cases(tmp_path / "missing")


# ---- 3D Slicer ------------------------------------------------------------------------------------


def write_cropped_seg(path: Path, labels: sitk.Image, names: tuple[str, str], terms: bool,
                      shift_voxels: float = 0.0) -> tuple[slice, ...]:
    """A two-layer .seg.nrrd cropped to a sub-box of the label grid: liver (incl. tumour) in layer 0 with a
    spleen segment, tumour in layer 1 (overlapping the liver). Returns the box (k, j, i)."""
    lab = arr(labels)
    k, j, i = (np.flatnonzero(lab.any(axis=axes)) for axes in ((1, 2), (0, 2), (0, 1)))
    box = (slice(k[0] - 1, k[-1] + 2), slice(j[0] - 2, j[-1] + 3), slice(i[0] - 3, 64))
    sub = lab[box]
    layer0 = (sub > 0).astype(np.uint8)
    layer0[:, :2, :2] = 2  # a spleen patch outside the liver (box corner is background): ignored
    assert not (sub[:, :2, :2] > 0).any()
    layer1 = (sub == 2).astype(np.uint8)
    voxels = np.stack([layer0, layer1]).transpose(0, 3, 2, 1)  # (layer, i, j, k)
    matrix = ijk_to_lps_matrix(labels)
    start = np.array([box[2].start, box[1].start, box[0].start], dtype=float) + shift_voxels
    matrix[:3, 3] = matrix[:3, :3] @ start + matrix[:3, 3]
    liver_term, mass_term, spleen_term = ({"terminology": t} if terms else {}
                                          for t in (LIVER_TERM, MASS_TERM, SPLEEN_TERM))
    segments = [
        {"id": "Segment_1", "name": names[0], "labelValue": 1, "layer": 0, **liver_term},
        {"id": "Segment_2", "name": names[1], "labelValue": 1, "layer": 1, **mass_term},
        {"id": "Segment_3", "name": "Segment_3" if terms else "Spleen", "labelValue": 2, "layer": 0, **spleen_term},
    ]
    slicerio.write_segmentation(str(path), {"voxels": voxels, "ijkToLPS": matrix, "segments": segments,
                                            "encoding": "gzip"})
    return box


def test_slicer_cropped_two_layer_segmentation_by_terminology_and_by_name(tmp_path, phantoms):
    _, ct, labels = phantoms[0]
    sitk.WriteImage(ct, str(tmp_path / "case7.nrrd"))
    box = write_cropped_seg(tmp_path / "case7.seg.nrrd", labels, ("Segment_1", "Segment_2"), terms=True)
    assert box[0].start > 0 and box[2].stop == 64  # really cropped
    sub = tmp_path / "named"
    sub.mkdir()
    sitk.WriteImage(ct, str(sub / "scan.nii.gz"))
    write_cropped_seg(sub / "Segmentation.seg.nrrd", labels, ("Liver", "Tumour"), terms=False)  # Slicer's default name

    cases = find_cases(tmp_path)
    assert [(c.case_id, c.kind) for c in cases] == [("case7", "slicer"), ("scan", "slicer")]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # exact paste, no resampling warning
        for case in cases:
            assert_loads_as(case, ct, labels)


def test_slicer_segmentation_off_the_grid_is_resampled_with_a_warning(tmp_path, phantoms):
    _, ct, labels = phantoms[1]
    sitk.WriteImage(ct, str(tmp_path / "case1.nii.gz"))
    write_cropped_seg(tmp_path / "case1.seg.nrrd", labels, ("liver", "lesion 1"), terms=False, shift_voxels=0.3)
    (case,) = find_cases(tmp_path, kind="slicer")
    with pytest.warns(UserWarning, match="nearest neighbour"):
        got_ct, got = case.load()
    np.testing.assert_array_equal(arr(got), arr(labels))  # 0.3 voxel: nearest neighbour is the same voxel


def test_slicer_segmentation_without_liver_is_a_clear_error(tmp_path, phantoms):
    _, ct, labels = phantoms[0]
    sitk.WriteImage(ct, str(tmp_path / "c.nrrd"))
    write_cropped_seg(tmp_path / "c.seg.nrrd", labels, ("Segment_1", "Tumor"), terms=False)
    with pytest.raises(LiverTumorSegError, match="case c: no liver segment"):
        find_cases(tmp_path)[0].load()


# ---- 3D-IRCADb-01 DICOM ---------------------------------------------------------------------------


def write_ircadb_patient(folder: Path, ct: sitk.Image, labels: sitk.Image, seed: int) -> None:
    """PATIENT_DICOM + MASKS_DICOM/{liver, livertumor01, livertumor02, venoussystem} (0/255 masks)."""
    lab = arr(labels)
    tumour = lab == 2
    half = np.zeros_like(tumour)
    half[: lab.shape[0] // 2 + 1] = True  # split the tumour voxels into two masks (they may overlap)
    venous = np.zeros_like(tumour)
    venous[:, 5:60, 30:34] = True  # crosses liver and background: must not become tumour
    base = f"1.2.826.0.1.3680043.2.1125.{seed}"
    write_dicom_series(ct, folder / "PATIENT_DICOM", base + ".1", extension="")
    overlap = (np.arange(lab.shape[0]) == 3)[:, None, None]
    for n, (name, mask) in enumerate([("liver", lab > 0), ("livertumor01", tumour & half),
                                      ("livertumor02", tumour & (~half | overlap)), ("venoussystem", venous)]):
        image = sitk.GetImageFromArray(np.where(mask, 255, 0).astype(np.uint8))
        image.CopyInformation(ct)
        write_dicom_series(image, folder / "MASKS_DICOM" / name, f"{base}.{n + 2}", modality="OT", extension="")


def test_ircadb_dicom_folders_and_zips(tmp_path, phantoms):
    root = tmp_path / "3Dircadb1"
    for n, (_, ct, labels) in enumerate(phantoms[:2]):
        write_ircadb_patient(root / f"3Dircadb1.{n + 1}", ct, labels, seed=n + 1)
    # patient 2 as shipped: zips whose top folder is PATIENT_DICOM/ and MASKS_DICOM/
    patient2 = root / "3Dircadb1.2"
    for part in ("PATIENT_DICOM", "MASKS_DICOM"):
        shutil.make_archive(str(patient2 / part), "zip", root_dir=patient2, base_dir=part)
        shutil.rmtree(patient2 / part)
    before = sorted(p.relative_to(root) for p in root.rglob("*"))

    cases = find_cases(root)
    assert [(c.case_id, c.kind, c.label_names) for c in cases] == [
        ("3Dircadb1.1", "ircadb", ("liver", "tumor")), ("3Dircadb1.2", "ircadb", ("liver", "tumor"))]
    assert cases[1].image_path.name == "PATIENT_DICOM.zip"
    for case, (_, ct, labels) in zip(cases, phantoms):
        got_ct, got = case.load()
        assert_same_image(got_ct, sitk.Cast(ct, sitk.sitkInt16))
        assert got.GetPixelID() == sitk.sitkUInt8 and got.GetOrigin() == got_ct.GetOrigin()
        np.testing.assert_array_equal(arr(got), arr(labels))  # venous system ignored, tumours = 2
        np.testing.assert_allclose(got.GetOrigin(), labels.GetOrigin(), atol=1e-5)
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before  # nothing written in the dataset


def test_ircadb_mask_off_the_grid_is_an_error(tmp_path, phantoms):
    _, ct, labels = phantoms[0]
    patient = tmp_path / "3Dircadb1.9"
    write_dicom_series(ct, patient / "PATIENT_DICOM", "1.2.826.0.1.3680043.2.1125.9.1", extension="")
    liver = sitk.GetImageFromArray(np.where(arr(labels) > 0, 255, 0).astype(np.uint8)[:, :, :60])
    liver.SetSpacing(ct.GetSpacing())
    liver.SetDirection(ct.GetDirection())
    liver.SetOrigin(ct.GetOrigin())
    write_dicom_series(liver, patient / "MASKS_DICOM" / "liver", "1.2.826.0.1.3680043.2.1125.9.2", modality="OT",
                       extension="")
    with pytest.raises(LiverTumorSegError, match=r"case 3Dircadb1.9: the mask liver is not on the CT grid.*size"):
        find_cases(tmp_path)[0].load()


# ---- npz (shared ircadb01 format) -----------------------------------------------------------------


def test_npz_synthetic_case(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(6, 20, 30), dtype=np.uint8)
    label = np.zeros_like(image)
    label[2:4, 5:15, 5:20] = 1
    label[3, 8:10, 8:10] = 2
    np.savez_compressed(tmp_path / "ircadb01_p07.npz", image=image, label=label,
                        hu_scale=np.float32(600 / 255), hu_offset=np.float32(-200.0),
                        spacing_zyx=np.array([1.6, 0.782, 0.782], np.float32), crop_yx=np.array([90, 17], np.int16),
                        first_slice_z_mm=np.float32(80.0), patient_id=np.array("3Dircadb1.7"),
                        hu_clip=np.array([-200, 400], np.int16))
    np.savez(tmp_path / "unrelated.npz", weights=np.zeros(3))  # not a case
    np.savez(tmp_path / "rescan.npz", image=image, label=label, spacing_zyx=np.array([2.0, 1.5, 1.5]),
             patient_group=np.array("lits-A"))
    case, rescan = find_cases(tmp_path)
    assert (case.case_id, case.kind, case.label_names) == ("ircadb01_p07", "npz", ("liver", "tumor"))
    assert (case.hu_valid, case.patient_group) == ((-200.0, 400.0), "ircadb01_p07")  # its own group
    assert (rescan.hu_valid, rescan.patient_group) == (None, "lits-A")  # no hu_clip: the full range
    ct, labels = case.load()
    assert ct.GetPixelID() == sitk.sitkInt16 and labels.GetPixelID() == sitk.sitkUInt8
    np.testing.assert_array_equal(arr(ct), np.rint(image * (600 / 255) - 200).astype(np.int16))
    assert arr(ct).min() >= -200 and arr(ct).max() <= 400
    assert ct.GetSpacing() == (0.782, 0.782, 1.6)  # the decimals meant, not float32 noise
    np.testing.assert_allclose(ct.GetOrigin(), (17 * 0.782, 90 * 0.782, 80.0))
    assert ct.GetDirection() == (1, 0, 0, 0, 1, 0, 0, 0, 1)
    np.testing.assert_array_equal(arr(labels), label)
    assert labels.GetOrigin() == ct.GetOrigin()


@pytest.mark.skipif(not SHARED_IRCADB.is_dir(), reason="real IRCADb npz data (../shared/data/ircadb01) not present")
def test_npz_real_ircadb_patient():
    manifest = (SHARED_IRCADB / "MANIFEST.md").read_text(encoding="utf-8")
    row = re.search(r"^\| 19 \| (\d+) \| (\d+)×(\d+)×(\d+) \| ([\d.]+), ([\d.]+), ([\d.]+) \|", manifest, re.M)
    shape = tuple(int(v) for v in row.group(2, 3, 4))
    spacing_zyx = tuple(float(v) for v in row.group(5, 6, 7))
    case = next(c for c in find_cases(SHARED_IRCADB) if c.case_id == "ircadb01_p19")
    ct, labels = case.load()
    assert sitk.GetArrayViewFromImage(ct).shape == shape
    np.testing.assert_allclose(ct.GetSpacing()[::-1], spacing_zyx, atol=1e-3)
    lab = arr(labels)
    assert set(np.unique(lab).tolist()) == {0, 1, 2}
    assert 50 <= float(np.median(arr(ct)[lab > 0])) <= 150


def test_export_cases_from_npz(tmp_path):
    image = np.full((4, 16, 16), 128, np.uint8)
    label = np.zeros_like(image)
    label[1:3, 4:12, 4:12] = 1
    for n in (2, 10):
        np.savez(tmp_path / f"p{n}.npz", image=image, label=label, spacing_zyx=np.array([2.0, 1.0, 1.0]))
    cases = find_cases(tmp_path)
    assert [c.case_id for c in cases] == ["p2", "p10"]
    seen = []
    out = export_cases(cases, tmp_path / "out", progress=lambda done, total: seen.append((done, total)))
    assert seen == [(1, 2), (2, 2)]
    assert [c.case_id for c in find_cases(out)] == ["p2", "p10"]

"""The command line end to end: files, DICOM series, folders, outputs, reports and one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk
import slicerio
import torch

from LiverTumorSegLib.cli import main
from LiverTumorSegLib.modelfile import save_model
from LiverTumorSegLib.phantom import make_phantom

from conftest import encode_labels, oracle_model, write_dicom_series


@pytest.fixture()
def oracle_file(tmp_path):
    return save_model(oracle_model(min_lesion_mm3=0.0), tmp_path / "oracle.pt")


def test_segment_files_writes_labels_seg_nrrd_and_report(tmp_path, oracle_file):
    ct, truth = make_phantom(shape_zyx=(26, 70, 82), spacing_zyx=(3.0, 1.7, 1.7), seed=11, orientation="RAS",
                             lesion_diameters_mm=(14.0, 22.0))
    sitk.WriteImage(encode_labels(ct, truth), str(tmp_path / "case1.nii.gz"))
    out = tmp_path / "out"
    assert main(["segment", str(tmp_path / "case1.nii.gz"), "-o", str(out), "--model", str(oracle_file),
                 "--device", "cpu", "--quiet"]) == 0
    labels = sitk.ReadImage(str(out / "case1.labels.nii.gz"))
    assert labels.GetSize() == ct.GetSize() and np.allclose(labels.GetDirection(), ct.GetDirection())
    assert np.allclose(labels.GetOrigin(), ct.GetOrigin(), atol=1e-4)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(labels), sitk.GetArrayFromImage(truth))

    seg = slicerio.read_segmentation(str(out / "case1.seg.nrrd"))
    assert [s["name"] for s in seg["segments"]] == ["Liver", "Tumor"]
    assert seg["segments"][1]["terminology"]["type"][1] == "108369006"
    ijk_to_lps = np.asarray(seg["ijkToLPS"])
    expected = np.eye(4)
    expected[:3, :3] = np.asarray(ct.GetDirection()).reshape(3, 3) * np.asarray(ct.GetSpacing())
    expected[:3, 3] = ct.GetOrigin()
    np.testing.assert_allclose(ijk_to_lps, expected, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(seg["voxels"]).transpose(2, 1, 0), sitk.GetArrayFromImage(truth))

    report = json.loads((out / "case1.report.json").read_text(encoding="utf-8"))
    voxel_ml = np.prod(ct.GetSpacing()) / 1000
    t = sitk.GetArrayFromImage(truth)
    assert report["organ_volume_ml"] == pytest.approx(np.count_nonzero(t) * voxel_ml, rel=1e-6)
    assert report["lesion_count"] == 2
    assert report["lesion_volume_ml"] == pytest.approx(np.count_nonzero(t == 2) * voxel_ml, rel=1e-6)
    diam = sorted(l["longest_axial_diameter_mm"] for l in report["lesions"])
    assert diam[0] == pytest.approx(14.0, abs=3.5) and diam[1] == pytest.approx(22.0, abs=3.5)
    assert report["model"]["name"] == "oracle" and report["run"]["device"] == "cpu"
    for lesion in report["lesions"]:  # the oracle is certain inside its lesions
        assert 0.99 <= lesion["confidence"] <= lesion["peak_probability"] <= 1.0


def test_batch_of_folder_with_dicom_bad_cases_and_no_overwrite(tmp_path, oracle_file, capsys):
    ct, truth = make_phantom(shape_zyx=(20, 64, 64), spacing_zyx=(3.0, 2.0, 2.0), seed=2,
                             lesion_diameters_mm=(16.0,))
    inputs = tmp_path / "in"
    write_dicom_series(encode_labels(ct, truth), inputs / "patientA")
    sitk.WriteImage(encode_labels(ct, truth), str(inputs / "good.nrrd"))
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((64, 64), np.int16)), str(inputs / "flat2d.nii.gz"))
    (inputs / "broken.nii.gz").write_bytes(b"not an image at all")
    mr = sitk.GetImageFromArray(np.random.default_rng(0).integers(0, 900, (8, 32, 32)).astype(np.int16))
    write_dicom_series(mr, inputs / "mr", modality="MR")
    out = tmp_path / "out"
    code = main(["segment", str(inputs), "-o", str(out), "--model", str(oracle_file), "--device", "cpu", "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert len(err) == 3 and all(line.startswith("livertumorseg: error: ") for line in err)
    assert any("flat2d" in e and "2-D" in e for e in err) and any("broken" in e for e in err)
    assert any(e.startswith("livertumorseg: error: mr:") and "modality is MR" in e for e in err)
    for case in ("patientA", "good"):
        got = sitk.ReadImage(str(out / f"{case}.labels.nii.gz"))
        np.testing.assert_array_equal(sitk.GetArrayFromImage(got), sitk.GetArrayFromImage(truth))
        assert (out / f"{case}.seg.nrrd").exists() and (out / f"{case}.report.json").exists()
    assert not list(out.glob("flat2d*")) and not list(out.glob(".*"))  # nothing half-written

    before = (out / "good.report.json").read_bytes()
    code = main(["segment", str(inputs / "good.nrrd"), "-o", str(out), "--model", str(oracle_file), "--quiet"])
    assert code == 1 and "--overwrite" in capsys.readouterr().err
    assert (out / "good.report.json").read_bytes() == before
    assert main(["segment", str(inputs / "good.nrrd"), "-o", str(out), "--model", str(oracle_file),
                 "--quiet", "--overwrite"]) == 0


def test_json_progress_events_for_subprocess_front_ends(tmp_path, oracle_file, capsys):
    ct, truth = make_phantom(shape_zyx=(18, 64, 64), spacing_zyx=(3.0, 2.0, 2.0), seed=6, lesion_diameters_mm=(14.0,))
    sitk.WriteImage(encode_labels(ct, truth), str(tmp_path / "c.nii.gz"))
    (tmp_path / "bad.nii.gz").write_bytes(b"broken")
    code = main(["segment", str(tmp_path / "c.nii.gz"), str(tmp_path / "bad.nii.gz"), "-o", str(tmp_path / "o"),
                 "--model", str(oracle_file), "--device", "cpu", "--progress", "json", "--batch-size", "5",
                 "--keep", "Liver", "--region", "0", "64", "0", "64", "2", "16"])
    assert code == 1
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    kinds = [e["event"] for e in events]
    assert kinds[0] == "stage" and "done" in kinds and kinds[-1] == "error"
    progress = [(e["done"], e["total"]) for e in events if e["event"] == "progress"]
    assert progress == [(5, 14), (10, 14), (14, 14)]
    done = next(e for e in events if e["event"] == "done")
    labels = sitk.GetArrayFromImage(sitk.ReadImage(done["outputs"]["labels"]))
    t = sitk.GetArrayFromImage(truth)
    assert set(np.unique(labels)) == {0, 1} and not labels[:2].any() and not labels[16:].any()
    np.testing.assert_array_equal(labels[2:16], (t[2:16] > 0).astype(np.uint8))
    assert next(e for e in events if e["event"] == "error")["case"] == "bad"


def test_missing_or_unsafe_model_is_a_one_line_error(tmp_path, capsys):
    ct, _ = make_phantom(shape_zyx=(12, 48, 48), spacing_zyx=(3.0, 2.0, 2.0), seed=1)
    sitk.WriteImage(ct, str(tmp_path / "ct.nii.gz"))
    assert main(["segment", str(tmp_path / "ct.nii.gz"), "-o", str(tmp_path / "o"), "--model",
                 str(tmp_path / "nope.pt")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not found" in err


def test_import_weights_command(tmp_path, capsys):
    from test_models import authors_state_dict

    torch.save(authors_state_dict("rec_unet_em"), tmp_path / "liver.pth")
    out = tmp_path / "liver.pt"
    assert main(["import-weights", str(tmp_path / "liver.pth"), "--arch", "rec_unet_em", "--labels",
                 "liver,tumor", "-o", str(out), "--half"]) == 0
    assert out.exists() and out.stat().st_size < 80e6
    assert main(["import-weights", str(tmp_path / "liver.pth"), "--arch", "rec_unet", "-o",
                 str(tmp_path / "x.pt")]) == 1
    assert "use --arch rec_unet_em" in capsys.readouterr().err


def test_info_and_console_script(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "LiverTumorSegLib.cli", "info", "--json"],
                          capture_output=True, text=True, check=True)
    info = json.loads(proc.stdout)
    assert info["torch"] == torch.__version__ and info["cuda_available"] == torch.cuda.is_available()
    assert isinstance(info["gpus"], list)


def test_phantom_command_writes_ct_and_truth(tmp_path):
    assert main(["phantom", "-o", str(tmp_path), "--shape", "16", "48", "48", "--seed", "4"]) == 0
    ct = sitk.ReadImage(str(tmp_path / "phantom4.nii.gz"))
    truth = sitk.ReadImage(str(tmp_path / "phantom4_truth.nii.gz"))
    assert ct.GetSize() == truth.GetSize() == (48, 48, 16)

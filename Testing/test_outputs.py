"""Tests of LiverTumorSegLib.outputs: atomic writing, .seg.nrrd round trips and the lesion report.

Expected values are derived independently of the implementation (lattice-point counts, closed-form
diameters, brute-force Feret diameters over all pixel corners, ITK's own index→physical transform).
"""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import SimpleITK as sitk
import slicerio

from LiverTumorSegLib.atomicfile import atomic_path, write_image_atomic, write_json_atomic
from LiverTumorSegLib.labels import LIVER, TUMOR, LabelSpec
from LiverTumorSegLib.report import lesion_report, longest_in_plane_diameter_mm
from LiverTumorSegLib.segfile import read_seg_nrrd_labels, write_seg_nrrd

# ----------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------

def _image(arr: np.ndarray, spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0), direction=None) -> sitk.Image:
    img = sitk.GetImageFromArray(np.ascontiguousarray(arr))
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    if direction is not None:
        img.SetDirection([float(v) for v in np.asarray(direction, dtype=float).ravel()])
    return img


def _rotation(axis, angle_deg) -> np.ndarray:
    """Rodrigues rotation matrix: an oblique, orthonormal direction."""
    k = np.asarray(axis, dtype=float)
    k /= np.linalg.norm(k)
    a = math.radians(angle_deg)
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + math.sin(a) * kx + (1 - math.cos(a)) * kx @ kx


def _brute_force_feret(mask2d: np.ndarray, spacing) -> float:
    """Largest distance between any two corners of any two pixels (the pixel union's Feret diameter)."""
    rows, cols = np.nonzero(mask2d)
    corners = np.concatenate([
        np.stack([(rows + dr) * spacing[0], (cols + dc) * spacing[1]], axis=1)
        for dr in (-0.5, 0.5) for dc in (-0.5, 0.5)
    ])
    d = corners[:, None, :] - corners[None, :, :]
    return float(np.sqrt((d ** 2).sum(-1)).max())


def _spheres_volume(shape=(48, 48, 48), organ=(slice(4, 44),) * 3,
                    spheres=(((12, 12, 12), 5), ((27, 28, 29), 8))) -> np.ndarray:
    """uint8 (z, y, x) map: an organ block (1) holding lesion spheres (2) of integer centre and radius."""
    arr = np.zeros(shape, dtype=np.uint8)
    arr[organ] = 1
    z, y, x = np.ogrid[:shape[0], :shape[1], :shape[2]]
    for (cz, cy, cx), r in spheres:
        arr[(z - cz) ** 2 + (y - cy) ** 2 + (x - cx) ** 2 <= r * r] = 2
    return arr


# Lattice points with x²+y²+z² ≤ r² (OEIS A000605): r=5 → 515, r=8 → 2109.
SPHERE_VOXELS = {5: 515, 8: 2109}
# Feret diameter (pixel units, 1×1 pixels) of the equatorial digital disk x²+y² ≤ r², corner to corner:
#   r=5: pixels (3,4) and (-3,-4) → corners (3.5,4.5), (-3.5,-4.5) → √(7²+9²) = √130 ≈ 11.40
#   r=8: pixels (8,0) and (-8,0) → √(17²+1²) = √290 (tie with (5,6)/(-5,-6) → √(11²+13²) = √290) ≈ 17.03
# Both lie in [2r+1, 2r+√2], the bounds for any digital disk. Other axial slices hold smaller disks.
DISK_FERET = {5: math.sqrt(130.0), 8: math.sqrt(290.0)}


# ----------------------------------------------------------------------------------------------------
# atomic writing
# ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, suffix", [("out.seg.nrrd", ".seg.nrrd"), ("ct.nii.gz", ".nii.gz"),
                                          ("report.json", ".json"), ("weights.pt", ".pt")])
def test_atomic_path_writes_only_on_success(tmp_path, name, suffix):
    final = tmp_path / name
    with atomic_path(final) as temp:
        assert os.path.dirname(temp) == str(tmp_path)
        assert os.path.basename(temp).startswith(".")
        assert temp.endswith(".tmp" + suffix)
        with open(temp, "w", encoding="utf-8") as f:
            f.write("payload")
        assert not final.exists()  # nothing under the real name until the block succeeded
    assert final.read_text(encoding="utf-8") == "payload"
    assert sorted(os.listdir(tmp_path)) == [name]  # temp file renamed, nothing left over


def test_atomic_path_exception_leaves_nothing(tmp_path):
    final = tmp_path / "labels.nii.gz"
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_path(final) as temp:
            with open(temp, "w", encoding="utf-8") as f:
                f.write("half")
            raise RuntimeError("boom")
    assert os.listdir(tmp_path) == []


def test_atomic_path_refuses_existing_then_overwrites(tmp_path):
    final = tmp_path / "report.json"
    final.write_text("old", encoding="utf-8")
    with pytest.raises(FileExistsError, match="pass --overwrite to replace it"):
        with atomic_path(final):
            pass
    assert final.read_text(encoding="utf-8") == "old"

    # A failing overwrite keeps the old file.
    with pytest.raises(ValueError):
        with atomic_path(final, overwrite=True) as temp:
            with open(temp, "w", encoding="utf-8") as f:
                f.write("new but broken")
            raise ValueError
    assert final.read_text(encoding="utf-8") == "old"
    assert os.listdir(tmp_path) == ["report.json"]

    with atomic_path(final, overwrite=True) as temp:
        with open(temp, "w", encoding="utf-8") as f:
            f.write("new")
    assert final.read_text(encoding="utf-8") == "new"
    assert os.listdir(tmp_path) == ["report.json"]


def test_atomic_path_nothing_written_is_an_error(tmp_path):
    from LiverTumorSegLib.errors import OutputError

    with pytest.raises(OutputError, match="nothing was written"):
        with atomic_path(tmp_path / "x.json"):
            pass
    assert os.listdir(tmp_path) == []


def test_write_json_and_image_atomic(tmp_path):
    obj = {"a": [1, 2.5, "é"], "b": None}
    write_json_atomic(tmp_path / "sub" / "r.json", obj)  # parent is created
    assert json.loads((tmp_path / "sub" / "r.json").read_text(encoding="utf-8")) == obj
    with pytest.raises(FileExistsError):
        write_json_atomic(tmp_path / "sub" / "r.json", {})
    write_json_atomic(tmp_path / "sub" / "r.json", {"c": 1}, overwrite=True)
    assert json.loads((tmp_path / "sub" / "r.json").read_text(encoding="utf-8")) == {"c": 1}

    arr = np.arange(2 * 3 * 4, dtype=np.int16).reshape(2, 3, 4)
    img = _image(arr, spacing=(0.5, 0.75, 2.0), origin=(1.0, -2.0, 3.0))
    path = tmp_path / "img.nii.gz"
    write_image_atomic(img, path)
    assert path.read_bytes()[:2] == b"\x1f\x8b"  # gzip: the temp name kept the .nii.gz suffix
    back = sitk.ReadImage(str(path))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), arr)
    np.testing.assert_allclose(back.GetSpacing(), img.GetSpacing())
    assert sorted(os.listdir(tmp_path)) == ["img.nii.gz", "sub"]


# ----------------------------------------------------------------------------------------------------
# .seg.nrrd
# ----------------------------------------------------------------------------------------------------

def _label_map_lps(with_tumor: bool = True) -> sitk.Image:
    arr = np.zeros((7, 9, 11), dtype=np.uint8)  # (k, j, i)
    arr[1:6, 2:8, 3:10] = 1
    if with_tumor:
        arr[2:4, 3:5, 4:6] = 2
        arr[5, 7, 9] = 2
    return _image(arr, spacing=(0.7, 0.9, 2.5), origin=(-12.5, 30.25, -100.0))


def _geometries():
    lps = _label_map_lps()
    yield "RAS", sitk.DICOMOrient(lps, "RAS")
    yield "PIR", sitk.DICOMOrient(lps, "PIR")
    oblique = sitk.Image(lps)
    oblique.SetDirection([float(v) for v in _rotation((1.0, 2.0, 0.5), 23.0).ravel()])
    yield "oblique", oblique


@pytest.mark.parametrize("name, img", [pytest.param(n, i, id=n) for n, i in _geometries()])
def test_seg_nrrd_round_trip(tmp_path, name, img):
    assert not np.allclose(np.array(img.GetDirection()).reshape(3, 3), np.eye(3))
    path = tmp_path / f"{name}.seg.nrrd"
    write_seg_nrrd(img, [LIVER, TUMOR], path)
    assert os.listdir(tmp_path) == [path.name]
    arr = sitk.GetArrayFromImage(img)

    # slicerio's view: voxels [i, j, k] and an ijk→LPS matrix that agrees with ITK's own transform.
    seg = slicerio.read_segmentation(str(path))
    np.testing.assert_array_equal(seg["voxels"], arr.transpose(2, 1, 0))
    matrix = np.asarray(seg["ijkToLPS"])
    size = img.GetSize()
    for index in [(0, 0, 0), (size[0] - 1, 0, 0), (0, size[1] - 1, 0), (0, 0, size[2] - 1), (3, 5, 2)]:
        expected = img.TransformIndexToPhysicalPoint(index)
        np.testing.assert_allclose(matrix @ [*index, 1], [*expected, 1], atol=1e-9)
    names = [s["name"] for s in seg["segments"]]
    assert names == ["Liver", "Tumor"]
    for s, spec in zip(seg["segments"], [LIVER, TUMOR]):
        assert s["labelValue"] == spec.value and s["layer"] == 0
        assert s["color"] == [c / 255.0 for c in spec.color]
        assert slicerio.segment_mask(seg, spec.name).sum() == (arr == spec.value).sum()

    # The header carries the exact TerminologyEntry strings.
    with open(path, "rb") as f:
        header = f.read(4096).split(b"\n\n")[0].decode("latin-1")
    for spec in (LIVER, TUMOR):
        assert f"TerminologyEntry:{spec.terminology}|" in header

    # Our reader: same voxels, geometry and segment descriptions.
    back, segments = read_seg_nrrd_labels(path)
    assert back.GetPixelID() == sitk.sitkUInt8
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), arr)
    np.testing.assert_allclose(back.GetSpacing(), img.GetSpacing(), atol=1e-6)
    np.testing.assert_allclose(back.GetOrigin(), img.GetOrigin(), atol=1e-6)
    np.testing.assert_allclose(back.GetDirection(), img.GetDirection(), atol=1e-6)
    assert [(s["name"], s["labelValue"], s["color"], s["terminology"]) for s in segments] == [
        (spec.name, spec.value, [c / 255.0 for c in spec.color], spec.terminology) for spec in (LIVER, TUMOR)]


def test_seg_nrrd_extents_follow_slicer_layer_convention(tmp_path):
    img = _label_map_lps(with_tumor=True)
    write_seg_nrrd(img, [LIVER, TUMOR], tmp_path / "a.seg.nrrd")
    seg = slicerio.read_segmentation(str(tmp_path / "a.seg.nrrd"))
    nz = np.nonzero(sitk.GetArrayFromImage(img).transpose(2, 1, 0))
    layer_extent = [int(v) for axis in nz for v in (axis.min(), axis.max())]
    assert layer_extent == [3, 9, 2, 7, 1, 5]
    # Every segment of the shared layer carries the layer's extent (Slicer allocates the layer with the
    # first segment's extent, so a smaller per-segment extent would crop the others).
    assert [s["extent"] for s in seg["segments"]] == [layer_extent, layer_extent]

    empty = _image(np.zeros((3, 4, 5), np.uint8))
    write_seg_nrrd(empty, [LIVER, TUMOR], tmp_path / "empty.seg.nrrd")
    seg = slicerio.read_segmentation(str(tmp_path / "empty.seg.nrrd"))
    assert [s["extent"] for s in seg["segments"]] == [[0, -1, 0, -1, 0, -1]] * 2


def test_seg_nrrd_empty_tumor_segment_is_written(tmp_path):
    img = sitk.DICOMOrient(_label_map_lps(with_tumor=False), "RAS")
    path = tmp_path / "liver_only.seg.nrrd"
    write_seg_nrrd(img, [LIVER, TUMOR], path)
    seg = slicerio.read_segmentation(str(path))
    assert [s["name"] for s in seg["segments"]] == ["Liver", "Tumor"]
    assert not slicerio.segment_mask(seg, "Tumor").any()
    assert slicerio.segment_mask(seg, "Liver").sum() == (sitk.GetArrayFromImage(img) == 1).sum()
    back, segments = read_seg_nrrd_labels(path)
    assert [s["name"] for s in segments] == ["Liver", "Tumor"]
    assert segments[1]["terminology"] == TUMOR.terminology
    assert not (sitk.GetArrayFromImage(back) == 2).any()


def test_seg_nrrd_other_pixel_type_and_terminology_kept_verbatim(tmp_path):
    # A region modifier without a region does not survive slicerio's dict form: the raw tag must be used.
    odd = "Some context~SCT^1^Cat~SCT^2^Type~^^~Anatomic ctx~^^~SCT^7771000^Left"
    spec = LabelSpec("Odd", 7, (1, 2, 3), odd, "structure")
    arr = np.zeros((4, 5, 6), dtype=np.int16)
    arr[1:3, 1:4, 2:5] = 7
    img = _image(arr, spacing=(1.5, 1.0, 3.0))
    write_seg_nrrd(img, [spec], tmp_path / "odd.seg.nrrd")
    back, segments = read_seg_nrrd_labels(tmp_path / "odd.seg.nrrd")
    assert segments[0]["terminology"] == odd
    assert segments[0]["labelValue"] == 7
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), arr.astype(np.uint8))


def test_seg_nrrd_refuses_unknown_values_and_existing_files(tmp_path):
    arr = np.zeros((3, 4, 5), np.uint8)
    arr[1, 1, 1] = 3
    with pytest.raises(ValueError, match=r"\[3\]"):
        write_seg_nrrd(_image(arr), [LIVER, TUMOR], tmp_path / "bad.seg.nrrd")
    assert os.listdir(tmp_path) == []

    ok = _label_map_lps()
    write_seg_nrrd(ok, [LIVER, TUMOR], tmp_path / "ok.seg.nrrd")
    with pytest.raises(FileExistsError):
        write_seg_nrrd(ok, [LIVER, TUMOR], tmp_path / "ok.seg.nrrd")
    write_seg_nrrd(sitk.DICOMOrient(ok, "RAS"), [LIVER, TUMOR], tmp_path / "ok.seg.nrrd", overwrite=True)
    back, _ = read_seg_nrrd_labels(tmp_path / "ok.seg.nrrd")
    np.testing.assert_allclose(back.GetDirection(), (-1, 0, 0, 0, -1, 0, 0, 0, 1), atol=1e-12)


def test_read_seg_nrrd_rejects_overlapping_layers(tmp_path):
    seg = slicerio.create_segmentation((4, 5, 6), np.diag([1.0, 1.0, 1.0, 1.0]))
    a = np.zeros((4, 5, 6), bool)
    a[:2] = True
    b = np.zeros((4, 5, 6), bool)
    b[1:3] = True  # overlaps a → second layer
    slicerio.add_segment(seg, a, {"id": "A"})
    slicerio.add_segment(seg, b, {"id": "B"})
    assert seg["voxels"].ndim == 4
    slicerio.write_segmentation(str(tmp_path / "two.seg.nrrd"), seg)
    with pytest.raises(ValueError, match="overlap"):
        read_seg_nrrd_labels(tmp_path / "two.seg.nrrd")


# ----------------------------------------------------------------------------------------------------
# in-plane diameter
# ----------------------------------------------------------------------------------------------------

def test_rectangle_and_single_pixel_diameters():
    rect = np.zeros((14, 9), bool)
    rect[2:12, 3:7] = True  # 10 rows (spacing 0.5) × 4 columns (spacing 1.0)
    # Corner to corner of the 5 mm × 4 mm pixel union (centre spread √(4.5²+3²) plus the footprint along
    # that diagonal would give only 6.379: the footprint has to be taken along the optimal direction).
    assert longest_in_plane_diameter_mm(rect, (0.5, 1.0)) == pytest.approx(math.sqrt(5.0 ** 2 + 4.0 ** 2), abs=1e-6)
    one = np.zeros((3, 3), bool)
    one[1, 1] = True
    assert longest_in_plane_diameter_mm(one, (0.5, 1.0)) == pytest.approx(math.hypot(0.5, 1.0), abs=1e-12)
    assert longest_in_plane_diameter_mm(np.zeros((3, 3), bool), (1.0, 1.0)) == 0.0
    line = np.zeros((1, 7), bool)
    line[0, 1:6] = True  # a 1×5 line: collinear centres
    assert longest_in_plane_diameter_mm(line, (2.0, 0.3)) == pytest.approx(math.hypot(2.0, 1.5), abs=1e-12)


def test_diameter_matches_brute_force():
    rng = np.random.default_rng(1234)
    for _ in range(150):
        shape = tuple(int(v) for v in rng.integers(1, 16, size=2))
        mask = rng.random(shape) < rng.uniform(0.05, 0.9)
        if not mask.any():
            continue
        spacing = tuple(float(v) for v in rng.uniform(0.3, 3.0, size=2))
        assert longest_in_plane_diameter_mm(mask, spacing) == pytest.approx(
            _brute_force_feret(mask, spacing), abs=1e-9)
    r = 8
    y, x = np.ogrid[-r:r + 1, -r:r + 1]
    disk = x * x + y * y <= r * r
    assert longest_in_plane_diameter_mm(disk, (1.0, 1.0)) == pytest.approx(DISK_FERET[r], abs=1e-9)
    assert 2 * r + 1 <= DISK_FERET[r] <= 2 * r + math.sqrt(2)


# ----------------------------------------------------------------------------------------------------
# lesion report
# ----------------------------------------------------------------------------------------------------

def test_lesion_report_two_spheres_isotropic():
    origin = (-20.0, 10.0, 5.5)
    img = _image(_spheres_volume(), origin=origin)
    report = lesion_report(img)
    json.dumps(report)  # JSON-serialisable

    assert report["lesion_count"] == 2
    big, small = report["lesions"]
    assert [big["id"], small["id"]] == [1, 2]
    assert big["voxel_count"] == SPHERE_VOXELS[8] and small["voxel_count"] == SPHERE_VOXELS[5]
    for lesion, r in ((big, 8), (small, 5)):
        assert lesion["volume_ml"] == pytest.approx(SPHERE_VOXELS[r] / 1000.0, rel=1e-12)
        # digitisation error of a lattice sphere of radius ≥ 5 stays below 3 % of 4/3·π·r³
        assert lesion["volume_ml"] == pytest.approx(4.0 / 3.0 * math.pi * r ** 3 / 1000.0, rel=0.03)
        assert lesion["longest_axial_diameter_mm"] == pytest.approx(DISK_FERET[r], abs=1e-9)
    # centroids of symmetric spheres are their centres; ITK index (x, y, z) = numpy (z, y, x) reversed
    assert big["centroid_lps_mm"] == pytest.approx([29 + origin[0], 28 + origin[1], 27 + origin[2]], abs=1e-9)
    assert small["centroid_lps_mm"] == pytest.approx([12 + origin[0], 12 + origin[1], 12 + origin[2]], abs=1e-9)
    assert report["slice_axis"] == 2
    assert big["slice_range"] == [27 - 8, 27 + 8] and small["slice_range"] == [12 - 5, 12 + 5]

    lesion_voxels = SPHERE_VOXELS[5] + SPHERE_VOXELS[8]
    assert report["organ_volume_ml"] == pytest.approx(40 ** 3 / 1000.0, rel=1e-12)  # organ incl. lesions
    assert report["lesion_volume_ml"] == pytest.approx(lesion_voxels / 1000.0, rel=1e-12)
    assert report["lesion_burden_percent"] == pytest.approx(100.0 * lesion_voxels / 40 ** 3, rel=1e-12)
    assert report["organ_name"] == "Liver" and report["lesion_name"] == "Tumor"


def test_lesion_report_anisotropic_spacing_scales_volumes_and_diameters():
    arr = _spheres_volume()
    iso = lesion_report(_image(arr))
    aniso = lesion_report(_image(arr, spacing=(0.7, 0.7, 2.5)))
    voxel_mm3 = 0.7 * 0.7 * 2.5
    assert aniso["lesion_count"] == 2
    for a, b, r in zip(aniso["lesions"], iso["lesions"], (8, 5)):
        assert a["voxel_count"] == b["voxel_count"] == SPHERE_VOXELS[r]
        assert a["volume_ml"] == pytest.approx(SPHERE_VOXELS[r] * voxel_mm3 / 1000.0, rel=1e-12)
        # isotropic in-plane spacing: the axial Feret diameter scales by 0.7
        assert a["longest_axial_diameter_mm"] == pytest.approx(0.7 * DISK_FERET[r], abs=1e-9)
        assert a["slice_range"] == b["slice_range"]
    assert aniso["organ_volume_ml"] == pytest.approx(40 ** 3 * voxel_mm3 / 1000.0, rel=1e-12)
    assert aniso["lesion_burden_percent"] == pytest.approx(iso["lesion_burden_percent"], rel=1e-12)


def test_lesion_report_rectangle_lesion():
    arr = np.ones((6, 12, 16), np.uint8)  # (z, y, x)
    arr[1:4, 5:9, 3:13] = 2  # 10 pixels along x (0.5 mm) × 4 along y (1.0 mm) × 3 slices (2.0 mm)
    img = _image(arr, spacing=(0.5, 1.0, 2.0), origin=(3.0, -4.0, 10.0))
    report = lesion_report(img)
    (lesion,) = report["lesions"]
    assert lesion["longest_axial_diameter_mm"] == pytest.approx(math.sqrt((10 * 0.5) ** 2 + (4 * 1.0) ** 2), abs=1e-6)
    assert lesion["voxel_count"] == 120
    assert lesion["volume_ml"] == pytest.approx(120 * 0.5 * 1.0 * 2.0 / 1000.0, rel=1e-12)
    assert lesion["slice_range"] == [1, 3]
    expected_centroid = img.TransformContinuousIndexToPhysicalPoint((7.5, 6.5, 2.0))
    assert lesion["centroid_lps_mm"] == pytest.approx(list(expected_centroid), abs=1e-9)
    assert report["lesion_burden_percent"] == pytest.approx(100.0 * 120 / arr.size, rel=1e-12)


@pytest.mark.parametrize("orientation", ["PIR", "PSL", "RAS", "SLP"])
def test_lesion_report_independent_of_orientation(orientation):
    arr = _spheres_volume(shape=(40, 44, 48), organ=(slice(2, 38), slice(3, 41), slice(1, 47)),
                          spheres=(((11, 12, 13), 5), ((26, 28, 29), 8), ((30, 10, 40), 2)))
    arr[5, 30:33, 5:12] = 2  # an elongated lesion, so that in-plane anisotropy matters
    lps = _image(arr, spacing=(0.6, 0.8, 2.5), origin=(-150.0, -120.0, 300.0))
    ref = lesion_report(lps)
    img = sitk.DICOMOrient(lps, orientation)
    assert not np.allclose(np.array(img.GetDirection()).reshape(3, 3), np.eye(3))
    rep = lesion_report(img)

    assert rep["lesion_count"] == ref["lesion_count"] == 4
    for key in ("organ_volume_ml", "lesion_volume_ml", "lesion_burden_percent"):
        assert rep[key] == pytest.approx(ref[key], rel=1e-12)
    axis = rep["slice_axis"]
    assert np.argmax(np.abs(np.array(img.GetDirection()).reshape(3, 3)[2])) == axis
    flipped = img.GetDirection()[6 + axis] < 0  # index runs towards inferior
    n = img.GetSize()[axis]
    for a, b in zip(rep["lesions"], ref["lesions"]):
        assert a["id"] == b["id"] and a["voxel_count"] == b["voxel_count"]
        assert a["volume_ml"] == pytest.approx(b["volume_ml"], rel=1e-12)
        assert a["longest_axial_diameter_mm"] == pytest.approx(b["longest_axial_diameter_mm"], abs=1e-9)
        assert a["centroid_lps_mm"] == pytest.approx(b["centroid_lps_mm"], abs=1e-6)
        first, last = b["slice_range"]
        assert a["slice_range"] == ([n - 1 - last, n - 1 - first] if flipped else [first, last])


def test_lesion_report_axial_axis_of_oblique_image():
    arr = np.ones((20, 24, 28), np.uint8)
    arr[4:7, 8:12, 5:15] = 2  # 10 × 4 × 3 along (x, y, z)
    # index y → (nearly) physical z, then tilted 10°: an oblique image whose axial slices run along y
    direction = _rotation((1.0, 1.0, 1.0), 10) @ _rotation((0.0, 0.0, 1.0), 90) @ _rotation((1.0, 0.0, 0.0), 90)
    img = _image(arr, spacing=(0.5, 1.0, 2.0), direction=direction)
    report = lesion_report(img)
    assert report["slice_axis"] == int(np.argmax(np.abs(direction[2])))
    assert report["slice_axis"] != 2
    # Axial slices now cut along index y: in-plane axes x (10 px, 0.5 mm) and z (3 px, 2.0 mm).
    assert report["lesions"][0]["longest_axial_diameter_mm"] == pytest.approx(math.hypot(5.0, 6.0), abs=1e-9)
    assert report["lesions"][0]["slice_range"] == [8, 11]


def test_lesion_report_connectivity_is_26():
    arr = np.ones((10, 10, 10), np.uint8)
    arr[2, 2, 2] = 2
    arr[3, 3, 3] = 2  # touches the first only at a corner: same lesion
    arr[7, 7, 7] = 2  # separate lesion
    report = lesion_report(_image(arr))
    assert report["lesion_count"] == 2
    assert [lesion["voxel_count"] for lesion in report["lesions"]] == [2, 1]
    assert report["lesions"][1]["longest_axial_diameter_mm"] == pytest.approx(math.sqrt(2.0))


def test_lesion_report_without_lesions_and_with_empty_organ():
    arr = np.zeros((8, 9, 10), np.uint8)
    arr[2:6, 2:7, 2:8] = 1
    report = lesion_report(_image(arr, spacing=(2.0, 2.0, 2.0)))
    assert report["lesion_count"] == 0 and report["lesions"] == []
    assert report["lesion_volume_ml"] == 0.0 and report["lesion_burden_percent"] == 0.0
    assert report["organ_volume_ml"] == pytest.approx(4 * 5 * 6 * 8 / 1000.0, rel=1e-12)

    empty = lesion_report(_image(np.zeros((4, 4, 4), np.uint8)))
    assert empty["organ_volume_ml"] == 0.0 and empty["lesion_burden_percent"] == 0.0
    assert empty["lesion_count"] == 0 and empty["lesions"] == []

    only_lesion = np.zeros((4, 4, 4), np.uint8)
    only_lesion[1:3, 1:3, 1:3] = 2  # organ made only of lesion: burden 100 %
    rep = lesion_report(_image(only_lesion))
    assert rep["lesion_burden_percent"] == pytest.approx(100.0)
    assert rep["organ_volume_ml"] == pytest.approx(8 / 1000.0)


def test_lesion_report_custom_values_and_json_file(tmp_path):
    arr = np.zeros((6, 6, 6), np.uint16)
    arr[1:5, 1:5, 1:5] = 3
    arr[2:4, 2:4, 2:3] = 9
    report = lesion_report(_image(arr), organ_value=3, lesion_value=9, lesion_name="Cyst", organ_name="Kidney")
    assert report["lesion_count"] == 1 and report["lesions"][0]["voxel_count"] == 4
    assert report["lesion_burden_percent"] == pytest.approx(100.0 * 4 / 64)
    assert (report["organ_name"], report["lesion_name"]) == ("Kidney", "Cyst")
    write_json_atomic(tmp_path / "report.json", report)
    assert json.loads((tmp_path / "report.json").read_text(encoding="utf-8")) == report

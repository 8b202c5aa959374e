"""A corpus of damaged, odd and hostile inputs, generated (no stored blobs), each with what the CLI must do.

Every entry builds its files in its own folder and returns the ``livertumorseg`` arguments to run. The rule
for a refusal: exit status 1, exactly one line on stderr naming the problem and the fix, no file left under
a final name, files that existed untouched. An awkward but valid input must give a correct result instead.
Classes (``cls``): image files whose damage the image library hides, DICOM series with missing or bad
members, impossible geometry, options and model files, outputs, messages.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import SimpleITK as sitk
import torch

from LiverTumorSegLib.modelfile import save_model
from LiverTumorSegLib.phantom import make_phantom

from conftest import encode_labels, oracle_model, write_dicom_series


@dataclass
class Base:
    """What every entry can start from: a small CT the oracle segments exactly, its truth, the oracle's file."""

    ct: sitk.Image
    truth: sitk.Image
    model: Path


def make_base(root: Path) -> Base:
    ct, truth = make_phantom(shape_zyx=(12, 48, 56), spacing_zyx=(3.0, 1.8, 1.8), seed=5, lesion_diameters_mm=(14.0,))
    model = save_model(oracle_model(), root / "oracle.pt")
    return Base(encode_labels(ct, truth), truth, model)


@dataclass
class Entry:
    name: str
    cls: str
    build: Callable[[Path, Base], list[str]]
    #: "refuse": one line, exit 1, nothing written; "ok": exit 0 and a correct label map; "partial": batch
    expect: str = "refuse"
    #: a regular expression the error (or warning) line must match
    match: str = ""


def _seg(root: Path, base: Base, *inputs: str | Path, extra: tuple[str, ...] = ()) -> list[str]:
    return ["segment", *map(str, inputs), "-o", str(root / "out"), "--model", str(base.model), "--device", "cpu",
            "--quiet", *extra]


def _write(image: sitk.Image, path: Path, compress: bool = True) -> Path:
    sitk.WriteImage(image, str(path), useCompression=compress)
    return path


def _cut(path: Path, keep: float) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def _like(array: np.ndarray, ref: sitk.Image) -> sitk.Image:
    img = sitk.GetImageFromArray(array)
    img.CopyInformation(ref)
    return img


def _nifti_header_edit(path: Path, offset: int, fmt: str, value) -> Path:
    raw = bytearray(path.read_bytes())
    raw[offset:offset + struct.calcsize(fmt)] = struct.pack(fmt, value)
    path.write_bytes(bytes(raw))
    return path


def _float_with(base: Base, value: float, dtype=np.float32) -> sitk.Image:
    a = sitk.GetArrayFromImage(base.ct).astype(dtype)
    a[6, 20, 20] = value
    return _like(a, base.ct)


def _with_spacing(base: Base, spacing) -> sitk.Image:
    img = sitk.Image(base.ct)
    img.SetSpacing(spacing)
    return img


# ---- image files whose damage the image library hides -------------------------------------------------------


def truncated(suffix: str, keep: float = 0.6, compress: bool = True):
    def build(root: Path, base: Base) -> list[str]:
        return _seg(root, base, _cut(_write(base.ct, root / f"ct{suffix}", compress), keep))
    return build


def corrupt_gzip(root, base):
    path = _write(base.ct, root / "ct.nii.gz")
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2: len(raw) // 2 + 64] = bytes(64)
    path.write_bytes(bytes(raw))
    return _seg(root, base, path)


def lying_slices(slices: int):
    def build(root: Path, base: Base) -> list[str]:
        return _seg(root, base, _nifti_header_edit(_write(base.ct, root / "ct.nii", False), 46, "<h", slices))
    return build


def huge_header(root, base):
    path = _write(base.ct, root / "ct.nii", False)
    for offset in (42, 44):
        _nifti_header_edit(path, offset, "<h", 30000)
    return _seg(root, base, _nifti_header_edit(path, 46, "<h", 30000))


def nan_voxels(value: float, suffix: str, dtype=np.float32):
    def build(root: Path, base: Base) -> list[str]:
        return _seg(root, base, _write(_float_with(base, value, dtype), root / f"ct{suffix}"))
    return build


def detached_missing(suffix: str):
    def build(root: Path, base: Base) -> list[str]:
        header = _write(base.ct, root / f"ct{suffix}", compress=False)
        for data in root.iterdir():
            if data != header and data.name.startswith("ct.") and data.suffix in (".raw", ".gz", ".zraw"):
                data.unlink()
        return _seg(root, base, header)
    return build


def detached_truncated(root, base):
    header = _write(base.ct, root / "ct.nhdr", compress=False)
    data = next(p for p in root.iterdir() if p.name.startswith("ct.") and p != header)
    _cut(data, 0.5)
    return _seg(root, base, header)


def empty_file(root, base):
    (root / "ct.nii.gz").write_bytes(b"")
    return _seg(root, base, root / "ct.nii.gz")


def text_as_image(root, base):
    (root / "ct.nii.gz").write_text("this is not an image\n", encoding="utf-8")
    return _seg(root, base, root / "ct.nii.gz")


def png_as_nrrd(root, base):
    (root / "ct.nrrd").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(200))
    return _seg(root, base, root / "ct.nrrd")


def pixdim(index: int, value: float):
    def build(root: Path, base: Base) -> list[str]:
        return _seg(root, base, _nifti_header_edit(_write(base.ct, root / "ct.nii", False), 76 + 4 * index, "<f",
                                                   value))
    return build


def meta_spacing_zero(root, base):
    path = _write(base.ct, root / "ct.mha", compress=False)
    text = path.read_bytes().replace(b"ElementSpacing = 1.8 1.8 3", b"ElementSpacing = 0 1.8 3")
    path.write_bytes(text)
    return _seg(root, base, path)


# ---- DICOM series -------------------------------------------------------------------------------------------


def dicom(mutate: Callable[[Path], None] | None = None, extra: tuple[str, ...] = (), modality: str = "CT"):
    def build(root: Path, base: Base) -> list[str]:
        folder = root / "series"
        write_dicom_series(base.ct, folder, modality=modality)
        if mutate is not None:
            mutate(folder)
        return _seg(root, base, folder, extra=extra)
    return build


def _drop_middle(folder: Path) -> None:
    (folder / "slice006.dcm").unlink()


def _truncate_member(folder: Path) -> None:
    _cut(folder / "slice004.dcm", 0.3)


def _header_only_member(folder: Path) -> None:
    data = (folder / "slice009.dcm").read_bytes()
    (folder / "slice009.dcm").write_bytes(data[:700])


def _duplicate_position(folder: Path) -> None:
    raw = (folder / "slice005.dcm").read_bytes()
    (folder / "slice006.dcm").write_bytes(raw.replace(b"1.2.826", b"1.2.826", 1))


def _readme(folder: Path) -> None:
    (folder / "README.txt").write_text("exported by hand\n", encoding="utf-8")


# ---- impossible geometry ------------------------------------------------------------------------------------


def geometry(spacing=None, direction=None, suffix=".nrrd"):
    def build(root: Path, base: Base) -> list[str]:
        img = sitk.Image(base.ct)
        if spacing is not None:
            img.SetSpacing(spacing)
        if direction is not None:
            img.SetDirection(direction)
        return _seg(root, base, _write(img, root / f"ct{suffix}"))
    return build


def nrrd_directions(text: bytes):
    def build(root: Path, base: Base) -> list[str]:
        path = _write(base.ct, root / "ct.nrrd", compress=False)
        raw = path.read_bytes()
        start = raw.index(b"space directions:")
        end = raw.index(b"\n", start)
        path.write_bytes(raw[:start] + b"space directions: " + text + raw[end:])
        return _seg(root, base, path)
    return build


def oblique(root, base):
    angle = np.radians(30)
    c, s = np.cos(angle), np.sin(angle)
    img = sitk.Image(base.ct)
    img.SetDirection((c, -s, 0, s, c, 0, 0, 0, 1))
    return _seg(root, base, _write(img, root / "ct.nii.gz"))


def image_2d(root, base):
    return _seg(root, base, _write(base.ct[:, :, 5], root / "ct.nrrd"))


def image_4d(root, base):
    return _seg(root, base, _write(sitk.JoinSeries([base.ct, base.ct]), root / "ct.nii.gz"))


def rgb(root, base):
    a = np.stack([sitk.GetArrayFromImage(base.ct)] * 3, axis=-1).astype(np.int16)
    return _seg(root, base, _write(sitk.GetImageFromArray(a, isVector=True), root / "ct.nrrd"))


def constant(root, base):
    return _seg(root, base, _write(_like(np.full((12, 48, 56), -1000, np.int16), base.ct), root / "ct.nii.gz"))


def mr_like(root, base):
    a = np.clip(sitk.GetArrayFromImage(base.ct).astype(np.int16) + 1100, 0, None)
    return _seg(root, base, _write(_like(a, base.ct), root / "ct.nii.gz"))


def one_slice(root, base):
    return _seg(root, base, _write(base.ct[:, :, 5:6], root / "ct.nii.gz"))


# ---- options and model files --------------------------------------------------------------------------------


def option(*extra: str):
    def build(root: Path, base: Base) -> list[str]:
        return _seg(root, base, _write(base.ct, root / "ct.nii.gz"), extra=extra)
    return build


def model_file(make: Callable[[Path, Base], Path]):
    def build(root: Path, base: Base) -> list[str]:
        args = _seg(root, base, _write(base.ct, root / "ct.nii.gz"))
        args[args.index("--model") + 1] = str(make(root, base))
        return args
    return build


def _json_model(root, base):
    (root / "model.pt").write_text(json.dumps({"name": "not a model"}), encoding="utf-8")
    return root / "model.pt"


def _nifti_model(root, base):
    return _write(base.ct, root / "model.pt.nii.gz").rename(root / "model.pt")


def _nan_model(root, base):
    model = oracle_model()
    model.network.levels.fill_(float("nan"))
    return save_model(model, root / "model.pt")


def _labels_mismatch(root, base):
    """A model file listing three labels for a network with two outputs (the ninth-label bug's cousin)."""
    payload = torch.load(base.model, weights_only=True)
    payload["config"]["labels"].append({**payload["config"]["labels"][1], "name": "Vessel", "value": 3})
    payload["config"]["thresholds"] = [0.5, 0.5, 0.5]
    torch.save(payload, root / "model.pt")
    return root / "model.pt"


def _truncated_model(root, base):
    (root / "model.pt").write_bytes(base.model.read_bytes()[:3000])
    return root / "model.pt"


class _Exploit:
    def __reduce__(self):
        return (os.system, ("echo pwned > pwned.txt",))


def _pickle_model(root, base):
    torch.save({"format": "LiverTumorSeg model", "format_version": 1, "payload": _Exploit()}, root / "model.pt")
    return root / "model.pt"


def import_own(root, base):
    return ["import-weights", str(base.model), "--arch", "rec_unet", "-o", str(root / "out" / "m.pt")]


def import_json(root, base):
    (root / "authors.pth").write_text("{}", encoding="utf-8")
    return ["import-weights", str(root / "authors.pth"), "--arch", "rec_unet", "-o", str(root / "out" / "m.pt")]


def evaluate_with(make_pred: Callable[[Base], sitk.Image]):
    def build(root: Path, base: Base) -> list[str]:
        (root / "pred").mkdir()
        (root / "ref").mkdir()
        _write(make_pred(base), root / "pred" / "c1.nii.gz")
        _write(base.truth, root / "ref" / "c1.nii.gz")
        return ["evaluate", str(root / "pred"), str(root / "ref"), "-o", str(root / "out" / "report"), "--quiet"]
    return build


def _probability(base: Base) -> sitk.Image:
    return _like((sitk.GetArrayFromImage(base.truth) > 0).astype(np.float32) * 0.8, base.truth)


def train_with(*extra: str, data: Callable[[Path, Base], Path] | None = None):
    def build(root: Path, base: Base) -> list[str]:
        folder = data(root, base) if data is not None else _phantom_folder(root, base)
        return ["train", str(folder), "-o", str(root / "out" / "run"), "--quiet", "--device", "cpu", "--width", "4",
                "--epochs", "1", "--steps-per-epoch", "1", "--crop", "32", "--folds", "0",
                "--cache-dir", str(root / "cache"), *extra]
    return build


def _phantom_folder(root: Path, base: Base) -> Path:
    folder = root / "data"
    folder.mkdir()
    _write(base.ct, folder / "a.nii.gz")
    _write(base.truth, folder / "a_truth.nii.gz")
    return folder


def _clipped_npz(root: Path, base: Base) -> Path:
    folder = root / "data"
    folder.mkdir()
    image = np.clip(sitk.GetArrayFromImage(base.ct) + 45, 0, 205).astype(np.uint8)
    np.savez(folder / "lits_like.npz", image=image, label=sitk.GetArrayFromImage(base.truth),
             spacing_zyx=np.array([3.0, 1.8, 1.8]), hu_scale=np.float32(1.0), hu_offset=np.float32(-45.0),
             hu_clip=np.array([-45, 160], np.int16))
    return folder


# ---- outputs ------------------------------------------------------------------------------------------------


def out_is_file(root, base):
    (root / "out").write_text("a file", encoding="utf-8")
    return _seg(root, base, _write(base.ct, root / "ct.nii.gz"))


def out_under_file(root, base):
    (root / "blocker").write_text("a file", encoding="utf-8")
    args = _seg(root, base, _write(base.ct, root / "ct.nii.gz"))
    args[args.index("-o") + 1] = str(root / "blocker" / "out")
    return args


def read_only_out(root, base):
    args = _seg(root, base, _write(base.ct, root / "ct.nii.gz"))
    args[args.index("-o") + 1] = read_only_folder(root)
    return args


def read_only_folder(root: Path) -> str:
    """A folder this process cannot write: /sys (read-only even for root) or a folder without write permission."""
    if os.geteuid() == 0 and Path("/sys/kernel").is_dir():
        return "/sys/kernel/livertumorseg-out"
    folder = root / "locked"
    folder.mkdir(exist_ok=True)
    folder.chmod(0o555)
    return str(folder)


def output_is_folder(root, base):
    (root / "out" / "ct.labels.nii.gz").mkdir(parents=True)
    return _seg(root, base, _write(base.ct, root / "ct.nii.gz"))


def existing_outputs(root, base):
    (root / "out").mkdir()
    (root / "out" / "ct.labels.nii.gz").write_bytes(b"keep me")
    return _seg(root, base, _write(base.ct, root / "ct.nii.gz"))


def stale_temporary(root, base):
    (root / "out").mkdir()
    (root / "out" / ".ct.999999999-0a1b2c3d.tmp.labels.nii.gz").write_bytes(b"left by a killed run")
    return _seg(root, base, _write(base.ct, root / "ct.nii.gz"))


def evaluate_out_under_file(root, base):
    args = evaluate_with(lambda b: b.truth)(root, base)
    (root / "blocker").write_text("a file", encoding="utf-8")
    args[args.index("-o") + 1] = str(root / "blocker" / "report")
    return args


def export_to_file(root, base):
    folder = _phantom_folder(root, base)
    (root / "out").write_text("a file", encoding="utf-8")
    return ["export", str(folder), "-o", str(root / "out")]


def import_read_only(root, base):
    """A genuine authors'-style checkpoint (DataParallel keys), converted into a folder that cannot be written."""
    from LiverTumorSegLib.models import build_model

    net = build_model("rec_unet", in_channels=1, out_channels=2, base_width=4)
    torch.save({f"module.{k}": v for k, v in net.state_dict().items()}, root / "authors.pth")
    return ["import-weights", str(root / "authors.pth"), "--arch", "rec_unet", "-o",
            str(Path(read_only_folder(root)) / "m.pt")]


def batch(root, base):
    """Good, damaged, good: the batch goes on past the bad case and exits 1."""
    good = [_write(base.ct, root / f"good{i}.nii.gz") for i in (1, 2)]
    bad = _cut(_write(base.ct, root / "bad.nii.gz"), 0.5)
    return _seg(root, base, good[0], bad, good[1])


def _spaced(array: np.ndarray, spacing) -> sitk.Image:
    img = sitk.GetImageFromArray(array)
    img.SetSpacing(spacing)
    return img


def _mkdir(path: Path) -> Path:
    path.mkdir()
    return path


def _train_under_file(root: Path, base: Base) -> list[str]:
    args = train_with()(root, base)
    (root / "blocker").write_text("a file", encoding="utf-8")
    args[args.index("-o") + 1] = str(root / "blocker" / "run")
    return args

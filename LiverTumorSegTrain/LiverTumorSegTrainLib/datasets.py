"""Labelled training cases found in a folder: LiTS, MSD, 3D-IRCADb-01, npz, 3D Slicer exports, phantoms.

Public datasets ship the same information (a CT in HU and a label map) in half a dozen layouts, with
their own label values and their own quirks. Every reader here turns a case into the one form the
trainer and the evaluation need: a ``SimpleITK.Image`` CT plus a ``uint8`` label map on *exactly* the
same grid (same size, spacing, origin and direction), whose values 1..n are named by
``LabeledCase.label_names``. Nothing is ever written inside a dataset folder (zipped DICOM is
extracted to a temporary folder that is removed afterwards).

Label conventions (values 1..n, names in ``label_names``):

* ``("liver", "tumor")``: 0 background, 1 liver, 2 tumour. Tumour voxels are liver tissue (LiTS,
  MSD Task03, 3D-IRCADb, Slicer exports, npz, phantoms).
* ``("vessel", "tumor")``: MSD Task08 (hepatic vessels and tumours). It has no liver label and none
  is ever invented: everything else is background.
* For an MSD ``dataset.json`` the names come from the file (``"cancer"``, ``"tumour"`` → ``"tumor"``;
  ``"hepatic vessel"`` → ``"vessel"``) and values are kept as they are.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import tempfile
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Iterator

import numpy as np
import SimpleITK as sitk

from LiverTumorSegLib.errors import InputImageError, LiverTumorSegError
from LiverTumorSegLib.geometry import GRID_TOLERANCE, grid_difference
from LiverTumorSegLib.imageio import read_image_file
from LiverTumorSegLib.validation import HU_VALID_KEY

#: Dataset kinds, in the order auto-detection tries them.
KINDS = ("msd", "lits", "ircadb", "npz", "slicer", "phantom-folder")

LIVER_TUMOR = ("liver", "tumor")
VESSEL_TUMOR = ("vessel", "tumor")


SUPPORTED_LAYOUTS = (
    "MSD (dataset.json), LiTS (volume-N.nii[.gz] + segmentation-N.nii[.gz]), 3D-IRCADb "
    "(patient folders with PATIENT_DICOM and MASKS_DICOM, folders or .zip), npz (keys image, label, "
    "spacing_zyx), 3D Slicer (<case>.seg.nrrd beside <case>.nrrd/.nii.gz/.nii/.mha), phantom "
    "(<case>.nii.gz + <case>_truth.nii.gz)")

_CT_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd", ".nhdr")
_SEG_SUFFIX = ".seg.nrrd"
#: name endings/beginnings of label volumes that are never a CT
_LABEL_LIKE_END = ("_truth", "-label", "_label", "_labels", ".labels", "-seg", "_seg", "-segmentation",
                   "_segmentation")
_IRCADB_INNER = {"PATIENT_DICOM", "MASKS_DICOM", "LABELLED_DICOM", "MESHES_VTK"}
_LITS_FILE = re.compile(r"^(volume|segmentation)-(\d+)\.nii(\.gz)?$", re.I)
_NPZ_KEYS = {"image", "spacing_zyx"}

# Segment recognition in Slicer files: by name first, else by terminology type code.
_TUMOR_WORDS = re.compile(r"tumou?r|lesion|neoplasm|cancer|metasta")
_NOT_LIVER_WORDS = re.compile(r"vessel|vein|arter|cyst|kyst|portal|duct|bile|biliar")
_LIVER_CODES = {"10200004", "T-62000"}  # SCT liver; SRT liver (Slicer 4 terminology)
_TUMOR_CODES = {"108369006", "4147007", "52988006",  # SCT neoplasm, mass, lesion
                "M-80000", "M-03000", "M-01000"}  # SRT neoplasm, mass, lesion (Slicer 4 terminology)

# MSD label names → our names
_MSD_NAMES = {"cancer": "tumor", "tumour": "tumor", "tumor": "tumor", "tumours": "tumor", "tumors": "tumor",
              "liver tumor": "tumor", "liver tumour": "tumor", "hepatic vessel": "vessel",
              "hepatic vessels": "vessel", "vessel": "vessel", "vessels": "vessel", "liver": "liver"}


@dataclass(frozen=True)
class LabeledCase:
    """One training case: where its CT and labels are, and what its label values mean.

    It holds paths, not pixels, so that a whole dataset can be listed, split by patient and cached
    without reading a single volume; ``load`` reads it when needed.
    """

    case_id: str
    kind: str  # one of KINDS
    label_names: tuple[str, ...]  # names of label values 1..n, lower case
    image_path: Path
    label_path: Path | None = None  # None: unlabelled (pseudo-labelling)
    #: scans of one patient share a group, and a group is never split between training and validation
    #: (None: the case is its own group)
    group: str | None = None
    #: HU range the stored image really holds (values outside it were clipped at the source); None: full range
    hu_valid: tuple[float, float] | None = None

    @property
    def patient_group(self) -> str:
        return self.group or self.case_id

    def load(self) -> tuple[sitk.Image, sitk.Image | None]:
        """(ct, labels): the CT as stored (HU) and a uint8 label map with the CT's exact geometry.

        Raises LiverTumorSegError (one line, naming the case) when files are unreadable, the grids do
        not match, or label values are not the documented ones.
        """
        try:
            ct, labels = _LOADERS[self.kind](self)
        except InputImageError as e:  # a truncated or lying file, NaN voxels (read_image_file's checks)
            raise LiverTumorSegError(f"case {self.case_id}: {e}") from None
        except RuntimeError as e:  # SimpleITK/GDCM read errors
            raise LiverTumorSegError(f"case {self.case_id}: cannot read its image or labels: {_last_line(e)}; "
                                     f"check or re-download the files") from None
        if ct.GetDimension() != 3 or ct.GetNumberOfComponentsPerPixel() != 1:
            raise LiverTumorSegError(f"case {self.case_id}: {self.image_path} is not a 3-D scalar CT volume")
        if labels is not None:
            _check_same_grid(self.case_id, ct, labels, "label map")
            labels.CopyInformation(ct)  # only float noise can differ now
        return ct, labels


# --------------------------------------------------------------------------------------------------
# Finding cases
# --------------------------------------------------------------------------------------------------


def find_cases(root: str | os.PathLike, kind: str | None = "auto", include_unlabelled: bool = False
               ) -> list[LabeledCase]:
    """All cases of one dataset under ``root`` (searched recursively), in a deterministic order.

    Cases are sorted naturally by their source files (``volume-2`` before ``volume-10``), which for a
    folder written by ``export_dataset`` is the export order. Case ids are unique: the file or folder
    name of each case (for exports, the original case id from ``cases.json``), prefixed with its
    parent folders when two folders hold the same name. ``kind="auto"`` (or None) detects the layout; a folder
    matching several layouts, or none, is an error rather than a guess. Unlabelled cases (MSD test
    entries, CTs without labels) are listed only with ``include_unlabelled``.
    """
    root, kind = Path(root), kind or "auto"
    if not root.is_dir():
        raise LiverTumorSegError(f"dataset folder not found: {root}; give the folder that holds the cases")
    if kind != "auto" and kind not in KINDS:
        raise LiverTumorSegError(f"unknown dataset kind {kind!r}; use one of auto, {', '.join(KINDS)}")
    listing = _walk(root)
    if kind == "auto":
        kind = _detect(root, listing)
    cases = _FINDERS[kind](root, listing, include_unlabelled)
    if not cases:
        raise LiverTumorSegError(f"no {kind} cases found in {root}; supported layouts: {SUPPORTED_LAYOUTS}")
    return _unique_ids(cases, root)


def _detect(root: Path, listing: list[tuple[Path, list[str], list[str]]]) -> str:
    """The one layout that has labelled cases under ``root`` (an MSD ``dataset.json`` decides alone)."""
    if any("dataset.json" in files for _, _, files in listing):
        return "msd"
    found = []
    for kind in KINDS[1:]:
        try:
            if _FINDERS[kind](root, listing, False):
                found.append(kind)
        except LiverTumorSegError:
            found.append(kind)  # its layout is there, but broken: let find_cases report why
    if not found:
        raise LiverTumorSegError(f"no training data layout recognised in {root}; supported layouts: "
                                 f"{SUPPORTED_LAYOUTS}")
    if len(found) > 1:
        raise LiverTumorSegError(f"{root} matches several dataset layouts ({', '.join(found)}); "
                                 f"pass the kind explicitly (--kind {found[0]})")
    return found[0]


def _walk(root: Path) -> list[tuple[Path, list[str], list[str]]]:
    """(folder, sub-folder names, file names) for every folder; hidden entries and DICOM internals skipped."""
    out = []
    for folder, dirs, files in os.walk(root):
        all_dirs = sorted(d for d in dirs if not d.startswith("."))
        dirs[:] = [d for d in all_dirs if d.upper() not in _IRCADB_INNER]
        out.append((Path(folder), all_dirs, sorted(f for f in files if not f.startswith("."))))
    out.sort(key=lambda entry: _natural(str(entry[0].relative_to(root))))
    return out


def _natural(text: str) -> tuple:
    """Sort key where digit runs compare as numbers: case2 < case10."""
    parts = re.split(r"(\d+)", text)
    return tuple(int(p) if i % 2 else p.lower() for i, p in enumerate(parts)), text


def _strip_suffix(name: str, suffixes: tuple[str, ...] = _CT_SUFFIXES) -> str | None:
    low = name.lower()
    for suffix in suffixes:
        if low.endswith(suffix):
            return name[: -len(suffix)]
    return None


def _unique_ids(cases: list[LabeledCase], root: Path) -> list[LabeledCase]:
    """Prefix repeated case ids with their folders relative to ``root`` (deterministic, readable)."""
    counts: dict[str, int] = {}
    for case in cases:
        counts[case.case_id] = counts.get(case.case_id, 0) + 1
    if all(n == 1 for n in counts.values()):
        return cases
    out = []
    for case in cases:
        if counts[case.case_id] > 1:
            parent = case.image_path.parent if case.kind != "ircadb" else case.image_path.parent.parent
            rel = "_".join(parent.relative_to(root).parts) if parent != root else "root"
            case = dataclasses.replace(case, case_id=f"{rel}_{case.case_id}")
        out.append(case)
    ids = [c.case_id for c in out]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})
        raise LiverTumorSegError(f"case ids {dup} occur more than once in {root}; rename the files")
    return out


def _export_ids(folder: Path) -> tuple[dict[int, str], tuple[str, ...] | None]:
    """Original case ids (index → id) and label names recorded by ``export_dataset`` in ``cases.json``."""
    path = folder / "cases.json"
    if not path.is_file():
        return {}, None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        ids = {int(k): str(v) for k, v in data.get("cases", {}).items()}
        names = data.get("label_names")
        return ids, (tuple(str(n) for n in names) if names else None)
    except (ValueError, AttributeError, TypeError) as e:
        raise LiverTumorSegError(f"{path} is not a valid cases.json ({e}); remove it or re-export") from None


def _with_export_ids(cases: list[tuple[int, LabeledCase]], ids: dict[int, str]) -> list[LabeledCase]:
    """Use the original ids of an export when ``cases.json`` names every case, uniquely; else file ids."""
    if ids and all(i in ids for i, _ in cases) and len({ids[i] for i, _ in cases}) == len(cases):
        return [dataclasses.replace(c, case_id=ids[i]) for i, c in cases]
    return [c for _, c in cases]


# ---- LiTS -----------------------------------------------------------------------------------------


def _find_lits(root: Path, listing, include_unlabelled: bool) -> list[LabeledCase]:
    """``volume-N`` / ``segmentation-N`` pairs, matched by N across sub-folders (LiTS ships batches)."""
    files: dict[str, dict[int, Path]] = {"volume": {}, "segmentation": {}}
    for folder, _, names in listing:
        for name in names:
            match = _LITS_FILE.match(name)
            if not match:
                continue
            role, number = match.group(1).lower(), int(match.group(2))
            if number in files[role]:
                raise LiverTumorSegError(f"LiTS {role}-{number} found twice ({files[role][number]} and "
                                         f"{folder / name}); keep one")
            files[role][number] = folder / name
    ids, names_from_export = _export_ids(root)
    label_names = names_from_export or LIVER_TUMOR
    cases = []
    for number in sorted(files["volume"]):
        label = files["segmentation"].get(number)
        if label is None and not include_unlabelled:
            continue
        cases.append((number, LabeledCase(f"volume-{number}", "lits", label_names, files["volume"][number], label)))
    return _with_export_ids(cases, ids)


def _load_nifti_pair(case: LabeledCase) -> tuple[sitk.Image, sitk.Image | None]:
    ct = read_image_file(case.image_path)
    if case.label_path is None:
        return ct, None
    labels = read_image_file(case.label_path)
    return ct, _labels_uint8(case, labels, len(case.label_names))


# ---- MSD ------------------------------------------------------------------------------------------


def msd_label_names(labels: dict, source: str = "dataset.json") -> tuple[str, ...]:
    """Names of label values 1..n from an MSD ``labels`` entry, in our vocabulary.

    Accepts MSD's ``{"0": "background", "1": "liver", "2": "cancer"}`` and nnU-Net v2's
    ``{"background": 0, "liver": 1, ...}``. Unknown names are kept (lower case) rather than guessed,
    so a non-liver task is visible as such to whoever trains on it.
    """
    try:
        if all(str(k).strip().isdigit() for k in labels):
            by_value = {int(k): str(v) for k, v in labels.items()}
        else:
            by_value = {int(v): str(k) for k, v in labels.items()}
    except (TypeError, ValueError, AttributeError):
        raise LiverTumorSegError(f"{source}: 'labels' must map values to names, got {labels!r}") from None
    values = sorted(v for v in by_value if v != 0)
    if values != list(range(1, len(values) + 1)):
        raise LiverTumorSegError(f"{source}: label values {values} are not 1..n; renumber the labels")
    names = []
    for v in values:
        name = " ".join(by_value[v].lower().replace("_", " ").split())
        names.append(_MSD_NAMES.get(name, name))
    if len(set(names)) != len(names):
        raise LiverTumorSegError(f"{source}: label names {names} repeat after normalisation")
    return tuple(names)


def _find_msd(root: Path, listing, include_unlabelled: bool) -> list[LabeledCase]:
    """Cases listed in every ``dataset.json`` under ``root`` ("training"; "test" ones are unlabelled)."""
    cases: list[LabeledCase] = []
    for folder, _, names in listing:
        if "dataset.json" not in names:
            continue
        path = folder / "dataset.json"
        try:
            meta = json.loads(path.read_text(encoding="utf-8"))
            label_names = msd_label_names(meta["labels"], str(path))
            entries = [(e["image"], e["label"]) for e in meta.get("training", [])]
            if include_unlabelled:
                entries += [(e["image"] if isinstance(e, dict) else e, None) for e in meta.get("test", [])]
        except (ValueError, KeyError, TypeError) as e:
            raise LiverTumorSegError(f"{path} is not a valid MSD dataset.json ({type(e).__name__}: {e})") from None
        ids, _ = _export_ids(folder)
        found = []
        for image, label in entries:
            image_path = folder / image
            label_path = None if label is None else folder / label
            for p in (image_path, label_path):
                if p is not None and not p.is_file():
                    raise LiverTumorSegError(f"{path} lists {p.relative_to(folder)}, which does not exist; "
                                             f"complete the download or fix dataset.json")
            stem = _strip_suffix(image_path.name) or image_path.name
            match = re.search(r"_(\d+)$", stem)
            index = int(match.group(1)) if match else -1
            found.append((index, LabeledCase(stem, "msd", label_names, image_path, label_path)))
        found.sort(key=lambda item: _natural(item[1].image_path.name))
        cases.extend(_with_export_ids(found, ids) if all(i >= 0 for i, _ in found) else [c for _, c in found])
    return cases


# ---- 3D-IRCADb-01 ---------------------------------------------------------------------------------


def _find_ircadb(root: Path, listing, include_unlabelled: bool) -> list[LabeledCase]:
    """Patient folders holding ``PATIENT_DICOM`` (folder or .zip), labelled when ``MASKS_DICOM`` is there."""
    cases = []
    for folder, dirs, names in listing:
        entries = {n.upper(): folder / n for n in [*dirs, *names]}
        image = entries.get("PATIENT_DICOM") or entries.get("PATIENT_DICOM.ZIP")
        if image is None:
            continue
        label = entries.get("MASKS_DICOM") or entries.get("MASKS_DICOM.ZIP")
        if label is None and not include_unlabelled:
            continue
        cases.append(LabeledCase(folder.name, "ircadb", LIVER_TUMOR, image, label))
    return cases


@contextlib.contextmanager
def _unpacked(path: Path, keep=lambda parts: True) -> Iterator[Path]:
    """A folder with the content of ``path``: the folder itself, or a zip extracted to a temporary folder.

    Only members whose folder names satisfy ``keep`` are extracted (IRCADb mask zips hold ~20
    structures; only liver and tumours are needed). The dataset folder is never written to.
    """
    if path.is_dir():
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="livertumorseg-") as temp:
        try:
            with zipfile.ZipFile(path) as archive:
                for member in archive.infolist():
                    if not member.is_dir() and keep(PurePosixPath(member.filename).parts[:-1]):
                        archive.extract(member, temp)  # zipfile strips absolute and '..' parts
        except zipfile.BadZipFile:
            raise LiverTumorSegError(f"{path} is not a valid zip file; download it again") from None
        yield Path(temp)


def _is_wanted_mask(parts: tuple[str, ...]) -> bool:
    return any(p.lower() == "liver" or p.lower().startswith("livertumor") for p in parts)


def _series_folders(root: Path) -> list[tuple[Path, list[str]]]:
    """Folders under ``root`` holding DICOM series, with their series UIDs."""
    out = []
    for folder, dirs, _files in sorted(os.walk(root)):
        dirs.sort()
        uids = list(sitk.ImageSeriesReader.GetGDCMSeriesIDs(folder) or [])
        if uids:
            out.append((Path(folder), uids))
    return out


def _read_series(folder: Path, what: str) -> sitk.Image:
    """The largest DICOM series in ``folder`` (an IRCADb folder holds one)."""
    uids = list(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)) or [])
    if not uids:
        raise LiverTumorSegError(f"{what}: no DICOM series in {folder}")
    files = max((sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid) for uid in uids), key=len)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    try:
        return reader.Execute()
    except RuntimeError as e:
        raise LiverTumorSegError(f"{what}: cannot read the DICOM series in {folder}: {_last_line(e)}") from None


def _load_ircadb(case: LabeledCase) -> tuple[sitk.Image, sitk.Image | None]:
    """CT series + masks: 1 where ``liver``, 2 where any ``livertumor*`` mask.

    Only ``liver`` and ``livertumor*`` masks are read: cysts (``liverkyst``), vessels (``venoussystem``,
    ``portalvein``, ...) and other organs are not tumour. Vessels inside the liver are liver, as in LiTS.
    """
    with _unpacked(case.image_path, lambda parts: True) as unpacked:
        series = _series_folders(unpacked)
        if not series:
            raise LiverTumorSegError(f"case {case.case_id}: no DICOM series in {case.image_path}")
        ct = _read_series(series[0][0], f"case {case.case_id} CT")
    if case.label_path is None:
        return ct, None
    with _unpacked(case.label_path, _is_wanted_mask) as unpacked:
        masks: dict[str, Path] = {}
        for folder, dirs, _files in sorted(os.walk(unpacked)):
            if any(d.lower() == "liver" for d in dirs):
                masks = {d.lower(): Path(folder) / d for d in sorted(dirs)}
                break
        if "liver" not in masks:
            raise LiverTumorSegError(f"case {case.case_id}: {case.label_path} has no 'liver' mask series; "
                                     f"a liver mask is needed (tumours are labelled inside it)")
        tumours = sorted(name for name in masks if name.startswith("livertumor"))
        labels = np.zeros(sitk.GetArrayViewFromImage(ct).shape, dtype=np.uint8)
        for name in ["liver", *tumours]:
            mask = _read_series(masks[name], f"case {case.case_id} mask {name}")
            _check_same_grid(case.case_id, ct, mask, f"mask {name}")
            labels[sitk.GetArrayViewFromImage(mask) > 0] = 1 if name == "liver" else 2
    return ct, _image_like(labels, ct)


# ---- npz (shared ircadb01 format) -----------------------------------------------------------------


def _npz_meta(path: Path) -> tuple[set[str], str | None, tuple[float, float] | None]:
    """(keys, patient group, valid HU range) of an archive; no keys if it cannot be read."""
    try:
        with np.load(path, allow_pickle=False) as data:
            keys = set(data.files)
            group = str(data["patient_group"]) if "patient_group" in keys else None
            hu_valid = None
            if "hu_clip" in keys:
                lo, hi = (float(v) for v in np.asarray(data["hu_clip"]).ravel()[:2])
                hu_valid = (lo, hi)
            return keys, group, hu_valid
    except (OSError, ValueError, TypeError, zipfile.BadZipFile):
        return set(), None, None


def _find_npz(root: Path, listing, include_unlabelled: bool) -> list[LabeledCase]:
    """``*.npz`` archives with ``image`` and ``spacing_zyx`` (labelled when they also hold ``label``); their
    ``patient_group`` and ``hu_clip`` (the HU range the archive really holds) are kept with the case."""
    cases = []
    for folder, _, names in listing:
        for name in names:
            if not name.lower().endswith(".npz"):
                continue
            keys, group, hu_valid = _npz_meta(folder / name)
            if not _NPZ_KEYS <= keys or ("label" not in keys and not include_unlabelled):
                continue
            path = folder / name
            cases.append(LabeledCase(path.stem, "npz", LIVER_TUMOR, path, path if "label" in keys else None,
                                     group=group, hu_valid=hu_valid))
    cases.sort(key=lambda c: _natural(str(c.image_path.relative_to(root))))
    return cases


def _float32_value(value) -> float:
    """A stored float32 as the decimal it was meant to be (0.782, not 0.7820000052452087)."""
    value = np.asarray(value)
    return float(str(np.float32(value))) if value.dtype == np.float32 else float(value)  # shortest repr


def _load_npz(case: LabeledCase) -> tuple[sitk.Image, sitk.Image | None]:
    """Rebuild the CT in HU (int16) with spacing and origin from the archive (see the data's MANIFEST)."""
    with np.load(case.image_path, allow_pickle=False) as data:
        image = data["image"]
        if image.ndim != 3:
            raise LiverTumorSegError(f"case {case.case_id}: npz image has shape {image.shape}, expected (z, y, x)")
        spacing_zyx = [_float32_value(s) for s in data["spacing_zyx"]]
        scale = float(data["hu_scale"]) if "hu_scale" in data.files else 1.0
        offset = float(data["hu_offset"]) if "hu_offset" in data.files else 0.0
        crop_y, crop_x = (int(v) for v in data["crop_yx"]) if "crop_yx" in data.files else (0, 0)
        z0 = _float32_value(data["first_slice_z_mm"]) if "first_slice_z_mm" in data.files else 0.0
        hu = np.rint(image.astype(np.float64) * scale + offset)
        if hu.min(initial=0) < -32768 or hu.max(initial=0) > 32767:
            raise LiverTumorSegError(f"case {case.case_id}: npz HU out of the int16 range; check hu_scale/hu_offset")
        ct = sitk.GetImageFromArray(hu.astype(np.int16))
        if "hu_clip" in data.files:  # stored clipped: the pipeline's CT check must know (validation.HU_VALID_KEY)
            lo, hi = (float(v) for v in np.asarray(data["hu_clip"]).ravel()[:2])
            ct.SetMetaData(HU_VALID_KEY, f"{lo:g} {hi:g}")
        sz, sy, sx = spacing_zyx
        ct.SetSpacing((sx, sy, sz))
        ct.SetOrigin((crop_x * sx, crop_y * sy, z0))
        labels = None
        if case.label_path is not None:
            label = data["label"]
            if label.shape != image.shape:
                raise LiverTumorSegError(f"case {case.case_id}: npz label shape {label.shape} differs from "
                                         f"image shape {image.shape}")
            labels = _labels_uint8(case, _image_like(label, ct), len(case.label_names))
    return ct, labels


# ---- 3D Slicer exports ----------------------------------------------------------------------------


def _ct_candidates(names: list[str]) -> dict[str, str]:
    """Stem → file name of the volumes in a folder that can be a CT (not segmentations or label maps)."""
    out: dict[str, str] = {}
    for name in names:
        low = name.lower()
        stem = _strip_suffix(name)
        if stem is None or low.endswith(_SEG_SUFFIX) or stem.lower().endswith(_LABEL_LIKE_END) \
                or stem.lower().startswith("segmentation"):
            continue
        out.setdefault(stem, name)  # names are sorted: .mha < .nii < .nii.gz < .nrrd, any one will do
    return out


def _find_slicer(root: Path, listing, include_unlabelled: bool) -> list[LabeledCase]:
    """``<case>.seg.nrrd`` beside ``<case>.nrrd|.nii.gz|.nii|.mha``, or Slicer's ``Segmentation.seg.nrrd``
    beside the folder's only CT."""
    cases = []
    for folder, _, names in listing:
        segs = [n for n in names if n.lower().endswith(_SEG_SUFFIX)]
        if not segs:
            continue
        cts = _ct_candidates(names)
        used = set()
        for seg in segs:
            stem = seg[: -len(_SEG_SUFFIX)]
            if stem in cts:
                ct_stem = stem
            elif stem.lower() == "segmentation" and len(cts) == 1:
                ct_stem = next(iter(cts))
            else:
                continue
            used.add(ct_stem)
            cases.append(LabeledCase(ct_stem, "slicer", LIVER_TUMOR, folder / cts[ct_stem], folder / seg))
        if include_unlabelled:
            cases.extend(LabeledCase(s, "slicer", LIVER_TUMOR, folder / n) for s, n in cts.items() if s not in used)
    cases.sort(key=lambda c: _natural(str(c.image_path.relative_to(root))))
    return cases


def segment_role(segment: dict) -> str | None:
    """"liver", "tumor" or None for a slicerio segment dict: by name if it says, else by terminology.

    Names are what users see and edit, so they win; Slicer's automatic names ("Segment_1") say
    nothing, and then the SNOMED type code decides.
    """
    name = str(segment.get("name", "")).lower()
    if _TUMOR_WORDS.search(name):
        return "tumor"
    if "liver" in name and not _NOT_LIVER_WORDS.search(name):
        return "liver"
    term = segment.get("terminology") or {}
    code = term.get("type", ["", "", ""])
    if len(code) >= 2 and code[0] in ("SCT", "SRT"):
        if code[1] in _TUMOR_CODES:
            return "tumor"
        if code[1] in _LIVER_CODES:
            return "liver"
    return None


def _load_slicer(case: LabeledCase) -> tuple[sitk.Image, sitk.Image | None]:
    """Compose liver/tumour segments from all layers (tumour over liver) and place them on the CT grid."""
    import slicerio

    ct = read_image_file(case.image_path)
    if case.label_path is None:
        return ct, None
    try:
        seg = slicerio.read_segmentation(str(case.label_path))
    except (OSError, ValueError, KeyError) as e:
        raise LiverTumorSegError(f"case {case.case_id}: cannot read {case.label_path}: {_last_line(e)}") from None
    voxels = np.asarray(seg["voxels"])
    if voxels.ndim == 3:
        voxels = voxels[np.newaxis]
    if voxels.ndim != 4:
        raise LiverTumorSegError(f"case {case.case_id}: {case.label_path} has voxels of shape {voxels.shape}")
    roles = {"liver": np.zeros(voxels.shape[1:], dtype=bool), "tumor": np.zeros(voxels.shape[1:], dtype=bool)}
    seen = {"liver": 0, "tumor": 0}
    for segment in seg.get("segments", []):
        role = segment_role(segment)
        if role is None:
            continue
        layer = int(segment.get("layer", 0))
        if not 0 <= layer < voxels.shape[0]:
            raise LiverTumorSegError(f"case {case.case_id}: segment {segment.get('name')!r} is in layer {layer}, "
                                     f"but {case.label_path} has {voxels.shape[0]} layer(s)")
        roles[role] |= voxels[layer] == int(segment.get("labelValue", 1))
        seen[role] += 1
    if not seen["liver"]:
        names = [s.get("name", s.get("id", "?")) for s in seg.get("segments", [])]
        raise LiverTumorSegError(f"case {case.case_id}: no liver segment in {case.label_path} (segments: {names}); "
                                 f"name one 'Liver' or give it the SNOMED liver terminology")
    labels_ijk = np.where(roles["tumor"], np.uint8(2), np.where(roles["liver"], np.uint8(1), np.uint8(0)))
    matrix = np.asarray(seg["ijkToLPS"], dtype=float)
    return ct, _onto_grid(case, labels_ijk.transpose(2, 1, 0), matrix, ct)


def _onto_grid(case: LabeledCase, labels_kji: np.ndarray, ijk_to_lps: np.ndarray, ct: sitk.Image) -> sitk.Image:
    """A label array on its own grid (given by ``ijk_to_lps``) placed onto the CT grid.

    Slicer saves segmentations cropped to the segments' extent: same spacing and direction as the CT,
    origin shifted by whole voxels. Then the labels are pasted exactly. Any other grid is resampled
    (nearest neighbour) with a warning, because it can move boundaries by up to half a voxel.
    """
    axes = ijk_to_lps[:3, :3]
    spacing = np.linalg.norm(axes, axis=0)
    direction = axes / spacing
    origin = ijk_to_lps[:3, 3]
    same_axes = (np.allclose(spacing, ct.GetSpacing(), rtol=0, atol=GRID_TOLERANCE)
                 and np.allclose(direction.ravel(), ct.GetDirection(), rtol=0, atol=GRID_TOLERANCE))
    offset = np.asarray(ct.TransformPhysicalPointToContinuousIndex([float(v) for v in origin]))
    rounded = np.rint(offset).astype(int)
    ct_shape_ijk = np.asarray(ct.GetSize())
    if same_axes and np.all(np.abs(offset - rounded) < 1e-3):
        out = np.zeros(ct_shape_ijk[::-1], dtype=np.uint8)
        lo = np.maximum(rounded, 0)  # (i, j, k) in CT indices
        hi = np.minimum(rounded + np.asarray(labels_kji.shape[::-1]), ct_shape_ijk)
        if np.any(hi <= lo):
            warnings.warn(f"case {case.case_id}: the segmentation lies entirely outside the CT", stacklevel=3)
            return _image_like(out, ct)
        src = tuple(slice(a - r, b - r) for a, b, r in zip(lo[::-1], hi[::-1], rounded[::-1]))
        dst = tuple(slice(a, b) for a, b in zip(lo[::-1], hi[::-1]))
        out[dst] = labels_kji[src]
        lost = int(np.count_nonzero(labels_kji)) - int(np.count_nonzero(out[dst]))
        if lost:
            warnings.warn(f"case {case.case_id}: {lost} labelled voxels lie outside the CT and were dropped",
                          stacklevel=3)
        return _image_like(out, ct)
    warnings.warn(f"case {case.case_id}: {case.label_path} is not on the CT grid (spacing, direction or a "
                  f"fractional voxel shift differ); resampled with nearest neighbour", stacklevel=3)
    own = sitk.GetImageFromArray(np.ascontiguousarray(labels_kji))
    own.SetSpacing([float(s) for s in spacing])
    own.SetDirection([float(v) for v in direction.ravel()])
    own.SetOrigin([float(v) for v in origin])
    return sitk.Resample(own, ct, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)


# ---- phantom folders ------------------------------------------------------------------------------


def _find_phantoms(root: Path, listing, include_unlabelled: bool) -> list[LabeledCase]:
    """``<case>.nii.gz`` + ``<case>_truth.nii.gz``, as ``livertumorseg phantom`` writes them."""
    cases = []
    for folder, _, names in listing:
        nifti = {s: n for n in names if (s := _strip_suffix(n, (".nii.gz", ".nii"))) is not None}
        for stem, name in nifti.items():
            if stem.endswith("_truth") or stem.lower().endswith(_LABEL_LIKE_END):
                continue
            truth = nifti.get(stem + "_truth")
            if truth is None and not include_unlabelled:
                continue
            cases.append(LabeledCase(stem, "phantom-folder", LIVER_TUMOR, folder / name,
                                     None if truth is None else folder / truth))
    cases.sort(key=lambda c: _natural(str(c.image_path.relative_to(root))))
    return cases


# --------------------------------------------------------------------------------------------------
# Shared checks
# --------------------------------------------------------------------------------------------------


def _last_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    return (lines[-1] if lines else type(error).__name__)[:200]


def _image_like(array: np.ndarray, reference: sitk.Image) -> sitk.Image:
    image = sitk.GetImageFromArray(np.ascontiguousarray(array))
    image.CopyInformation(reference)
    return image


def _check_same_grid(case_id: str, ct: sitk.Image, other: sitk.Image, what: str) -> None:
    diff = grid_difference(ct, other)
    if diff is not None:
        raise LiverTumorSegError(f"case {case_id}: the {what} is not on the CT grid (CT vs {what}: {diff}); "
                                 f"resample it onto the CT before training")


def _labels_uint8(case: LabeledCase, labels: sitk.Image, n_labels: int) -> sitk.Image:
    """The label map as uint8 after checking that its values are whole numbers in 0..n_labels."""
    if labels.GetNumberOfComponentsPerPixel() != 1 or labels.GetDimension() != 3:
        raise LiverTumorSegError(f"case {case.case_id}: {case.label_path} is not a 3-D scalar label map")
    array = sitk.GetArrayViewFromImage(labels)
    if array.size and (array.min() < 0 or array.max() > n_labels):
        raise LiverTumorSegError(f"case {case.case_id}: label values {float(array.min()):g}..{float(array.max()):g} "
                                 f"in {case.label_path}, expected 0..{n_labels} ({', '.join(case.label_names)})")
    if not np.issubdtype(array.dtype, np.integer) and not np.array_equal(array, np.rint(array)):
        raise LiverTumorSegError(f"case {case.case_id}: {case.label_path} holds fractional label values")
    if array.dtype == np.uint8:
        return labels
    out = sitk.GetImageFromArray(array.astype(np.uint8))
    out.CopyInformation(labels)
    return out


_FINDERS = {"msd": _find_msd, "lits": _find_lits, "ircadb": _find_ircadb, "npz": _find_npz,
            "slicer": _find_slicer, "phantom-folder": _find_phantoms}
_LOADERS = {"msd": _load_nifti_pair, "lits": _load_nifti_pair, "ircadb": _load_ircadb, "npz": _load_npz,
            "slicer": _load_slicer, "phantom-folder": _load_nifti_pair}

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

import dataclasses
import json
import os
import re
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from LiverTumorSegLib.errors import LiverTumorSegError
from LiverTumorSegLib.imageio import read_image_file
from LiverTumorSegLib.validation import HU_VALID_KEY

from .datasets_common import (
    _IRCADB_INNER,
    _LABEL_LIKE_END,
    _LITS_FILE,
    _MSD_NAMES,
    _NPZ_KEYS,
    KINDS,
    LIVER_TUMOR,
    SUPPORTED_LAYOUTS,
    LabeledCase,
    _image_like,
    _labels_uint8,
    _natural,
    _strip_suffix,
)
from .datasets_ircadb import _find_ircadb, _load_ircadb
from .datasets_slicer import _find_slicer, _load_slicer, segment_role  # noqa: F401 (segment_role: public)

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


def cases_by_id(roots: Sequence[str | os.PathLike], kind: str | None = "auto"
                ) -> tuple[dict[str, LabeledCase], dict[str, str] | None]:
    """The cases of several dataset folders by id, and each case's source (its folder's name) when there is more
    than one folder, so that reports add a table per source beside the totals (None for one source)."""
    cases, sources = {}, {}
    for root in roots:
        for case in find_cases(root, kind=kind):
            cases[case.case_id], sources[case.case_id] = case, Path(root).resolve().name
    return cases, (sources if len(set(sources.values())) > 1 else None)


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


_FINDERS = {"msd": _find_msd, "lits": _find_lits, "ircadb": _find_ircadb, "npz": _find_npz,
            "slicer": _find_slicer, "phantom-folder": _find_phantoms}
_LOADERS = {"msd": _load_nifti_pair, "lits": _load_nifti_pair, "ircadb": _load_ircadb, "npz": _load_npz,
            "slicer": _load_slicer, "phantom-folder": _load_nifti_pair}

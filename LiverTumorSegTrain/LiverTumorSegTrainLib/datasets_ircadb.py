"""3D-IRCADb-01 as published: patient folders of DICOM series (folders or zips), liver and ``livertumor*`` masks."""

from __future__ import annotations

import contextlib
import os
import tempfile
import zipfile
from pathlib import Path, PurePosixPath
from typing import Iterator

import numpy as np
import SimpleITK as sitk

from LiverTumorSegLib.errors import LiverTumorSegError

from .datasets_common import (
    LIVER_TUMOR,
    LabeledCase,
    _check_same_grid,
    _image_like,
    _last_line,
)

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

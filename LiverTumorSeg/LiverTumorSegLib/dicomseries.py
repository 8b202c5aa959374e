"""Reading a DICOM series only when it is complete: every member readable, slices evenly spaced.

GDCM assembles a series from the files it can parse and silently drops the others; ITK then spreads the
remaining slices evenly over the series' extent. A missing or corrupt slice in a 40-slice, 2.5 mm series
thus gives 39 slices at 2.566 mm: every position and volume is slightly wrong and nothing says so. Here the
members are checked first, and a gap, a duplicate position or an unreadable member is refused, naming the
file (or, when the user explicitly accepts it, reported as a warning).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import InputImageError

#: a step this much larger than the series' usual step means missing slices
_GAP_FACTOR = 1.5
#: files that sit in DICOM folders without being part of any image series
_NOT_MEMBERS = {"dicomdir", "thumbs.db", ".ds_store"}


@dataclass
class SeriesImage:
    image: "object"  # SimpleITK.Image
    modality: str | None
    warnings: list[str] = field(default_factory=list)


def _is_dicom_file(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def _header(path: str):
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(path)
    reader.LoadPrivateTagsOff()
    reader.ReadImageInformation()
    return reader


def _numbers(reader, tag: str) -> list[float] | None:
    if not reader.HasMetaDataKey(tag):
        return None
    try:
        return [float(v) for v in reader.GetMetaData(tag).split("\\")]
    except ValueError:
        return None


def _problems(folder: Path, files: list[str], series_files: set[str]) -> list[str]:
    """What is wrong with a series: unreadable members in its folder, missing or doubled slice positions."""
    problems = []
    for path in sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")):
        if str(path) in series_files or path.name.lower() in _NOT_MEMBERS or not _is_dicom_file(path):
            continue
        problems.append(f"{path.name} in {folder} is a DICOM file that cannot be read as an image of any series "
                        f"(corrupt, truncated or not an image)")
    positions, normal = [], None
    for name in files:
        try:
            reader = _header(name)
        except RuntimeError:
            problems.append(f"{Path(name).name} in {folder} cannot be read")
            continue
        orientation, position = _numbers(reader, "0020|0037"), _numbers(reader, "0020|0032")
        if orientation is None or position is None or len(orientation) != 6 or len(position) != 3:
            return problems  # no geometry to check (secondary capture): the reader's own spacing stands
        if normal is None:
            normal = np.cross(orientation[:3], orientation[3:])
        positions.append((float(np.dot(position, normal)), Path(name).name))
    if len(positions) < 3:
        return problems
    positions.sort()
    steps = np.diff([p for p, _ in positions])
    step = float(np.median(steps))
    for (z0, a), (z1, b), d in zip(positions, positions[1:], steps):
        if d < 0.01 * max(step, 1e-3):
            problems.append(f"{a} and {b} lie at the same position ({z0:.2f} mm)")
        elif d > _GAP_FACTOR * step:
            missing = int(round(d / step)) - 1
            problems.append(f"{max(missing, 1)} slice(s) missing between {a} ({z0:.2f} mm) and {b} ({z1:.2f} mm); "
                            f"the series' step is {step:.3g} mm")
    return problems


def read_series(folder: Path, uid: str | None, allow_incomplete: bool = False) -> SeriesImage:
    """The series ``uid`` of ``folder`` (its first series when None); InputImageError if it is incomplete,
    unless ``allow_incomplete`` (then its problems are returned as warnings)."""
    import SimpleITK as sitk

    uids = list(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)) or [])
    uid = uid or (uids[0] if uids else None)
    if uid is None:
        raise InputImageError(f"{folder} contains no DICOM image series; give a folder of CT slices")
    files = list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid))
    every_member = {f for u in uids for f in sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), u)}
    problems = _problems(folder, files, every_member)
    if problems and not allow_incomplete:
        more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
        raise InputImageError(f"incomplete DICOM series: {problems[0]}{more}; complete the export, or pass "
                              f"--allow-incomplete-series to segment it anyway (positions may then be wrong)")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    image = reader.Execute()
    header = _header(files[0])
    modality = header.GetMetaData("0008|0060").strip() if header.HasMetaDataKey("0008|0060") else None
    return SeriesImage(image, modality, [f"incomplete DICOM series: {p}" for p in problems])

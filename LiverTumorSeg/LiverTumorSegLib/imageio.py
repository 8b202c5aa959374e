"""Finding and reading CT volumes: single files SimpleITK reads, DICOM series folders, or folders of them."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from .errors import InputImageError

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
#: files that are segmentations, not CT, even though they have image suffixes
_NOT_CT_SUFFIXES = (".seg.nrrd", ".labels.nii.gz")


@dataclass(frozen=True)
class Case:
    """One CT to segment: a file, or one DICOM series (``series_uid``) in a folder."""

    case_id: str
    path: Path
    series_uid: str | None = None


def case_id_of(path: Path) -> str:
    name = path.name
    for suffix in IMAGE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _dicom_series(folder: Path) -> list[str]:
    import SimpleITK as sitk

    return list(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)) or [])


def _is_image_file(path: Path) -> bool:
    low = path.name.lower()
    return low.endswith(IMAGE_SUFFIXES) and not low.endswith(_NOT_CT_SUFFIXES) and not path.name.startswith(".")


def discover_cases(inputs: list[str | os.PathLike]) -> list[Case]:
    """Expand the CLI's INPUT arguments into cases with unique ids (folders are searched recursively)."""
    cases: list[Case] = []
    for item in inputs:
        path = Path(item)
        if not path.exists():
            raise InputImageError(f"input not found: {path}")
        if path.is_file():
            cases.append(Case(case_id_of(path), path))
            continue
        for folder, _dirs, files in sorted(os.walk(path)):
            folder_path = Path(folder)
            series = _dicom_series(folder_path)
            for n, uid in enumerate(series):
                suffix = f"_series{n + 1}" if len(series) > 1 else ""
                cases.append(Case(folder_path.name + suffix, folder_path, uid))
            cases.extend(Case(case_id_of(folder_path / f), folder_path / f)
                         for f in sorted(files) if _is_image_file(folder_path / f))
    seen: dict[str, int] = {}
    unique = []
    for case in cases:
        n = seen.get(case.case_id, 0)
        seen[case.case_id] = n + 1
        unique.append(case if n == 0 else Case(f"{case.case_id}_{n + 1}", case.path, case.series_uid))
    return unique


@dataclass
class CaseImage:
    """A case as read: the image, its DICOM modality (None for other files) and what the reader had to warn about."""

    image: "object"  # SimpleITK.Image
    modality: str | None = None
    warnings: list[str] = field(default_factory=list)


def _reader_message(error: Exception) -> str:
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    detail = next((line for line in reversed(lines) if not line.startswith(("sitk::", "itk::"))), lines[-1] if lines
                  else type(error).__name__)
    return detail.removeprefix("Reason: ")[:160]


def read_image_file(path: str | os.PathLike):
    """One image file as a ``SimpleITK.Image``, after checking its data against its header (``filecheck``);
    the image library's own messages are kept off the terminal and every failure is one InputImageError."""
    import SimpleITK as sitk

    from .filecheck import check_image_file
    from .native import quiet_native_output

    path = Path(path)
    if not path.exists():
        raise InputImageError(f"input not found: {path}")
    if path.is_dir():
        raise InputImageError(f"{path} is a folder; give an image file")
    try:
        if path.stat().st_size == 0:
            raise InputImageError(f"{path.name} is empty (0 bytes); export or copy the file again")
    except OSError as e:
        raise InputImageError(f"cannot read {path}: {e.strerror}; check the path and its permissions") from None
    check_image_file(path)
    with quiet_native_output():
        try:
            return sitk.ReadImage(str(path))
        except RuntimeError as e:
            known = path.name.lower().endswith(IMAGE_SUFFIXES)
            fix = ("the file is damaged or not what its name says; export or copy it again" if known else
                   "give a NIfTI, NRRD or MHA file or a DICOM series folder")
            raise InputImageError(f"cannot read {path.name}: {_reader_message(e)}; {fix}") from None


def read_case(case: Case, allow_incomplete_series: bool = False) -> CaseImage:
    """Read a case: a checked image file, or a complete DICOM series (see ``dicomseries``)."""
    from .dicomseries import read_series
    from .native import quiet_native_output

    if case.series_uid is None and case.path.is_file():
        return CaseImage(read_image_file(case.path))
    with quiet_native_output():
        try:
            series = read_series(case.path, case.series_uid, allow_incomplete_series)
        except RuntimeError as e:
            raise InputImageError(f"cannot read the DICOM series in {case.path}: {_reader_message(e)}; "
                                  f"export the series again") from None
    return CaseImage(series.image, series.modality, series.warnings)


def read_image(path: str | os.PathLike):
    """Read one CT volume (file or DICOM folder) as a ``SimpleITK.Image``."""
    cases = discover_cases([path]) if Path(path).is_dir() else [Case(case_id_of(Path(path)), Path(path))]
    if not cases:
        raise InputImageError(f"no CT image found in {path}")
    return read_case(cases[0]).image

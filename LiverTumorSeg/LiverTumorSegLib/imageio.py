"""Finding and reading CT volumes: single files SimpleITK reads, DICOM series folders, or folders of them."""

from __future__ import annotations

import os
from dataclasses import dataclass
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


def read_case(case: Case):
    """Read a case as a ``SimpleITK.Image`` plus the DICOM modality when known (None for other files)."""
    import SimpleITK as sitk

    try:
        if case.series_uid is None and case.path.is_file():
            return sitk.ReadImage(str(case.path)), None
        reader = sitk.ImageSeriesReader()
        uid = case.series_uid or (_dicom_series(case.path) or [None])[0]
        if uid is None:
            raise InputImageError(f"{case.path} contains no DICOM series")
        files = reader.GetGDCMSeriesFileNames(str(case.path), uid)
        reader.SetFileNames(files)
        image = reader.Execute()
        header = sitk.ImageFileReader()
        header.SetFileName(files[0])
        header.ReadImageInformation()
        modality = header.GetMetaData("0008|0060").strip() if header.HasMetaDataKey("0008|0060") else None
        return image, modality
    except RuntimeError as e:
        raise InputImageError(f"cannot read {case.path}: {str(e).strip().splitlines()[-1][:160]}; "
                              f"give a NIfTI/NRRD/MHA file or a DICOM series folder") from None


def read_image(path: str | os.PathLike):
    """Read one CT volume (file or DICOM folder) as a ``SimpleITK.Image``."""
    cases = discover_cases([path]) if Path(path).is_dir() else [Case(case_id_of(Path(path)), Path(path))]
    if not cases:
        raise InputImageError(f"no CT image found in {path}")
    return read_case(cases[0])[0]

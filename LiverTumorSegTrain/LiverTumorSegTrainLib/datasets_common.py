"""What every dataset reader shares: the case record, the label conventions, and the checks that a label map
lies on its CT's grid and holds the documented values."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from LiverTumorSegLib.errors import InputImageError, LiverTumorSegError
from LiverTumorSegLib.geometry import grid_difference

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
            from .datasets import _LOADERS  # the readers, registered by kind

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

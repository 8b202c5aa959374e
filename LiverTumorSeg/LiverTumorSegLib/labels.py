"""Output labels of a model: names, label values, colours, roles and SNOMED terminology.

A label's terminology is kept as Slicer's own 7-part ``TerminologyEntry`` string, because that is
the one form both Slicer (``vtkSegment`` tags) and ``.seg.nrrd`` files (via slicerio) understand;
keeping one form avoids a lossy translation at either boundary.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

#: Post-processing role of a label. ``organ``: keep the largest 3-D component and fill its holes.
#: ``lesion``: keep only inside the (dilated) organ and drop components below a volume.
#: ``structure``: no post-processing (e.g. vessels).
ROLES = ("organ", "lesion", "structure")

_CATEGORY_TYPE_CONTEXT = "Segmentation category and type - DICOM master list"
_ANATOMIC_CONTEXT = "Anatomic codes - DICOM master list"


def terminology_string(category: tuple[str, str, str], type_: tuple[str, str, str],
                       region: tuple[str, str, str] = ("", "", "")) -> str:
    """Slicer's TerminologyEntry string for a (scheme, code, meaning) category/type/region."""
    return "~".join([
        _CATEGORY_TYPE_CONTEXT, "^".join(category), "^".join(type_), "^^",
        _ANATOMIC_CONTEXT, "^".join(region), "^^",
    ])


ANATOMICAL_STRUCTURE = ("SCT", "123037004", "Anatomical Structure")
ALTERED_STRUCTURE = ("SCT", "49755003", "Morphologically Altered Structure")
LIVER_CODE = ("SCT", "10200004", "Liver")


@dataclass(frozen=True)
class LabelSpec:
    """One output label: the model channel that produces it and how it is shown and post-processed."""

    name: str
    value: int
    color: tuple[int, int, int]
    terminology: str
    role: str = "structure"
    description: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"label role must be one of {ROLES}, not {self.role!r}")
        if not 1 <= int(self.value) <= 255:
            raise ValueError(f"label value must be 1..255, not {self.value}")

    @property
    def color_float(self) -> tuple[float, float, float]:
        return tuple(c / 255.0 for c in self.color)  # type: ignore[return-value]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["color"] = list(self.color)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "LabelSpec":
        return cls(name=str(d["name"]), value=int(d["value"]), color=tuple(int(c) for c in d["color"]),
                   terminology=str(d["terminology"]), role=str(d.get("role", "structure")),
                   description=str(d.get("description", "")))


LIVER = LabelSpec(
    "Liver", 1, (221, 130, 101), terminology_string(ANATOMICAL_STRUCTURE, LIVER_CODE), "organ",
    "liver parenchyma including vessels and tumours inside it")
TUMOR = LabelSpec(
    "Tumor", 2, (255, 200, 50),
    terminology_string(ALTERED_STRUCTURE, ("SCT", "108369006", "Neoplasm"), LIVER_CODE), "lesion",
    "liver tumour (primary or metastatic)")
VESSEL = LabelSpec(
    "Vessel", 1, (216, 101, 79),
    terminology_string(ANATOMICAL_STRUCTURE, ("SCT", "59820001", "Blood vessel"), LIVER_CODE), "structure",
    "hepatic vessels")

#: Label sets known by name, as accepted by ``import-weights --labels``.
LABEL_SETS: dict[str, tuple[LabelSpec, ...]] = {
    "liver,tumor": (LIVER, TUMOR),
    "liver": (LIVER,),
    "vessel,tumor": (VESSEL, TUMOR),
}

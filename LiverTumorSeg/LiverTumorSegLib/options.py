"""Every segmentation option, declared once: the pipeline, the CLI, the module's child-process command line,
the module's GUI parameters and the Segment Editor effect all derive from ``SegmentOptions``.

An option threaded by hand through seven signatures drifts (the organ margin existed only in the pipeline,
precision only in the CLI). Here each field carries its command-line flag, its help text and the names of the
module's parameters that set it; tests compare every front end against this one list.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Sequence

DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")

#: half-open index ranges per ITK axis: ((i0, i1), (j0, j1), (k0, k1))
IndexBox = tuple[tuple[int, int], tuple[int, int], tuple[int, int]]


def parse_numbers(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError("thresholds are comma-separated numbers, e.g. 0.5,0.4") from None


def _names(text: str) -> tuple[str, ...]:
    return tuple(v for v in text.split(",") if v)


def _option(flag: str, help: str, gui: Sequence[str] = (), **argparse_kwargs: Any):
    return {"flag": flag, "help": help, "gui": tuple(gui), "argparse": argparse_kwargs}


@dataclass
class SegmentOptions:
    """How to run a segmentation; ``None`` means "what the model file says"."""

    device: str = field(default="auto", metadata=_option(
        "--device", "compute device (auto: CUDA if available, else CPU; MPS only when asked)", ("device",),
        choices=DEVICES))
    precision: str = field(default="auto", metadata=_option(
        "--precision", "auto: mixed precision on GPUs and on CPUs with native bf16, else fp32", ("precision",),
        choices=PRECISIONS))
    batch_size: int | None = field(default=None, metadata=_option(
        "--batch-size", "slices per batch (default: by device and image size)", ("batchSize",), type=int,
        metavar="N"))
    thresholds: tuple[float, ...] | None = field(default=None, metadata=_option(
        "--thresholds", "probability threshold per label (default: the model's)", ("liverThreshold",
                                                                                  "tumorThreshold"),
        type=parse_numbers, metavar="T1,T2"))
    min_lesion_mm3: float | None = field(default=None, metadata=_option(
        "--min-lesion-mm3", "remove lesions smaller than this (default: the model's)", ("minLesionMm3",),
        type=float, metavar="MM3"))
    min_lesion_confidence: float | None = field(default=None, metadata=_option(
        "--min-lesion-confidence", "remove lesions whose mean probability is below P, 0..1 (default: the model's; "
        "each lesion's confidence is in the report)", ("minLesionConfidence",), type=float, metavar="P"))
    organ_margin_mm: float | None = field(default=None, metadata=_option(
        "--organ-margin-mm", "keep lesions only inside the organ grown by this margin (default: the model's)",
        ("organMarginMm",), type=float, metavar="MM"))
    keep_labels: tuple[str, ...] | None = field(default=None, metadata=_option(
        "--keep", "output only these labels, e.g. Liver (tumour then counts as liver)", ("outputs",),
        type=_names, metavar="LABEL,..."))
    region: IndexBox | None = field(default=None, metadata=_option(
        "--region", "segment only this index box (half-open voxel ranges; an ROI or a slice range)",
        ("roi", "firstSlice", "lastSlice"), type=int, nargs=6, metavar=("I0", "I1", "J0", "J1", "K0", "K1")))
    use_localizer: bool = field(default=True, metadata=_option(
        "--no-localizer", "run the fine model on every whole slice even if the model has a localiser stage",
        ("useLocalizer",), action="store_false"))
    allow_non_ct: bool = field(default=False, metadata=_option(
        "--allow-non-ct", "skip the check that the input is CT in Hounsfield units", ("allowNonCt",),
        action="store_true"))

    def __post_init__(self) -> None:
        if self.thresholds is not None:
            self.thresholds = tuple(float(t) for t in self.thresholds)
        if self.keep_labels is not None:
            self.keep_labels = tuple(str(k) for k in self.keep_labels)
        if self.region is not None:
            flat = [int(v) for pair in self.region for v in (pair if isinstance(pair, (tuple, list)) else [pair])]
            if len(flat) == 6:
                self.region = ((flat[0], flat[1]), (flat[2], flat[3]), (flat[4], flat[5]))

    # -- front ends --------------------------------------------------------------------------------

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """Every option as a command-line flag (``dest`` = the field name)."""
        for f in dataclasses.fields(cls):
            meta = f.metadata
            kwargs = dict(meta["argparse"])
            if kwargs.get("action") not in ("store_true", "store_false"):
                kwargs.setdefault("default", f.default)
            parser.add_argument(meta["flag"], dest=f.name, help=meta["help"], **kwargs)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "SegmentOptions":
        return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})

    def to_argv(self) -> list[str]:
        """The command-line flags that give these options (what the module's child process is run with)."""
        argv: list[str] = []
        for f in dataclasses.fields(self):
            value, meta = getattr(self, f.name), f.metadata
            if value == f.default:
                continue
            if meta["argparse"].get("action") in ("store_true", "store_false"):
                argv.append(meta["flag"])
            elif f.name == "thresholds":
                argv += [meta["flag"], ",".join(repr(float(t)) for t in value)]
            elif f.name == "keep_labels":
                argv += [meta["flag"], ",".join(value)]
            elif f.name == "region":
                argv += [meta["flag"], *(str(v) for pair in value for v in pair)]
            else:
                argv += [meta["flag"], repr(value) if isinstance(value, float) else str(value)]
        return argv

    def pipeline_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``pipeline.run_segmentation``."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @staticmethod
    def gui_parameters() -> dict[str, tuple[str, ...]]:
        """Option name -> the module parameters that set it (checked against the parameter node by tests)."""
        return {f.name: f.metadata["gui"] for f in dataclasses.fields(SegmentOptions)}

"""The one model-file format: a single ``.pt`` holding weights plus everything needed to use them.

A model file is a plain dict of strings, numbers, lists and tensors written by ``torch.save`` and read
only with ``torch.load(weights_only=True)``, so opening a file from the internet can never run code.
Everything the pipeline needs (architecture, labels and terminology, intensity window, spacing,
context slices, thresholds, post-processing) travels inside the file: a model trained once is used
identically by the CLI, the Slicer module, the effect and training validation.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import pickle
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ModelFileError
from .labels import LabelSpec

if TYPE_CHECKING:  # torch is imported lazily: Slicer imports this package at startup
    import torch

FORMAT = "LiverTumorSeg model"
#: 2: context_step_mm and window_before_resampling (a version-1 reader would ignore them and run the model wrong);
#: 3: cascades (earlier stages a version-2 reader would skip). Files are written with the lowest version they need.
FORMAT_VERSION = 3
ACTIVATIONS = ("sigmoid", "softmax")
#: window_to_unit: HU clipped to ``window_hu`` and mapped linearly to [-1, 1] (the authors' /200 for [-200, 200])
NORMALIZATIONS = ("window_to_unit",)
INFERERS = ("slices", "sliding_window")


@dataclass
class ModelConfig:
    """How to build, feed and interpret a network. Stored verbatim in the model file."""

    architecture: str
    architecture_kwargs: dict[str, Any]
    labels: tuple[LabelSpec, ...]
    #: sigmoid: channel i is label i (multi-label, later labels win where they overlap);
    #: softmax: channel 0 is background and channel i+1 is label i.
    output_activation: str = "sigmoid"
    #: HU window the intensities are clipped to
    window_hu: tuple[float, float] = (-200.0, 200.0)
    #: how clipped HU become network input (see NORMALIZATIONS)
    normalization: str = "window_to_unit"
    #: in-plane (row, column) spacing in mm the network expects; None: use the image's own spacing
    spacing_yx_mm: tuple[float, float] | None = None
    #: k: the network sees 2k+1 input channels, slice z and k neighbours on each side
    context_slices: int = 0
    #: distance in mm between neighbouring context channels (interpolated between slices); None: whole slices
    #: (files written before millimetre context keep that meaning)
    context_step_mm: float | None = None
    #: clip HU to the window before in-plane resampling, so that resampling never mixes values a training
    #: source could not hold (LiTS-derived data stores only [-45, 160] HU): a saturated edge then looks the
    #: same in every source. False in files written before this option.
    window_before_resampling: bool = False
    #: probability threshold per label (sigmoid models)
    thresholds: tuple[float, ...] = ()
    #: lesion components smaller than this are removed
    min_lesion_mm3: float = 10.0
    #: lesion components whose mean probability is below this are removed (0: keep all)
    min_lesion_confidence: float = 0.0
    #: lesions are kept only inside the organ dilated by this margin
    organ_margin_mm: float = 3.0
    #: spatial sizes given to the network are padded to a multiple of this (the network's own, see
    #: ``models.input_contract``; checked on load)
    size_multiple: int = 16
    #: 2: the network sees slices (with context channels); 3: it sees volume patches
    spatial_dims: int = 2
    #: how the pipeline runs the network: "slices" (batched 2.5-D slice stacks) or "sliding_window" (3-D patches
    #: with overlap and Gaussian weighting)
    inferer: str = "slices"
    #: sliding window: the patch size (z, y, x) in model voxels, and the overlap between neighbouring patches
    patch_size: tuple[int, ...] | None = None
    overlap: float = 0.5
    #: slice spacing (mm) of the model grid for 3-D models; None keeps the scan's slice spacing
    spacing_z_mm: float | None = None
    #: coarse-to-fine: the region found by the model's localiser stage is grown by this margin (mm)
    localizer_margin_mm: float = 15.0
    #: coarse-to-fine also crops in-plane (not only the slice range). Off for REC-UNet: its triplet
    #: attention pools along whole rows and columns, so a crop changes its output everywhere (measured:
    #: tumour Dice 0.92 between cropped and whole-slice runs of the same weights, liver 0.998)
    localizer_crop_inplane: bool = False
    name: str = "unnamed model"
    description: str = ""
    provenance: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.labels = tuple(self.labels)
        if not self.labels:
            raise ValueError("a model needs at least one label")
        if self.output_activation not in ACTIVATIONS:
            raise ValueError(f"output_activation must be one of {ACTIVATIONS}")
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(f"normalization must be one of {NORMALIZATIONS}, not {self.normalization!r}")
        if len({lab.value for lab in self.labels}) != len(self.labels):
            raise ValueError("label values must be distinct")
        if not self.thresholds:
            self.thresholds = (0.5,) * len(self.labels)
        self.thresholds = tuple(float(t) for t in self.thresholds)
        if len(self.thresholds) != len(self.labels):
            raise ValueError("one threshold per label is needed")
        lo, hi = (float(v) for v in self.window_hu)
        if not hi > lo:
            raise ValueError("window_hu must be (low, high) with high > low")
        self.window_hu = (lo, hi)
        if self.spacing_yx_mm is not None:
            self.spacing_yx_mm = tuple(float(s) for s in self.spacing_yx_mm)
            if len(self.spacing_yx_mm) != 2 or min(self.spacing_yx_mm) <= 0:
                raise ValueError("spacing_yx_mm must be two positive numbers or None")
        if self.context_slices < 0:
            raise ValueError("context_slices must be >= 0")
        if self.context_step_mm is not None:
            self.context_step_mm = float(self.context_step_mm)
            if not self.context_step_mm > 0:
                raise ValueError("context_step_mm must be a positive number of mm or None")
        self.window_before_resampling = bool(self.window_before_resampling)
        if self.inferer not in INFERERS:
            raise ValueError(f"inferer must be one of {INFERERS}, not {self.inferer!r}")
        if self.spatial_dims not in (2, 3) or (self.inferer == "slices") != (self.spatial_dims == 2):
            raise ValueError("2-D networks run with the 'slices' inferer, 3-D networks with 'sliding_window'")
        if self.inferer == "sliding_window":
            if self.patch_size is None or len(self.patch_size) != 3 or \
                    any(int(p) < 1 or int(p) % int(self.size_multiple) for p in self.patch_size):
                raise ValueError("a sliding-window model needs a patch_size (z, y, x) of multiples of its "
                                 "size_multiple")
            self.patch_size = tuple(int(p) for p in self.patch_size)
            if not 0.0 <= float(self.overlap) < 1.0:
                raise ValueError("overlap must be in [0, 1)")
            if self.context_slices:
                raise ValueError("3-D models take no context slices")
        if self.spacing_z_mm is not None and not float(self.spacing_z_mm) > 0:
            raise ValueError("spacing_z_mm must be positive or None")
        self.min_lesion_confidence = float(self.min_lesion_confidence)
        if not 0.0 <= self.min_lesion_confidence < 1.0:
            raise ValueError("min_lesion_confidence must be in [0, 1)")

    @property
    def in_channels(self) -> int:
        return 2 * self.context_slices + 1

    @property
    def out_channels(self) -> int:
        return len(self.labels) + (1 if self.output_activation == "softmax" else 0)

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["labels"] = [lab.to_dict() for lab in self.labels]
        d["window_hu"] = list(self.window_hu)
        d["spacing_yx_mm"] = None if self.spacing_yx_mm is None else list(self.spacing_yx_mm)
        d["thresholds"] = list(self.thresholds)
        d["patch_size"] = None if self.patch_size is None else list(self.patch_size)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in d.items() if k in known}
        kwargs["labels"] = tuple(LabelSpec.from_dict(x) for x in d["labels"])
        spacing = d.get("spacing_yx_mm")
        kwargs["spacing_yx_mm"] = None if spacing is None else tuple(spacing)
        return cls(**kwargs)


REGION_RULES = ("box", "mask")


@dataclass
class StageLink:
    """How a cascade stage depends on the stage before it.

    ``region``: "box": the stage runs on the previous stage's organ bounding box grown by ``margin_mm``;
    "mask": the same, and its labels are kept only inside the previous organ grown by ``margin_mm`` (a tumour
    stage inside the liver). ``mask_input``: voxels outside that grown organ reach the network as the bottom of
    its window (the ResUNet cascade's liver-masked tumour input).
    """

    region: str = "box"
    margin_mm: float = 10.0
    mask_input: bool = False

    def __post_init__(self) -> None:
        if self.region not in REGION_RULES:
            raise ValueError(f"region must be one of {REGION_RULES}, not {self.region!r}")
        self.margin_mm = float(self.margin_mm)
        if not self.margin_mm >= 0:
            raise ValueError("margin_mm must be >= 0")

    @classmethod
    def parse(cls, text: str) -> "StageLink":
        """``REGION[:MARGIN_MM[:mask-input]]``, e.g. ``mask:10:mask-input`` (as ``livertumorseg cascade --link``)."""
        parts = text.split(":")
        if len(parts) > 3 or (len(parts) == 3 and parts[2] != "mask-input"):
            raise ValueError(f"{text!r} has more than REGION:MM:mask-input")
        return cls(parts[0], float(parts[1]) if len(parts) > 1 else 10.0, len(parts) == 3)


class SegmentationModel:
    """A network in eval mode together with the config that says how to use it; in a cascade, also the stages
    that run before it (``stages_before``, each with its ``link`` to the one before) and its own ``link``."""

    def __init__(self, network: "torch.nn.Module", config: ModelConfig, source: str | None = None,
                 localizer: "SegmentationModel | None" = None,
                 stages_before: "list[SegmentationModel] | None" = None, link: StageLink | None = None) -> None:
        self.network = network.eval()
        self.config = config
        self.source = source
        #: optional coarse stage: a small, low-resolution model whose organ label bounds where this one runs
        self.localizer = localizer
        #: earlier stages of a cascade, in order; their labels are part of the output
        self.stages_before = list(stages_before or [])
        #: how this stage depends on the previous one (None: it runs on the whole volume)
        self.link = link

    @property
    def output_labels(self) -> tuple:
        """The labels a segmentation with this model can contain: every stage's, in stage order, each value once
        (a later stage may refine an earlier stage's label)."""
        seen: dict[int, LabelSpec] = {}
        for stage in [*self.stages_before, self]:
            for lab in stage.config.labels:
                seen.setdefault(lab.value, lab)
        return tuple(seen.values())

    def __repr__(self) -> str:
        stage = f", localizer={self.localizer.config.name!r}" if self.localizer is not None else ""
        before = f", after {[s.config.name for s in self.stages_before]}" if self.stages_before else ""
        return (f"SegmentationModel({self.config.name!r}, {self.config.architecture}, "
                f"labels={[lab.name for lab in self.config.labels]}{stage}{before})")


def cascade(stages: "list[SegmentationModel]", links: "list[StageLink]") -> SegmentationModel:
    """A cascade of single-network models: stage i+1 runs where stage i found its organ (``links[i]``). The
    first stage runs on the whole volume (with its localiser, if it has one). A label may repeat (a later stage
    refines it inside its region: RA-UNet's 3-D liver after the 2-D one) but one value must keep one name."""
    if len(stages) < 2 or len(links) != len(stages) - 1:
        raise ValueError("a cascade needs at least two stages and one link between each pair")
    names: dict[int, str] = {}
    for stage in stages:
        for lab in stage.config.labels:
            if names.setdefault(lab.value, lab.name) != lab.name:
                raise ValueError(f"label value {lab.value} is {names[lab.value]!r} in one stage and {lab.name!r} in "
                                 "another; give each stage the same labels for the same values")
    for stage in stages[:-1]:
        if not any(lab.role == "organ" for lab in stage.config.labels):
            raise ValueError(f"stage {stage.config.name!r} has no organ label, so no region for the next stage")
    *before, last = [SegmentationModel(s.network, s.config, s.source, s.localizer) for s in stages]
    for stage, link in zip(before[1:], links):
        stage.link = link
    return SegmentationModel(last.network, last.config, last.source, last.localizer, before, links[-1])


def new_model(config: ModelConfig) -> SegmentationModel:
    """A freshly initialised model for a config (what training starts from)."""
    from .models import build_model

    return SegmentationModel(build_model(config.architecture, **config.architecture_kwargs), config)


def save_model(model: SegmentationModel, path: str | os.PathLike, overwrite: bool = False,
               half_precision: bool = False) -> Path:
    """Write a model file atomically; never replaces an existing file unless ``overwrite``."""
    from .atomicfile import torch_save_atomic

    version = 3 if model.stages_before else 2
    payload = {"format": FORMAT, "format_version": version, **_stage_payload(model, half_precision)}
    if model.stages_before:
        payload["stages"] = [_stage_payload(stage, half_precision) for stage in model.stages_before]
    path = Path(path)
    torch_save_atomic(payload, path, overwrite=overwrite)
    return path


def _stage_payload(model: SegmentationModel, half_precision: bool) -> dict[str, Any]:
    state = {k: v.detach().cpu().clone() for k, v in model.network.state_dict().items()}
    if half_precision:  # halves the file; weights are cast back to float32 on load
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    payload: dict[str, Any] = {"config": model.config.to_dict(), "state_dict": state}
    if model.localizer is not None:
        if model.localizer.localizer is not None:
            raise ValueError("a localiser cannot have a localiser of its own")
        if not any(lab.role == "organ" for lab in model.localizer.config.labels):
            raise ValueError("a localiser needs an organ label (it bounds where the main model runs)")
        payload["localizer"] = _stage_payload(model.localizer, half_precision)
    if model.link is not None:
        payload["link"] = dataclasses.asdict(model.link)
    return payload


def attach_localizer(model: SegmentationModel, localizer: SegmentationModel | None) -> SegmentationModel:
    """The same model with ``localizer`` as its coarse stage (None: without one)."""
    return SegmentationModel(model.network, model.config, model.source, localizer, model.stages_before, model.link)


def _file_kind(path: Path) -> str | None:
    """What a file that is certainly not a PyTorch checkpoint is (None: it may be one).

    torch.save writes a zip archive (since torch 1.6) or a pickle stream (protocol byte 0x80); anything else
    is named from its first bytes, so that a JSON file is not called "pickled objects that could run code".
    """
    try:
        with open(path, "rb") as f:
            head = f.read(512)
    except OSError as e:
        return f"it cannot be read: {e.strerror}"
    if not head:
        return "it is empty (0 bytes)"
    if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":
        return None
    known = [(b"\x1f\x8b", "gzip data, e.g. a .nii.gz image"), (b"NRRD", "an NRRD image"),
             (b"\x89PNG", "a PNG picture"), (b"%PDF", "a PDF document"), (b"<", "XML or HTML text"),
             (b"ObjectType", "a MetaImage header")]
    for magic, what in known:
        if head.startswith(magic):
            return f"it is {what}"
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "it is a DICOM file"
    if head.lstrip()[:1] in (b"{", b"["):
        return "it is JSON text"
    if len(head) >= 348 and head[344:348] in (b"n+1\x00", b"ni1\x00"):
        return "it is a NIfTI image"
    if all(32 <= b < 127 or b in (9, 10, 13) for b in head):
        return "it is a text file"
    return None


def _safe_torch_load(path: Path) -> Any:
    """``torch.load(weights_only=True)`` with every failure turned into a one-line ModelFileError."""
    import torch

    if not path.exists():
        raise ModelFileError(f"model file not found: {path}; give the path of an existing .pt model file")
    if path.is_dir():
        raise ModelFileError(f"{path} is a folder, not a model file; give the path of a .pt model file")
    kind = _file_kind(path)
    if kind is not None:
        raise ModelFileError(f"{path} is not a PyTorch file ({kind}); give a .pt model file")
    try:
        with warnings.catch_warnings():  # odd pickle protocols warn before being refused
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise ModelFileError(
            f"refused to load {path}: it contains pickled Python objects, which could run code "
            f"(weights_only check: {str(e).splitlines()[0][:120]}); only plain weight files are accepted, "
            f"re-save a trusted checkpoint's state_dict") from None
    except Exception as e:  # noqa: BLE001 - the unpickler fails on garbage with arbitrary error types
        raise ModelFileError(
            f"{path} is corrupt, truncated or not a PyTorch file ({type(e).__name__}: "
            f"{str(e).splitlines()[0][:120] if str(e) else 'no detail'}); download or copy it again") from None


def load_model(path: str | os.PathLike, device: str = "cpu") -> SegmentationModel:
    """Read a LiverTumorSeg model file (with its localiser stage, if any); ModelFileError says why and the fix."""
    path = Path(path)
    payload = _safe_torch_load(path)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        hint = ""
        if isinstance(payload, dict) and any(str(k).startswith(("module.", "Conv1.")) for k in payload):
            hint = (f"; it looks like an authors' REC-UNet checkpoint: convert it once with "
                    f"'livertumorseg import-weights {path} --arch rec_unet|rec_unet_em "
                    f"--labels liver,tumor -o model.pt'")
        raise ModelFileError(f"{path} is a PyTorch file but not a LiverTumorSeg model file{hint}")
    version = payload.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ModelFileError(f"{path} has model-file format version {version!r}, newer than this LiverTumorSeg "
                             f"understands ({FORMAT_VERSION}); update LiverTumorSeg")
    model = _full_stage(payload, path, device, "")
    stages = payload.get("stages") or []
    if not isinstance(stages, list) or not all(isinstance(s, dict) for s in stages):
        raise ModelFileError(f"{path} has an invalid list of cascade stages; the file is damaged: re-export it")
    model.stages_before = [_full_stage(stage, path, device, f"stage {i + 1} of ") for i, stage in enumerate(stages)]
    return model


def _full_stage(payload: dict[str, Any], path: Path, device: str, what: str) -> SegmentationModel:
    """One stage with its localiser and its link to the stage before."""
    model = _stage_from_payload(payload, path, device, what)
    if isinstance(payload.get("localizer"), dict):
        model.localizer = _stage_from_payload(payload["localizer"], path, device, f"localiser of {what}")
    if payload.get("link") is not None:
        try:
            model.link = StageLink(**payload["link"])
        except (TypeError, ValueError) as e:
            raise ModelFileError(f"{what}{path} has an invalid stage link ({e}); re-export the file") from None
    return model


def _stage_from_payload(payload: dict[str, Any], path: Path, device: str, what: str = "") -> SegmentationModel:
    from .models import build_model

    where = f"{what}{path}"
    try:
        config = ModelConfig.from_dict(payload["config"])
    except (KeyError, TypeError, ValueError) as e:
        raise ModelFileError(f"{where} has an invalid model description ({e}); the file is damaged or was "
                             f"edited by hand: re-export it") from None
    try:
        network = build_model(config.architecture, **config.architecture_kwargs)
    except (KeyError, TypeError, ValueError) as e:
        raise ModelFileError(f"{where} needs architecture {config.architecture!r} with "
                             f"{config.architecture_kwargs}, which this LiverTumorSeg cannot build ({e}); "
                             f"update LiverTumorSeg") from None
    state = payload.get("state_dict")
    if not isinstance(state, dict):
        raise ModelFileError(f"{where} holds no weights (state_dict missing); re-export the model")
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[0]
        raise ModelFileError(f"{where}: weights do not fit architecture {config.architecture} "
                             f"{config.architecture_kwargs} ({first[:160]}); the file is damaged") from None
    _check_weights_and_outputs(network, config, where)
    network.float().to(device)
    return SegmentationModel(network, config, source=str(path))


def _check_weights_and_outputs(network: "torch.nn.Module", config: ModelConfig, where: str) -> None:
    """Refuse weights that cannot give a meaningful result: NaN or infinite values (a diverged run gives an
    empty segmentation without a word), and a network whose outputs do not match the file's label list (a
    ninth label would silently never be painted)."""
    import torch

    for name, tensor in network.state_dict().items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise ModelFileError(f"{where} holds NaN or infinite weights ({name}); the training run diverged or "
                                 f"the file is damaged: use another model file")
    from .models import input_contract

    contract = input_contract(network)
    if int(config.size_multiple) % contract["size_multiple"] or contract["spatial_dims"] != config.spatial_dims:
        raise ModelFileError(f"{where}: its network needs {contract['spatial_dims']}-D input in multiples of "
                             f"{contract['size_multiple']}, but the file says {config.spatial_dims}-D in multiples "
                             f"of {config.size_multiple}; the file is inconsistent: re-export it")
    m = int(config.size_multiple)
    probe = torch.zeros(1, config.in_channels, *([2 * m if config.spatial_dims == 2 else m] * config.spatial_dims))
    try:
        with torch.inference_mode():
            out = network.eval()(probe)
    except RuntimeError as e:
        raise ModelFileError(f"{where}: its network does not take {config.in_channels} input channels "
                             f"({config.context_slices} context slices each side) ({str(e).splitlines()[0][:100]}); "
                             f"the file is inconsistent: re-export it") from None
    if out.ndim != 2 + config.spatial_dims or out.shape[1] != config.out_channels:
        raise ModelFileError(f"{where}: its network outputs {out.shape[1] if out.ndim > 1 else '?'} channels but it "
                             f"lists {len(config.labels)} labels ({', '.join(lab.name for lab in config.labels)}"
                             f"{' + background' if config.output_activation == 'softmax' else ''}); the file is "
                             f"inconsistent: re-export it with matching labels")


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()

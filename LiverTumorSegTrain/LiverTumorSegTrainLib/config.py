"""Training settings and the published recipes as presets.

A run is fully described by a ``TrainConfig``; it is stored in every checkpoint and in the model file's
provenance, so a model can always be traced back to (and retrained from) the settings that made it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from LiverTumorSegLib.labels import LIVER, TUMOR, VESSEL, LabelSpec, terminology_string

OPTIMIZERS = ("adam", "ranger")
SCHEDULES = ("constant", "cosine", "step")
LOSSES = ("bce_dice", "dice", "focal_dice", "ce_dice")
ACTIVATIONS = ("sigmoid", "softmax")


@dataclass
class TrainConfig:
    """Everything that decides what a training run does (paths included, so a run can be resumed)."""

    data: list[str]
    output: str
    pseudo: list[str] = field(default_factory=list)
    #: loss weight of pseudo-labelled samples relative to labelled ones (CARes-UNet's semi-supervision)
    pseudo_weight: float = 0.5
    #: share of the samples drawn from pseudo-labelled cases (None: every case alike, however many are pseudo)
    pseudo_fraction: float | None = None
    kind: str = "auto"
    #: train only these of the data's labels (e.g. ["liver"] for a localiser; tumour then counts as liver)
    labels: list[str] = field(default_factory=list)
    architecture: str = "rec_unet"
    base_width: int = 16
    #: further architecture arguments (``--arch-arg key=value``); in/out channels come from the data
    arch_args: dict[str, Any] = field(default_factory=dict)
    #: sigmoid: one channel per label (nested labels); softmax: background + exclusive classes
    activation: str = "sigmoid"
    #: 3-D networks: training patch (z, y, x) in model voxels (also the sliding window's patch)
    patch_size: list[int] | None = None
    #: 3-D networks: slice spacing of the model grid (mm); None keeps each scan's own
    spacing_z_mm: float | None = None
    #: a later cascade stage: train on each case's liver box grown by this margin (None: whole cases), masked
    #: outside the grown liver when stage_mask_input, the liver being the reference or stage_liver_model's
    stage_margin_mm: float | None = None
    stage_mask_input: bool = False
    stage_liver_model: str | None = None
    context_slices: int = 1
    #: mm between context channels (interpolated between slices); None counts whole slices (models before v0.3)
    context_step_mm: float | None = None
    #: clip HU to the window before in-plane resampling (in the cache and at inference)
    window_before_resampling: bool = False
    #: in-plane model spacing (mm, isotropic); None trains at each scan's native spacing
    spacing_mm: float | None = 1.5
    window_hu: tuple[float, float] = (-200.0, 250.0)
    #: square training crop in model pixels around the liver; None uses whole slices
    crop: int | None = 128
    epochs: int = 40
    #: optimisation steps per epoch; None: one pass over the training cases' liver slices
    steps_per_epoch: int | None = None
    batch_size: int = 8
    optimizer: str = "adam"
    lr: float = 2e-3
    weight_decay: float = 0.0
    schedule: str = "cosine"
    #: for schedule "step": [[epoch, lr], ...]: from that epoch on, use that learning rate
    lr_steps: list[list[float]] = field(default_factory=list)
    warmup_epochs: int = 1
    loss: str = "bce_dice"
    #: share of samples drawn from slices containing tumour (oversampling), and from liver-free slices
    tumor_fraction: float = 0.5
    background_fraction: float = 0.1
    augment: bool = True
    #: intensity augmentation: a shift of up to ± this (normalised units: 1 = half the HU window) and a factor in
    #: 1 ± intensity_scale. Contrast timing moves the liver's median by 140 HU across 3D-IRCADb's patients alone.
    intensity_shift: float = 0.08
    intensity_scale: float = 0.1
    folds: int = 5
    fold: int = 0
    #: explicit validation case ids (overrides folds)
    val_cases: list[str] = field(default_factory=list)
    split_seed: int = 0
    seed: int = 0
    device: str = "auto"
    amp: bool = True
    channels_last: bool = False
    compile: bool = False
    val_every: int = 1
    #: a lesion's global validation Dice below this counts 0 in the best-epoch score (noise, not learning)
    lesion_score_floor: float = 0.1
    #: after training, pick each lesion label's probability threshold that maximises validation Dice
    calibrate_thresholds: bool = True
    cache_dir: str | None = None
    name: str = "LiverTumorSeg model"
    #: one paragraph stored in the model file and shown to users: data, licence, intended use, limits
    description: str = ""
    preset: str = "fast-cpu"

    def __post_init__(self) -> None:
        self.window_hu = tuple(float(v) for v in self.window_hu)  # type: ignore[assignment]
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}")
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}")
        if self.crop is not None and self.crop < 8:
            raise ValueError("crop must be at least 8 pixels (and a multiple of the network's size multiple)")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}")
        if (self.loss == "ce_dice") != (self.activation == "softmax") and self.loss != "dice":
            raise ValueError("softmax heads train with ce_dice or dice; sigmoid heads with bce_dice, dice or "
                             "focal_dice")
        if self.epochs < 1 or (self.steps_per_epoch is not None and self.steps_per_epoch < 1) or self.batch_size < 1:
            raise ValueError("epochs, steps per epoch and batch size must be at least 1")
        if self.pseudo_fraction is not None and not 0.0 <= self.pseudo_fraction <= 1.0:
            raise ValueError(f"pseudo_fraction must be in [0, 1], not {self.pseudo_fraction}")
        if not 0 <= self.fold < max(1, self.folds):
            raise ValueError(f"fold must be in 0..{self.folds - 1}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


#: Published and practical recipes, each on top of fast-cpu's values; command-line options override them.
PRESETS: dict[str, dict[str, Any]] = {
    # The shipped default model's recipe: about an hour per model on 2 CPU cores (38,400 crops of 128²). A third of
    # the samples from tumour slices: at a half, the IRCADb models over-segmented tumour 2-7x.
    "fast-cpu": dict(architecture="rec_unet", base_width=16, context_slices=1, spacing_mm=1.5, crop=128,
                     batch_size=8, optimizer="adam", lr=2e-3, schedule="cosine", warmup_epochs=1, epochs=40,
                     steps_per_epoch=120, val_every=5, tumor_fraction=0.33, loss="bce_dice", augment=True,
                     window_hu=(-200.0, 250.0)),
    # Two sources (3D-IRCADb-01 + LiTS-derived lits18): the window inside lits18's valid HU [-45, 160] and clipped
    # before resampling, so no source is recognisable by its saturation; 5 context slices 2 mm apart whatever the
    # scan's slice spacing (1-10 mm here); intensity shift 0.18 of the narrower window is fast-cpu's +/-18 HU.
    # 40 epochs: about 1.5 hours per model on 2 CPU cores (1 s per step on an AVX2 EPYC).
    "fast-cpu-mm": dict(architecture="rec_unet", base_width=16, context_slices=2, context_step_mm=2.0,
                        spacing_mm=1.5, crop=128, batch_size=8, optimizer="adam", lr=2e-3, schedule="cosine",
                        warmup_epochs=1, epochs=40, steps_per_epoch=120, val_every=10, tumor_fraction=0.33,
                        loss="bce_dice", augment=True, intensity_shift=0.18, window_hu=(-45.0, 160.0),
                        window_before_resampling=True),
    # The REC-UNet authors' LiTS recipe: full width, native 512² slices, Adam 3e-4 for 100 epochs then 1e-4 for
    # 20, batch 4, BCE + soft Dice, no augmentation -- but with a patient-level split and real 2.5-D input.
    "rec-unet-lits": dict(architecture="rec_unet", base_width=64, context_slices=1, spacing_mm=None, crop=None,
                          batch_size=4, optimizer="adam", lr=3e-4, schedule="step", lr_steps=[[100, 1e-4]],
                          warmup_epochs=0, epochs=120, loss="bce_dice", augment=False, window_hu=(-200.0, 200.0),
                          steps_per_epoch=None, val_every=1, tumor_fraction=0.5),
    # CARes-UNet's optimiser on the REC-UNet network: Ranger 5e-4.
    "ranger": dict(optimizer="ranger", lr=5e-4, schedule="cosine"),
    # The other published systems' recipes (seeds.md sections 2-5), with a patient-level split, 3-D evaluation and our
    # augmentation; widths and patch sizes as the authors had them (reduce them with --width / --arch-arg on a CPU).
    # CARes-UNet: Ranger 5e-4, batch 4, soft Dice + cross-entropy on a softmax head (without the authors' sigmoid);
    # with --pseudo, half of each epoch's samples pseudo-labelled at full weight (the authors' 1:1 batches).
    "cares-unet": dict(architecture="cares_unet", base_width=64, context_slices=0, activation="softmax",
                       loss="ce_dice", optimizer="ranger", lr=5e-4, batch_size=4, schedule="cosine",
                       pseudo_fraction=0.5, pseudo_weight=1.0),
    # ResUNet cascade, liver stage then tumour stage on liver-masked input inside the liver's box (3 context slices
    # where the authors stacked one grey slice 3 times); soft Dice, Adam 1e-3.
    "resunet-liver": dict(architecture="resunet", base_width=16, context_slices=1, labels=["liver"], loss="dice",
                          optimizer="adam", lr=1e-3, batch_size=16, tumor_fraction=0.0),
    "resunet-tumor": dict(architecture="resunet", base_width=16, context_slices=1, labels=["tumor"], loss="dice",
                          optimizer="adam", lr=1e-3, batch_size=8, stage_margin_mm=10.0, stage_mask_input=True,
                          background_fraction=0.0),
    # RA-UNet: 2-D liver at about 256 pixels, 3-D liver in the liver's box, 3-D tumour inside the liver; soft Dice,
    # Adam 1e-3; the tumour stage trains and infers on the same patch (the authors trained 128x128x32, inferred 64^3).
    "raunet-2d": dict(architecture="raunet_2d", context_slices=0, labels=["liver"], spacing_mm=1.5, crop=None,
                      loss="dice", optimizer="adam", lr=1e-3, batch_size=8, tumor_fraction=0.0),
    "raunet-3d-liver": dict(architecture="raunet_3d", context_slices=0, labels=["liver"], spacing_mm=1.0,
                            patch_size=[32, 224, 224], loss="dice", optimizer="adam", lr=1e-3, batch_size=2,
                            stage_margin_mm=10.0, tumor_fraction=0.0),
    "raunet-3d-tumor": dict(architecture="raunet_3d", context_slices=0, labels=["tumor"], spacing_mm=None,
                            patch_size=[32, 128, 128], loss="dice", optimizer="adam", lr=1e-3, batch_size=6,
                            stage_margin_mm=10.0, background_fraction=0.0),
    # U-Net with a ResNet-34 encoder (fastai): 2-class softmax, cross-entropy (+ Dice), Adam, batch 4; the ImageNet
    # encoder is a file given with --arch-arg encoder_weights=FILE.
    "unet-resnet34": dict(architecture="unet_resnet34", context_slices=0, labels=["liver"], activation="softmax",
                          loss="ce_dice", optimizer="adam", lr=1e-3, batch_size=4, tumor_fraction=0.0),
    # The coarse stage of coarse-to-fine inference: liver only, 6 mm, whole slices; cheap on every slice.
    "localizer": dict(architecture="rec_unet", base_width=8, context_slices=0, spacing_mm=6.0, crop=None,
                      batch_size=16, optimizer="adam", lr=3e-3, schedule="cosine", warmup_epochs=1, epochs=20,
                      steps_per_epoch=40, loss="bce_dice", augment=True, window_hu=(-200.0, 250.0),
                      labels=["liver"], tumor_fraction=0.2, background_fraction=0.3, calibrate_thresholds=False,
                      val_every=1),
    # The demo: a small network on small phantoms, about three minutes on 2 CPU cores.
    "demo": dict(architecture="rec_unet", base_width=12, context_slices=1, spacing_mm=2.5, crop=64, batch_size=8,
                 optimizer="adam", lr=3e-3, schedule="cosine", warmup_epochs=1, epochs=16, steps_per_epoch=50,
                 loss="bce_dice", augment=True, window_hu=(-100.0, 200.0), folds=0, val_every=4, tumor_fraction=0.5),
}


def label_specs(names: tuple[str, ...]) -> tuple[LabelSpec, ...]:
    """Model labels for a dataset's label names (value i+1 for name i), with colours and terminology."""
    known = {"liver": LIVER, "tumor": TUMOR, "vessel": VESSEL}
    specs = []
    for value, name in enumerate(names, start=1):
        base = known.get(name.lower())
        if base is not None:
            specs.append(dataclasses.replace(base, value=value))
        else:
            specs.append(LabelSpec(name.title(), value, (128, 174, 128),
                                   terminology_string(("SCT", "123037004", "Anatomical Structure"),
                                                      ("", "", name)), "structure"))
    return tuple(specs)

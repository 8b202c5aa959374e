"""Training-side commands of ``livertumorseg``: train, evaluate, export, pseudo-label, demo.

``train_main(argv)`` is also what the headless Slicer script calls, so ``Slicer --no-main-window
--python-script train.py ARGS`` and ``livertumorseg train ARGS`` accept exactly the same arguments.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from LiverTumorSegLib.errors import LiverTumorSegError

from .config import ACTIVATIONS, LOSSES, OPTIMIZERS, PRESETS, SCHEDULES, TrainConfig


def _spacing(text: str) -> float | None:
    return None if text.lower() == "native" else float(text)


def _crop(text: str) -> int | None:
    return None if text.lower() in ("none", "full") else int(text)


def _arch_arg(text: str) -> tuple[str, object]:
    """``key=value`` with value read as JSON when it can be (numbers, booleans, lists), else as text."""
    import json

    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, e.g. depth=5 (got {text!r})")
    try:
        return key.strip(), json.loads(value)
    except ValueError:
        return key.strip(), value


def _lr_steps(text: str) -> list[list[float]]:
    try:
        return [[int(a), float(b)] for a, b in (item.split(":") for item in text.split(","))]
    except ValueError:
        raise argparse.ArgumentTypeError("--lr-steps takes EPOCH:LR pairs, e.g. 100:1e-4") from None


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("data", nargs="*", metavar="DATA",
                   help="dataset folders (LiTS, MSD, 3D-IRCADb, Slicer exports, .npz, phantom folders)")
    p.add_argument("-o", "--output", required=True, metavar="RUNDIR",
                   help="run folder: checkpoint.pt, model.pt (best), log.csv/json, curves.png")
    p.add_argument("--preset", default="fast-cpu", choices=sorted(PRESETS), help="recipe; options below override it")
    p.add_argument("--resume", action="store_true", help="continue the run in RUNDIR from its last checkpoint")
    p.add_argument("--overwrite", action="store_true", help="start over, replacing the run in RUNDIR")
    g = p.add_argument_group("data")
    g.add_argument("--kind", default=None, help="dataset layout (default: detect)")
    g.add_argument("--labels", type=lambda t: [v for v in t.split(",") if v], default=None, metavar="NAME,...",
                   help="train only these labels (e.g. liver: a localiser; tumour voxels count as liver)")
    g.add_argument("--pseudo", nargs="+", default=None, metavar="DIR", help="pseudo-labelled datasets")
    g.add_argument("--pseudo-weight", type=float, default=None,
                   help="loss weight of pseudo-labelled samples (default 0.5)")
    g.add_argument("--pseudo-fraction", type=float, default=None,
                   help="share of each epoch's samples drawn from the pseudo-labelled cases (CARes-UNet: 0.5, its "
                        "1:1 batches; default: cases drawn alike)")
    g.add_argument("--folds", type=int, default=None, help="k of the patient-level k-fold split (0: no validation)")
    g.add_argument("--fold", type=int, default=None, help="which fold validates (0..k-1)")
    g.add_argument("--val-cases", nargs="+", default=None, metavar="ID", help="explicit validation cases")
    g.add_argument("--split-seed", type=int, default=None)
    g.add_argument("--cache-dir", default=None, help="preprocessing cache (default: ~/.cache/livertumorseg)")
    m = p.add_argument_group("model")
    m.add_argument("--arch", dest="architecture", default=None, help="architecture (registered network name)")
    m.add_argument("--width", dest="base_width", type=int, default=None)
    m.add_argument("--arch-arg", dest="arch_args", type=_arch_arg, action="append", default=None,
                   metavar="KEY=VALUE", help="further architecture argument (repeatable), e.g. depth=5")
    m.add_argument("--activation", choices=ACTIVATIONS, default=None,
                   help="sigmoid: a channel per label (nested labels); softmax: background + exclusive classes")
    m.add_argument("--patch-size", type=int, nargs=3, default=None, metavar=("Z", "Y", "X"),
                   help="3-D networks: training patch and sliding window, in model voxels")
    m.add_argument("--spacing-z", dest="spacing_z_mm", type=float, default=None, metavar="MM",
                   help="3-D networks: slice spacing of the model grid")
    c = p.add_argument_group("cascade stage (train a stage that runs where a liver stage found the liver)")
    c.add_argument("--stage-margin", dest="stage_margin_mm", type=float, default=None, metavar="MM",
                   help="train on each case's liver box grown by MM (as 'livertumorseg cascade --link box:MM' runs it)")
    c.add_argument("--stage-mask-input", action="store_true", default=None,
                   help="voxels outside the grown liver reach the network as the bottom of its window")
    c.add_argument("--stage-liver-model", default=None, metavar="FILE",
                   help="take the liver from this model's prediction instead of the reference")
    m.add_argument("--context", dest="context_slices", type=int, default=None, help="k: 2k+1 input slices")
    m.add_argument("--context-step-mm", type=_spacing, default=argparse.SUPPRESS, metavar="MM",
                   help="mm between context slices (interpolated), or 'native' to count whole slices")
    m.add_argument("--window-before-resampling", action="store_true", default=None,
                   help="clip HU to the window before in-plane resampling (for data stored clipped)")
    m.add_argument("--spacing", dest="spacing_mm", type=_spacing, default=argparse.SUPPRESS,
                   help="in-plane model spacing in mm, or 'native'")
    m.add_argument("--window", dest="window_hu", type=float, nargs=2, default=None, metavar=("LO", "HI"))
    m.add_argument("--name", default=None, help="model name shown to users")
    m.add_argument("--description", default=None, help="one paragraph shown to users: data, licence, limits")
    o = p.add_argument_group("optimisation")
    o.add_argument("--crop", type=_crop, default=argparse.SUPPRESS, help="training crop size, or 'none'")
    o.add_argument("--epochs", type=int, default=None)
    o.add_argument("--steps-per-epoch", type=int, default=None)
    o.add_argument("--batch-size", type=int, default=None)
    o.add_argument("--optimizer", choices=OPTIMIZERS, default=None)
    o.add_argument("--lr", type=float, default=None)
    o.add_argument("--weight-decay", type=float, default=None)
    o.add_argument("--schedule", choices=SCHEDULES, default=None)
    o.add_argument("--lr-steps", type=_lr_steps, default=None, metavar="EPOCH:LR,...")
    o.add_argument("--warmup-epochs", type=int, default=None)
    o.add_argument("--loss", choices=LOSSES, default=None)
    o.add_argument("--tumor-fraction", type=float, default=None)
    o.add_argument("--no-augment", dest="augment", action="store_false", default=None)
    o.add_argument("--intensity-shift", type=float, default=None,
                   help="intensity augmentation: shift of up to +/- this (1 = half the HU window; default 0.08)")
    o.add_argument("--intensity-scale", type=float, default=None,
                   help="intensity augmentation: contrast factor in 1 +/- this (default 0.1)")
    o.add_argument("--seed", type=int, default=None)
    o.add_argument("--val-every", type=int, default=None)
    o.add_argument("--lesion-score-floor", type=float, default=None,
                   help="best-epoch score: a lesion global Dice below this counts 0 (default 0.1; 0: off)")
    x = p.add_argument_group("execution")
    x.add_argument("--device", default=None, choices=["auto", "cpu", "cuda", "mps"])
    x.add_argument("--no-amp", dest="amp", action="store_false", default=None)
    x.add_argument("--channels-last", action="store_true", default=None)
    x.add_argument("--compile", action="store_true", default=None, help="torch.compile the network")
    x.add_argument("--quiet", action="store_true")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Preset values, overridden by every option the user gave."""
    from .checkpoint import load_checkpoint
    from .trainer import CHECKPOINT

    if args.resume:
        saved = load_checkpoint(Path(args.output) / CHECKPOINT)["config"]
        if args.epochs:
            saved["epochs"] = args.epochs
        return TrainConfig.from_dict(saved)
    if not args.data:
        raise LiverTumorSegError("give at least one dataset folder to train on (or --resume a run)")
    values = dict(PRESETS["fast-cpu"])
    values.update(PRESETS[args.preset])
    values.update(preset=args.preset, data=[str(d) for d in args.data], output=str(args.output))
    skip = {"data", "output", "preset", "resume", "overwrite", "quiet", "func", "command", "pseudo", "arch_args"}
    for key, value in vars(args).items():
        if key not in skip and value is not None:
            values[key] = value
    if args.pseudo:
        values["pseudo"] = [str(d) for d in args.pseudo]
    if args.arch_args:
        values["arch_args"] = dict(args.arch_args)
    try:
        return TrainConfig(**values)
    except (TypeError, ValueError) as e:
        raise LiverTumorSegError(f"invalid training options: {e}; see 'livertumorseg train --help'") from None


def cmd_train(args: argparse.Namespace) -> int:
    from .trainer import train

    cfg = config_from_args(args)
    result = train(cfg, resume=args.resume, overwrite=args.overwrite, progress=not args.quiet)
    best = "" if result.best_score is None else f" (best validation score {result.best_score:.4f})"
    print(f"model file: {result.model_path}{best}")
    return 0


def cmd_pseudo_label(args: argparse.Namespace) -> int:
    """Label unlabelled CTs with a model and write them as a LiTS-layout training set."""
    from tqdm import tqdm

    from LiverTumorSegLib.imageio import discover_cases, read_case
    from LiverTumorSegLib.modelfile import load_model
    from LiverTumorSegLib.pipeline import segment

    from .export import export_dataset

    model = load_model(args.model)
    names = tuple(lab.name.lower() for lab in model.config.labels)
    cases = discover_cases(args.inputs)

    def labelled():
        for case in tqdm(cases, desc="pseudo-labelling", unit="case", disable=args.quiet):
            read = read_case(case)
            yield case.case_id, read.image, segment(read.image, model, device=args.device, modality=read.modality)

    out = export_dataset(labelled(), args.output, layout="lits", label_names=names,
                         name=f"pseudo-labels by {model.config.name}", overwrite=args.overwrite)
    print(f"wrote {len(cases)} pseudo-labelled cases to {out}; train with --pseudo {out}")
    return 0


def train_main(argv: Sequence[str] | None = None) -> int:
    """``livertumorseg train`` as a function: parse ``argv``, train, return the exit code."""
    from LiverTumorSegLib.errors import OneLineArgumentParser, print_error

    p = OneLineArgumentParser(prog="livertumorseg train", description="Train a liver/tumour model.")
    add_train_arguments(p)
    args = p.parse_args(argv)
    try:
        return cmd_train(args)
    except LiverTumorSegError as e:
        print_error(str(e))
        return 1
    except KeyboardInterrupt:
        print_error("interrupted; continue with the same command plus --resume")
        return 130


def register(sub: argparse._SubParsersAction) -> None:
    """Add the training-side commands to the main ``livertumorseg`` parser."""
    t = sub.add_parser("train", help="train a model (headless; CPU, one GPU, or torchrun for many)")
    add_train_arguments(t)
    t.set_defaults(func=cmd_train)

    s = sub.add_parser("pseudo-label", help="label unlabelled CTs with a model, as a training set")
    s.add_argument("inputs", nargs="+", metavar="INPUT")
    s.add_argument("-o", "--output", required=True, metavar="OUTDIR")
    s.add_argument("--model", required=True, metavar="FILE")
    s.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    s.add_argument("--overwrite", action="store_true")
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=cmd_pseudo_label)

    from . import compare, crossval, demo, evaluate, export

    crossval.add_parser(sub)
    compare.add_parser(sub)
    evaluate.add_parser(sub)
    export.add_parser(sub)
    demo.add_parser(sub)


if __name__ == "__main__":
    sys.exit(train_main())

"""``livertumorseg``: segment CT files, import the authors' weights, show the environment, make phantoms.

Each bad case gets one line saying what is wrong and how to fix it; the other cases still run and
the exit code is non-zero if any failed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Sequence

from . import __version__
from .errors import LiverTumorSegError, OneLineArgumentParser, print_error, print_warning
from .options import SegmentOptions, parse_numbers

log = logging.getLogger("livertumorseg")

MODEL_ENV = "LIVERTUMORSEG_MODEL"


_error, _warn = print_error, print_warning


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Python warnings as one line (not the file, line number and source line a library warning prints)."""
    _warn(str(message))


def default_model_path() -> Path | None:
    """The model used when ``--model`` is not given: ``$LIVERTUMORSEG_MODEL``, else the catalogue's default model
    (shipped in ``Resources/Models``, so a fresh clone works offline, or installed in the models folder)."""
    from .catalog import DEFAULT_CATALOG, MODELS_DIR_ENV, default_model, default_models_dir, load_catalog

    if os.environ.get(MODEL_ENV):
        return Path(os.environ[MODEL_ENV])
    if not DEFAULT_CATALOG.is_file():  # installed without the extension's Resources (a non-editable pip install)
        return None
    return default_model(load_catalog(), os.environ.get(MODELS_DIR_ENV, "").strip() or default_models_dir())


def output_paths(outdir: Path, case_id: str) -> dict[str, Path]:
    return {"labels": outdir / f"{case_id}.labels.nii.gz", "segmentation": outdir / f"{case_id}.seg.nrrd",
            "report": outdir / f"{case_id}.report.json"}


def case_report(result, case_id: str, source: str, paths: dict[str, Path]) -> dict:
    """The per-case JSON report: volumes and lesions in physical units, model and timing."""
    from .report import segmentation_report

    report = {"case": case_id, "input": source, "outputs": {k: str(v) for k, v in paths.items()},
              **segmentation_report(result)}
    report["livertumorseg_version"] = __version__
    return report


def _emit(args: argparse.Namespace, event: str, **fields) -> None:
    """One JSON object per line on stdout (``--progress json``), for front ends running this as a subprocess."""
    if args.progress == "json":
        print(json.dumps({"event": event, **fields}), flush=True)


def cmd_segment(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .atomicfile import ensure_output_folder, write_image_atomic, write_json_atomic
    from .imageio import discover_cases, read_case
    from .modelfile import load_model
    from .pipeline import run_segmentation
    from .segfile import write_seg_nrrd
    from .validation import validate_options

    model_path = Path(args.model) if args.model else default_model_path()
    if model_path is None:
        raise LiverTumorSegError("no model given and no default model installed; pass --model FILE "
                                 "(train one, or convert the authors' weights with 'livertumorseg import-weights')")
    _emit(args, "stage", stage="loading model", model=str(model_path))
    model = load_model(model_path)
    options = SegmentOptions.from_args(args)
    validate_options(len(model.config.labels), options.thresholds, options.min_lesion_mm3,
                     options.min_lesion_confidence, options.organ_margin_mm)
    cases = discover_cases(args.inputs)
    if not cases:
        raise LiverTumorSegError(f"no CT images or DICOM series found in {' '.join(args.inputs)}; give NIfTI, NRRD "
                                 f"or MHA files or DICOM series folders")
    outdir = ensure_output_folder(args.output)
    failed = 0
    quiet = args.quiet or args.progress == "json"
    for case in tqdm(cases, desc="cases", unit="case", disable=len(cases) < 2 or quiet):
        paths = output_paths(outdir, case.case_id)
        try:
            folders = [str(p) for p in paths.values() if p.is_dir()]
            if folders:
                raise LiverTumorSegError(f"{folders[0]} is a folder where an output file goes; move or rename it")
            existing = [str(p) for p in paths.values() if p.exists()]
            if existing and not args.overwrite:
                raise LiverTumorSegError(f"outputs exist ({existing[0]}); pass --overwrite to replace them")
            _emit(args, "stage", case=case.case_id, stage="reading")
            read = read_case(case, allow_incomplete_series=args.allow_incomplete_series)
            image, modality = read.image, read.modality
            for warning in read.warnings:
                _warn(f"{case.case_id}: {warning}")
            _emit(args, "stage", case=case.case_id, stage="segmenting")
            with tqdm(total=1, desc=case.case_id, unit="slice", leave=False, disable=quiet) as bar:
                def progress(done: int, total: int) -> None:
                    bar.total = total
                    bar.update(done - bar.n)
                    _emit(args, "progress", case=case.case_id, stage="segmenting", done=done, total=total)

                result = run_segmentation(image, model, progress=progress, modality=modality,
                                          **options.pipeline_kwargs())
            _emit(args, "stage", case=case.case_id, stage="writing")
            t = time.perf_counter()
            written: list[Path] = []
            try:  # a case's outputs come as a set: if one cannot be written, none of them stays
                write_image_atomic(result.labels, paths["labels"], overwrite=args.overwrite)
                written.append(paths["labels"])
                write_seg_nrrd(result.labels, result.model.output_labels, paths["segmentation"],
                               overwrite=args.overwrite)
                written.append(paths["segmentation"])
                result.seconds["write"] = time.perf_counter() - t
                report = case_report(result, case.case_id, str(case.path), paths)
                if read.warnings:
                    report["warnings"] = list(read.warnings)
                write_json_atomic(paths["report"], report, overwrite=args.overwrite)
            except BaseException:
                for path in written:
                    path.unlink(missing_ok=True)
                raise
            _emit(args, "done", case=case.case_id, outputs={k: str(v) for k, v in paths.items()})
            if not quiet:
                tqdm.write(_one_line_summary(case.case_id, report))
        except LiverTumorSegError as e:
            failed += 1
            _emit(args, "error", case=case.case_id, message=str(e))
            _error(f"{case.case_id}: {e}")
        except Exception as e:  # noqa: BLE001 - one bad case must not stop a batch
            if args.debug:
                raise
            failed += 1
            _error(f"{case.case_id}: unexpected {type(e).__name__}: {e} (rerun with --debug for the traceback)")
    return 1 if failed else 0


def _one_line_summary(case_id: str, report: dict) -> str:
    run = report["run"]
    parts = [f"{case_id}: done in {run['seconds'].get('total', 0):.1f} s on {run['device']}"]
    if "organ_volume_ml" in report:
        parts.append(f"{report.get('organ_name', 'organ')} {report['organ_volume_ml']:.0f} mL, "
                     f"{report['lesion_count']} lesion(s) {report['lesion_volume_ml']:.1f} mL "
                     f"({report['lesion_burden_percent']:.1f} %)")
    return "; ".join(parts)


def cmd_import_weights(args: argparse.Namespace) -> int:
    from .authors import import_authors_weights
    from .modelfile import save_model

    model = import_authors_weights(args.checkpoint, args.arch, args.labels, name=args.name)
    path = save_model(model, args.output, overwrite=args.overwrite, half_precision=args.half)
    print(f"wrote {path}: {model.config.architecture} {model.config.architecture_kwargs}, "
          f"labels {[lab.name for lab in model.config.labels]}")
    return 0


def cmd_attach_localizer(args: argparse.Namespace) -> int:
    from .modelfile import attach_localizer, load_model, save_model

    model, localizer = load_model(args.model), load_model(args.localizer)
    if localizer.localizer is not None:
        raise LiverTumorSegError(f"{args.localizer} has a localiser stage itself; give a plain (liver) model")
    if not any(lab.role == "organ" for lab in localizer.config.labels):
        names = ", ".join(lab.name for lab in localizer.config.labels)
        raise LiverTumorSegError(f"{args.localizer} has no organ label ({names}); train a liver localiser "
                                 f"(livertumorseg train --preset localizer)")
    if args.name or args.description:  # what users see in the model selector and the reports
        model.config = dataclasses.replace(model.config, name=args.name or model.config.name,
                                           description=args.description or model.config.description)
    changes = {}  # post-processing calibrated elsewhere (cross-validation) for a model trained without validation
    if args.thresholds is not None:
        if len(args.thresholds) != len(model.config.labels):
            raise LiverTumorSegError(f"--thresholds needs {len(model.config.labels)} values (one per label: "
                                     f"{', '.join(lab.name for lab in model.config.labels)})")
        changes["thresholds"] = args.thresholds
    if args.min_lesion_confidence is not None:
        changes["min_lesion_confidence"] = args.min_lesion_confidence
    if args.min_lesion_mm3 is not None:
        changes["min_lesion_mm3"] = args.min_lesion_mm3
    if args.crossval is not None:
        changes["metrics"] = {**model.config.metrics, "crossval": _crossval_summary(Path(args.crossval))}
    try:
        model.config = dataclasses.replace(model.config, **changes)
    except ValueError as e:
        raise LiverTumorSegError(f"invalid post-processing option: {e}") from None
    path = save_model(attach_localizer(model, localizer), args.output, overwrite=args.overwrite)
    print(f"wrote {path}: {model.config.name} with localiser {localizer.config.name} "
          f"({localizer.config.spacing_yx_mm or 'native'} mm)")
    return 0


def _stage_link(text: str):
    """``REGION[:MARGIN_MM[:mask-input]]``, e.g. ``mask:10:mask-input``."""
    from .modelfile import StageLink

    try:
        return StageLink.parse(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"a link is REGION[:MARGIN_MM[:mask-input]] with REGION box or mask ({e})")


def cmd_cascade(args: argparse.Namespace) -> int:
    """One model file from single-stage files: each stage runs where the one before found its organ."""
    from .modelfile import StageLink, cascade, load_model, save_model

    stages = [load_model(path) for path in args.stages]
    for path, stage in zip(args.stages, stages):
        if stage.stages_before:
            raise LiverTumorSegError(f"{path} is a cascade itself; give single-stage model files")
    links = args.link or [StageLink()] * (len(stages) - 1)
    if len(links) != len(stages) - 1:
        raise LiverTumorSegError(f"{len(stages)} stages need {len(stages) - 1} --link options (one between each "
                                 f"pair), got {len(links)}")
    try:
        model = cascade(stages, links)
    except ValueError as e:
        raise LiverTumorSegError(f"cannot build the cascade: {e}") from None
    if args.name or args.description:
        model.config = dataclasses.replace(model.config, name=args.name or model.config.name,
                                           description=args.description or model.config.description)
    path = save_model(model, args.output, overwrite=args.overwrite)
    print(f"wrote {path}: {' -> '.join(s.config.name for s in [*model.stages_before, model])} "
          f"(labels {', '.join(lab.name for lab in model.output_labels)})")
    return 0


def _crossval_summary(report_prefix: Path) -> dict:
    """The headline numbers of a ``livertumorseg crossval`` report (``<prefix>.json``), to travel in a model file."""
    import json

    path = report_prefix if report_prefix.suffix == ".json" else Path(f"{report_prefix}.json")
    try:
        agg = json.loads(path.read_text(encoding="utf-8"))["aggregate"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise LiverTumorSegError(f"cannot read a crossval report from {path} ({type(e).__name__}); give the "
                                 f"report prefix that 'livertumorseg crossval' wrote, e.g. runs/cv/crossval") from None
    out: dict = {"n_cases": agg.get("n_cases"), "report": path.name}
    for name, s in agg.get("structures", {}).items():
        out[name] = {k: s.get(k) for k in ("dice_per_case", "dice_global", "dice_per_case_with_ref")}
    lesions = agg.get("lesions")
    if lesions:
        out["lesions"] = {"recall": lesions.get(">0", {}).get("recall"),
                          "precision": lesions.get(">0", {}).get("precision"),
                          "recall_10mm_plus": (lesions.get("recall_10mm_plus") or {}).get(">0"),
                          "false_per_scan_median": (lesions.get("false_per_scan") or {}).get("median")}
    return out


def cmd_info(args: argparse.Namespace) -> int:
    from .environment import environment_info

    info = environment_info()
    default = default_model_path()
    info["default_model"] = str(default) if default else None
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        for key, value in info.items():
            print(f"{key:>16}: {value}")
    return 0


def cmd_phantom(args: argparse.Namespace) -> int:
    from .atomicfile import write_image_atomic
    from .phantom import make_phantom

    ct, labels = make_phantom(shape_zyx=tuple(args.shape), spacing_zyx=tuple(args.spacing), seed=args.seed,
                              orientation=args.orientation)
    outdir = Path(args.output)
    outdir.mkdir(parents=True, exist_ok=True)
    name = f"phantom{args.seed}"
    write_image_atomic(ct, outdir / f"{name}.nii.gz", overwrite=args.overwrite)
    write_image_atomic(labels, outdir / f"{name}_truth.nii.gz", overwrite=args.overwrite)
    print(f"wrote {outdir / (name + '.nii.gz')} and its ground truth {outdir / (name + '_truth.nii.gz')}")
    return 0


def build_parser(with_plugins: bool = True) -> argparse.ArgumentParser:
    p = OneLineArgumentParser(prog="livertumorseg", description="Liver and liver-tumour segmentation of CT.")
    p.add_argument("--version", action="version", version=f"livertumorseg {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=OneLineArgumentParser)

    s = sub.add_parser("segment", help="segment CT volumes (files, DICOM series folders, or folders of them)")
    s.add_argument("inputs", nargs="+", metavar="INPUT")
    s.add_argument("-o", "--output", required=True, metavar="OUTDIR")
    s.add_argument("--model", metavar="FILE", help=f"model file (.pt); default: ${MODEL_ENV} or the shipped model")
    SegmentOptions.add_arguments(s)  # every pipeline option, declared once in options.py
    s.add_argument("--progress", choices=["bar", "json"], default="bar",
                   help="json: one JSON event per line on stdout (for front ends running this as a subprocess)")
    s.add_argument("--allow-incomplete-series", action="store_true",
                   help="segment a DICOM series with missing or unreadable slices anyway (a warning in the report)")
    s.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    s.add_argument("--quiet", action="store_true", help="no progress bars")
    s.add_argument("--debug", action="store_true", help="show tracebacks of unexpected errors")
    s.set_defaults(func=cmd_segment)

    w = sub.add_parser("import-weights", help="convert a REC-UNet authors' checkpoint into a model file")
    w.add_argument("checkpoint", metavar="AUTHORS.pth")
    w.add_argument("--arch", required=True, choices=["rec_unet", "rec_unet_em"])
    w.add_argument("--labels", default="liver,tumor", choices=["liver,tumor", "vessel,tumor"])
    w.add_argument("-o", "--output", required=True, metavar="MODEL.pt")
    w.add_argument("--name", default=None, help="model name shown to users")
    w.add_argument("--half", action="store_true", help="store fp16 weights (half the file size)")
    w.add_argument("--overwrite", action="store_true")
    w.set_defaults(func=cmd_import_weights)

    a = sub.add_parser("attach-localizer", help="make a coarse-to-fine model: MODEL runs only where LOCALIZER "
                                                "finds the liver")
    a.add_argument("model", metavar="MODEL.pt")
    a.add_argument("localizer", metavar="LOCALIZER.pt")
    a.add_argument("-o", "--output", required=True, metavar="OUT.pt")
    a.add_argument("--name", default=None, help="model name shown to users (default: MODEL's)")
    a.add_argument("--description", default=None, help="one paragraph shown to users: data, licence, limits")
    a.add_argument("--thresholds", type=parse_numbers, default=None, metavar="T1,T2",
                   help="store these probability thresholds (e.g. the ones cross-validation chose)")
    a.add_argument("--min-lesion-confidence", type=float, default=None, metavar="P",
                   help="store this per-lesion keep-threshold (e.g. crossval's confidence.json 'all_folds')")
    a.add_argument("--min-lesion-mm3", type=float, default=None, metavar="MM3",
                   help="store this minimum lesion volume (e.g. crossval's confidence.json 'all_folds')")
    a.add_argument("--crossval", default=None, metavar="REPORT_PREFIX",
                   help="store the headline numbers of this crossval report (e.g. runs/cv/crossval) as metrics")
    a.add_argument("--overwrite", action="store_true")
    a.set_defaults(func=cmd_attach_localizer)

    c = sub.add_parser("cascade", help="one model file from stages: each runs where the one before found its organ")
    c.add_argument("stages", nargs="+", metavar="STAGE.pt", help="single-stage model files, first to last")
    c.add_argument("-o", "--output", required=True, metavar="OUT.pt")
    c.add_argument("--link", type=_stage_link, action="append", default=None, metavar="REGION[:MM[:mask-input]]",
                   help="how each stage depends on the one before (repeat once per pair; default box:10): box: its "
                        "organ's box grown by MM; mask: also keep the labels inside that grown organ; mask-input: "
                        "the network sees only the grown organ")
    c.add_argument("--name", default=None, help="model name shown to users (default: the last stage's)")
    c.add_argument("--description", default=None, help="one paragraph shown to users: data, licence, limits")
    c.add_argument("--overwrite", action="store_true")
    c.set_defaults(func=cmd_cascade)

    i = sub.add_parser("info", help="versions, torch build, CUDA/MPS, GPU name and free memory")
    i.add_argument("--json", action="store_true")
    i.set_defaults(func=cmd_info)

    ph = sub.add_parser("phantom", help="write a synthetic CT phantom and its ground truth")
    ph.add_argument("-o", "--output", required=True, metavar="OUTDIR")
    ph.add_argument("--seed", type=int, default=0)
    ph.add_argument("--shape", type=int, nargs=3, default=(96, 256, 256), metavar=("Z", "Y", "X"))
    ph.add_argument("--spacing", type=float, nargs=3, default=(2.5, 1.5, 1.5), metavar=("SZ", "SY", "SX"))
    ph.add_argument("--orientation", default="LPS", help="DICOM orientation code of the written image")
    ph.add_argument("--overwrite", action="store_true")
    ph.set_defaults(func=cmd_phantom)

    if with_plugins:
        for entry in _plugin_entry_points():
            entry.load()(sub)
    return p


#: commands of the segmentation core itself; anything else comes from plugins (the training package)
CORE_COMMANDS = ("segment", "import-weights", "attach-localizer", "cascade", "info", "phantom")
PLUGIN_GROUP = "livertumorseg.commands"


def _plugin_entry_points() -> list:
    """Commands other installed packages add (``[project.entry-points."livertumorseg.commands"]``): the
    training package registers train, crossval, evaluate, export, pseudo-label and demo this way, so the
    core never imports it and ``segment`` loads none of it."""
    from importlib.metadata import entry_points

    return sorted(entry_points(group=PLUGIN_GROUP), key=lambda e: e.name)


def _needs_plugins(argv: Sequence[str]) -> bool:
    """Whether the command line asks for something beyond the core's own commands (or for the full help)."""
    words = [a for a in argv if not a.startswith("-")]
    return not words or words[0] not in CORE_COMMANDS


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; every refusal is one line on stderr and exit status 1 (130 after Ctrl-C)."""
    import warnings

    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(with_plugins=_needs_plugins(argv)).parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="livertumorseg: %(message)s")
    try:
        import SimpleITK as sitk

        sitk.ProcessObject.SetGlobalWarningDisplay(False)  # ITK's multi-line warnings: we say what matters
    except ImportError:
        pass
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning
        try:
            return int(args.func(args) or 0)
        except (LiverTumorSegError, FileExistsError) as e:
            _error(str(e))
            return 1
        except KeyboardInterrupt:
            resumable = getattr(args, "command", None) in ("train", "crossval")
            _error("interrupted; continue with the same command plus --resume" if args.command == "train" else
                   "interrupted; rerun the same command to continue where it stopped" if resumable else "interrupted")
            return 130


def console_main() -> None:
    """The ``livertumorseg`` console script: ``main``, then an exit that a late Ctrl-C cannot turn into a
    traceback (threads and torch clean up at interpreter exit, after the command's own handler is gone)."""
    import signal

    for stream in (sys.stdout, sys.stderr):  # a terminal without UTF-8 gets '?' for '≥', not a traceback
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="replace")
    try:
        code = main()
    except KeyboardInterrupt:
        _error("interrupted")
        code = 130
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.stdout.flush()
    sys.exit(code)


if __name__ == "__main__":
    console_main()

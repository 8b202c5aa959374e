"""Evaluate a folder of predicted label maps against a folder of reference label maps.

Why a matcher: predictions and references rarely share file names (LiTS ``segmentation-N.nii`` vs our
``volume-N.labels.nii.gz``, ``_seg``/``_gt`` decorations, Slicer ``.seg.nrrd`` next to label maps), and a
silently wrong pairing gives plausible but meaningless numbers. Files are paired by a normalised case
id, ambiguities are errors, unmatched files are reported. Reports (CSV, Markdown, JSON) are written
atomically and never replace existing files unless asked to.
"""

from __future__ import annotations

import argparse
import csv
import io
import logging
import math
import re
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import SimpleITK as sitk

from LiverTumorSegLib.atomicfile import write_json_atomic, write_text_atomic
from LiverTumorSegLib.errors import InputImageError, LiverTumorSegError, print_error
from LiverTumorSegLib.imageio import read_image_file

from .metrics import (
    DEFAULT_STRUCTURES,
    DETECTION_THRESHOLDS,
    OVERLAP_METRICS,
    SIZE_CLASSES,
    SURFACE_METRICS,
    case_metrics,
    threshold_key,
)
from .summary import aggregate, aggregate_groups, targets_markdown

log = logging.getLogger("livertumorseg")

__all__ = ["EvaluationError", "add_parser", "case_id", "evaluate_folders", "match_cases", "read_label_map"]

#: Suffixes of label-map files, longest first so that ``.nii.gz`` wins over ``.gz``-less ``.nii``.
IMAGE_SUFFIXES = (".seg.nrrd", ".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
#: Decorations that mark a file as a label map (stripped from the case id, preferred when ids collide).
_LABEL_DECORATIONS = re.compile(r"(\.labels|_seg|_labels|_label|_truth|_gt)$", re.IGNORECASE)
_LITS = re.compile(r"^(segmentation|volume)-(\d+)$", re.IGNORECASE)
#: Segment names of a ``.seg.nrrd`` → label values of the LiTS convention.
SEGMENT_LABELS = {"liver": 1, "tumor": 2, "tumour": 2}

# Rank of a file among files with the same case id: lower wins.
_RANK_LABEL, _RANK_PLAIN, _RANK_VOLUME, _RANK_SEG_NRRD = 0, 1, 2, 3


class EvaluationError(LiverTumorSegError):
    """Bad evaluation input: nothing to compare, ambiguous file names, an existing report."""


def _parse_name(path: Path) -> tuple[str, int] | None:
    """(case id, rank) of a file name, or None if it is not a label-map file."""
    name = path.name
    low = name.lower()
    suffix = next((s for s in IMAGE_SUFFIXES if low.endswith(s)), None)
    if suffix is None or name.startswith("."):
        return None
    stem = name[: -len(suffix)]
    if suffix == ".seg.nrrd":
        rank = _RANK_SEG_NRRD
    else:
        rank = _RANK_PLAIN
    decorated = _LABEL_DECORATIONS.search(stem)
    if decorated:
        stem = stem[: decorated.start()]
        rank = min(rank, _RANK_LABEL)
    lits = _LITS.match(stem)
    if lits:
        if lits.group(1).lower() == "segmentation":
            rank = min(rank, _RANK_LABEL)
        elif rank == _RANK_PLAIN:
            rank = _RANK_VOLUME  # a bare volume-N is most likely the CT itself
        stem = lits.group(2)
    return stem, rank


def case_id(path: str | Path) -> str | None:
    """Normalised case id of a label-map file name, None for non-image files.

    ``volume-3.labels.nii.gz``, ``segmentation-3.nii``, ``3_seg.nrrd``, ``3.seg.nrrd`` → ``3``;
    ``liver_7_gt.nii.gz`` → ``liver_7`` (MSD names are kept); hidden files (``._x.nii.gz``) are ignored.
    """
    parsed = _parse_name(Path(path))
    return None if parsed is None else parsed[0]


def _collect(path: Path, role: str) -> dict[str, Path]:
    """Case id → file for a folder (not recursive) or a single file; picks the best-ranked file per id."""
    if path.is_file():
        parsed = _parse_name(path)
        return {(parsed[0] if parsed else path.name): path}
    if not path.is_dir():
        raise EvaluationError(f"{role} not found: {path}; give a label-map file or a folder of them")
    best: dict[str, tuple[int, list[Path]]] = {}
    for file in sorted(path.iterdir()):
        parsed = _parse_name(file) if file.is_file() else None
        if parsed is None:
            continue
        cid, rank = parsed
        if cid not in best or rank < best[cid][0]:
            best[cid] = (rank, [file])
        elif rank == best[cid][0]:
            best[cid][1].append(file)
    out = {}
    for cid, (_rank, files) in best.items():
        if len(files) > 1:
            raise EvaluationError(f"{role} files {', '.join(f.name for f in files)} all give case id {cid!r}; "
                                  f"move all but one out of {path}")
        out[cid] = files[0]
    return out


def match_cases(pred_dir: str | Path, ref_dir: str | Path) -> list[tuple[str, Path, Path]]:
    """Pair predictions with references by normalised case id (see :func:`case_id`).

    Each side may be a folder (its label-map files, not recursive) or a single file; two single files
    are paired whatever their names. Within a folder, when several files give the same id, explicit
    label maps (``segmentation-N``, ``.labels``, ``_seg`` ...) win over plain names, plain names over a
    LiTS ``volume-N`` CT, and ``.seg.nrrd`` files are used only when no label map exists for that case.
    Unmatched files are logged as warnings. Raises :class:`EvaluationError` if no case matches.
    """
    pred_path, ref_path = Path(pred_dir), Path(ref_dir)
    preds = _collect(pred_path, "prediction")
    refs = _collect(ref_path, "reference")
    if pred_path.is_file() and ref_path.is_file():
        return [(next(iter(refs)), pred_path, ref_path)]
    pairs = [(cid, preds[cid], refs[cid]) for cid in sorted(set(preds) & set(refs), key=_natural)]
    # A single file on one side is a choice, not an omission: then only that file can be unmatched.
    if not ref_path.is_file():
        for cid in sorted(set(preds) - set(refs), key=_natural):
            log.warning("warning: prediction %s has no reference (case id %r) in %s", preds[cid].name, cid, ref_path)
    if not pred_path.is_file():
        for cid in sorted(set(refs) - set(preds), key=_natural):
            log.warning("warning: reference %s has no prediction (case id %r) in %s", refs[cid].name, cid, pred_path)
    if not pairs:
        raise EvaluationError(f"no prediction in {pred_path} matches a reference in {ref_path} "
                              f"(case ids: predictions {sorted(preds)[:5]}, references {sorted(refs)[:5]}); "
                              f"name files by case, e.g. volume-N.labels.nii.gz and segmentation-N.nii")
    return pairs


def _natural(text: str) -> list:
    """Sort key that puts case 2 before case 10."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text)]


def read_label_map(path: str | Path) -> sitk.Image:
    """Read a label map; a Slicer ``.seg.nrrd`` is converted by segment name (Liver → 1, Tumor → 2).

    Segments with other names are left out (with a warning), because their label values in the file
    are arbitrary and would otherwise be counted as liver or tumour.
    """
    path = Path(path)
    try:
        if path.name.lower().endswith(".seg.nrrd"):
            from LiverTumorSegLib.segfile import read_seg_nrrd_labels

            image, segments = read_seg_nrrd_labels(path)
            arr = sitk.GetArrayViewFromImage(image)
            lut = np.zeros(256, dtype=np.uint8)
            for seg in segments:
                value = SEGMENT_LABELS.get(seg["name"].strip().lower())
                if value is None:
                    log.warning("warning: %s: segment %r is not Liver or Tumor; ignored", path.name, seg["name"])
                else:
                    lut[seg["labelValue"]] = value
            out = sitk.GetImageFromArray(lut[arr])
            out.CopyInformation(image)
            return out
        image = read_image_file(path)
    except (RuntimeError, ValueError) as e:
        raise EvaluationError(f"cannot read {path}: {' '.join(str(e).split())[:200]}") from None
    except InputImageError as e:
        raise EvaluationError(str(e)) from None
    _check_label_values(image, path)
    return image


def _check_label_values(image: sitk.Image, path: Path) -> None:
    """A label map holds whole, non-negative numbers: a probability map (values in 0..1) or a CT would otherwise
    be scored as if it were one, and give Dice 0 or nonsense without a word."""
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise EvaluationError(f"{path.name} has {image.GetNumberOfComponentsPerPixel()} values per voxel; give a "
                              f"label map (one integer label per voxel)")
    arr = sitk.GetArrayViewFromImage(image)
    if arr.dtype.kind == "f":
        finite = np.isfinite(arr)
        if not finite.all() or not np.array_equal(arr, np.rint(arr)):
            values = arr[finite]
            probability = values.size and values.min() >= 0 and values.max() <= 1
            raise EvaluationError(f"{path.name} holds fractional values"
                                  f"{' in [0, 1] (a probability map?)' if probability else ''}; give a label map "
                                  f"(integers 0, 1, 2), e.g. the .labels.nii.gz that 'segment' writes")


# --------------------------------------------------------------------------------------------------
# Reports
# --------------------------------------------------------------------------------------------------


def json_ready(obj: Any) -> Any:
    """JSON-safe copy: NaN/inf → None (strict JSON has no NaN), numpy scalars → Python, paths → str."""
    if isinstance(obj, Mapping):
        return {str(k): json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_ready(v) for v in obj]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, Path):
        return str(obj)
    return obj


_TKEYS = [threshold_key(t) for t in DETECTION_THRESHOLDS]
_CSV_METRICS = (*OVERLAP_METRICS, "tp", "fp", "fn", "n_pred", "n_ref", *SURFACE_METRICS)
_CSV_LESION = ["lesions_ref", "lesions_pred"] + [f"lesion_{c}{k}" for k in _TKEYS for c in ("tp", "fn", "fp")]


def _csv_text(cases: Sequence[dict], failures: Sequence[dict]) -> str:
    """One row per case and structure with every metric; failed cases get a row with the error."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["case", "structure", *_CSV_METRICS, *_CSV_LESION, "prediction", "reference", "error"])
    def fmt(v: Any) -> Any:
        return "" if v is None or (isinstance(v, float) and math.isnan(v)) else v

    for case in cases:
        for name, m in case["structures"].items():
            lesion_cells = [""] * len(_CSV_LESION)
            if name == "tumor" and "lesions" in case:
                det = case["lesions"]
                lesion_cells = [det["n_ref"], det["n_pred"]] + [det[k][c] for k in _TKEYS for c in ("tp", "fn", "fp")]
            writer.writerow([case["case"], name, *(fmt(m[k]) for k in _CSV_METRICS), *lesion_cells,
                             case["prediction"], case["reference"], ""])
    for f in failures:
        writer.writerow([f["case"], "", *([""] * (len(_CSV_METRICS) + len(_CSV_LESION))),
                         f["prediction"], f["reference"], f["error"]])
    return buf.getvalue()


def _num(v: float | None, digits: int = 3) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def _mean_sd(s: dict, digits: int = 3) -> str:
    return "–" if s["n"] == 0 else f"{_num(s['mean'], digits)} ± {_num(s['sd'], digits)}"


def markdown_summary(agg: dict, failures: Sequence[dict] = ()) -> str:
    """The human-readable summary: per-structure table, lesion detection, recall by size, failures."""
    lines = [f"# Evaluation: {agg['n_cases']} case(s)" + (f", {len(failures)} failed" if failures else ""), ""]
    if agg["structures"]:
        lines += ["| structure | Dice per case | Dice global | ASSD (mm) | HD95 (mm) | MSD (mm) | VOE | RVD |"
                  " excluded (one mask empty) |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for name, s in agg["structures"].items():
            m = s["metrics"]
            lines.append(f"| {name} | {_mean_sd(m['dice'])} | {_num(s['dice_global'])} | {_mean_sd(m['assd'], 2)} | "
                         f"{_mean_sd(m['hd95'], 2)} | {_mean_sd(m['msd'], 2)} | {_mean_sd(m['voe'])} | "
                         f"{_mean_sd(m['rvd'])} | {m['assd']['n_excluded']} |")
        lines += ["", "Mean ± sample SD over cases (median in the JSON/CSV). RVD = (|P|−|G|)/|G|. Surface "
                  "distances are undefined (left out, counted under *excluded*) when exactly one mask is empty; "
                  "Dice of a case with both masks empty is 1."]
        empty = [f"{name}: {s['n_ref_empty']} reference-empty case(s), {s['n_false_positive_cases']} with a "
                 f"false-positive prediction, {s['n_missed_cases']} missed" for name, s in agg["structures"].items()
                 if s["n_ref_empty"] or s["n_missed_cases"]]
        if empty:
            lines += [""] + [f"- {e}" for e in empty]
    les = agg.get("lesions")
    if les:
        lines += ["", f"## Lesion detection ({les['n_ref']} reference, {les['n_pred']} predicted lesions)", "",
                  "| overlap | TP | FN | FP | precision | recall |", "| --- | --- | --- | --- | --- | --- |"]
        for k in _TKEYS:
            d = les[k]
            lines.append(f"| {k} | {d['tp']} | {d['fn']} | {d['fp']} | {_num(d['precision'])} | {_num(d['recall'])} |")
        lines += ["", "| size (equivalent diameter) | n | " + " | ".join(f"recall {k}" for k in _TKEYS) + " |",
                  "| --- | --- | " + " | ".join("---" for _ in _TKEYS) + " |"]
        ranges = {"small": "< 10 mm", "medium": "10–20 mm", "large": "> 20 mm"}
        for cls in SIZE_CLASSES:
            e = les["by_size"][cls]
            lines.append(f"| {cls} ({ranges[cls]}) | {e['n']} | "
                         + " | ".join(_num(e[k]["recall"]) for k in _TKEYS) + " |")
    if failures:
        lines += ["", "## Failed cases", ""] + [f"- {f['case']}: {f['error']}" for f in failures]
    return "\n".join(lines) + "\n"


def _per_case_markdown(cases: Sequence[dict]) -> str:
    if not cases:
        return ""
    names = list(cases[0]["structures"])
    head = ["case"] + [f"{n} {m}" for n in names for m in ("Dice", "ASSD", "HD95")]
    if any("lesions" in c for c in cases):
        head += ["lesions ref/pred", "detected >0", "detected >0.5"]
    lines = ["", "## Per case", "", "| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for c in cases:
        row = [c["case"]]
        for n in names:
            m = c["structures"].get(n)
            row += ["–"] * 3 if m is None else [_num(m["dice"]), _num(m["assd"], 2), _num(m["hd95"], 2)]
        if "lesions" in c:
            d = c["lesions"]
            row += [f"{d['n_ref']}/{d['n_pred']}"] + [str(d[k]["tp"]) for k in _TKEYS]
        elif len(head) > len(row):
            row += ["–"] * (len(head) - len(row))
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def report_paths(output: str | Path) -> dict[str, Path]:
    """``<output>.csv``, ``<output>.md``, ``<output>.json`` (``output`` is a prefix, not a folder)."""
    return {ext: Path(f"{output}.{ext}") for ext in ("csv", "md", "json")}


def evaluate_folders(pred_dir: str | Path, ref_dir: str | Path, output: str | Path | None,
                     structures: Mapping[str, Sequence[int]] | None = None, overwrite: bool = False,
                     progress: bool = True, groups: Mapping[str, str] | None = None) -> dict:
    """Evaluate every matched case, aggregate, and write ``<output>.csv/.md/.json`` (unless output is None).

    A case that cannot be evaluated (unreadable file, different grids, ...) is recorded in
    ``failures`` (case, prediction, reference, one-line error) and left out of the aggregate; the others
    still count. Existing reports are never replaced unless ``overwrite`` is true, and that is checked
    before any computation so that a long evaluation does not end in a refusal.

    ``groups`` (case id -> group, e.g. the data source) adds the same aggregate per group (``by_group``)
    and a row per group in the targets table.

    Returns :func:`summary.aggregate`'s dict plus ``by_group``, ``failures`` (list) and ``markdown`` (the
    summary text).
    The JSON report holds everything: inputs, structures, per-case metrics with per-lesion details,
    failures and the aggregate (NaN written as null).
    """
    from tqdm import tqdm

    from LiverTumorSegLib import __version__

    structures = dict(DEFAULT_STRUCTURES if structures is None else structures)
    paths = report_paths(output) if output is not None else {}
    existing = [str(p) for p in paths.values() if p.exists()]
    if existing and not overwrite:
        raise EvaluationError(f"report exists ({existing[0]}); pass --overwrite to replace it")
    pairs = match_cases(pred_dir, ref_dir)

    cases: list[dict] = []
    failures: list[dict] = []
    for cid, pred_path, ref_path in tqdm(pairs, desc="evaluate", unit="case", disable=not progress or len(pairs) < 2):
        try:
            result = case_metrics(read_label_map(pred_path), read_label_map(ref_path), structures)
        except LiverTumorSegError as e:
            reason = " ".join(str(e).split())
        except (RuntimeError, ValueError, MemoryError) as e:
            reason = f"{type(e).__name__}: {' '.join(str(e).split())}"
        else:
            cases.append({"case": cid, "prediction": str(pred_path), "reference": str(ref_path), **result})
            continue
        failures.append({"case": cid, "prediction": str(pred_path), "reference": str(ref_path), "error": reason})

    if failures and not cases:  # nothing to report: say why, and write nothing
        more = f" (and {len(failures) - 1} more case(s) failed)" if len(failures) > 1 else ""
        raise EvaluationError(f"{failures[0]['case']}: {failures[0]['error']}{more}")
    agg = aggregate(cases)
    by_group = aggregate_groups(cases, groups or {})
    summary = markdown_summary(agg, failures)
    if cases:
        summary += "\n## What users see\n\n" + targets_markdown({"all": agg, **by_group})
    if paths:
        report = {"livertumorseg_version": __version__, "prediction": str(pred_dir), "reference": str(ref_dir),
                  "structures": {k: list(v) for k, v in structures.items()},
                  "detection_thresholds": list(DETECTION_THRESHOLDS), "aggregate": agg, "by_group": by_group,
                  "cases": cases, "failures": failures}
        write_text_atomic(paths["csv"], _csv_text(cases, failures), overwrite)
        write_text_atomic(paths["md"], summary + _per_case_markdown(cases), overwrite)
        write_json_atomic(paths["json"], json_ready(report), overwrite=overwrite)
    return {**agg, "by_group": by_group, "failures": failures, "markdown": summary}


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------


def _structure(text: str) -> tuple[str, tuple[int, ...]]:
    name, sep, values = text.partition("=")
    try:
        parsed = tuple(int(v) for v in values.split(","))
    except ValueError:
        parsed = ()
    if not sep or not name or not parsed:
        raise argparse.ArgumentTypeError(f"expected NAME=V1[,V2...], e.g. liver=1,2 (got {text!r})")
    return name, parsed


def _read_groups(path: str) -> dict[str, str]:
    import json

    try:
        groups = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise EvaluationError(f"cannot read the groups file {path} ({e}); give a JSON object "
                              f"{{\"case id\": \"group\"}}") from None
    if not isinstance(groups, dict) or not all(isinstance(v, str) for v in groups.values()):
        raise EvaluationError(f"{path} must hold a JSON object mapping case ids to group names")
    return {str(k): v for k, v in groups.items()}


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Print the Markdown summary; exit 0, or 1 if any case failed or the input is bad (nothing to compare...)."""
    structures = dict(args.structure) if args.structure else None
    try:
        groups = _read_groups(args.groups) if args.groups else None
        result = evaluate_folders(args.pred, args.ref, args.output, structures=structures,
                                  overwrite=args.overwrite, progress=not args.quiet, groups=groups)
    except LiverTumorSegError as e:
        print_error(str(e))
        return 1
    sys.stdout.write(result["markdown"])
    for f in result["failures"]:
        print_error(f"{f['case']}: {f['error']}")
    return 1 if result["failures"] else 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add ``livertumorseg evaluate PRED REF [-o REPORT_PREFIX] [--overwrite]`` to a sub-command parser."""
    e = subparsers.add_parser("evaluate", help="compare predicted label maps with reference label maps",
                              description="Dice, surface distances and lesion detection of predictions "
                                          "against references (LiTS conventions, physical units).")
    e.add_argument("pred", metavar="PRED", help="predicted label map, or a folder of them")
    e.add_argument("ref", metavar="REF", help="reference label map, or a folder of them")
    e.add_argument("-o", "--output", metavar="REPORT_PREFIX", default=None,
                   help="write REPORT_PREFIX.csv, .md and .json")
    e.add_argument("--structure", type=_structure, action="append", metavar="NAME=V1[,V2...]",
                   help="structure to evaluate and its label values (repeatable; default liver=1,2 tumor=2; "
                        "lesion detection runs on the structure named 'tumor')")
    e.add_argument("--groups", metavar="FILE.json", default=None,
                   help="JSON object mapping case ids to groups (e.g. data sources): adds a summary row per group")
    e.add_argument("--overwrite", action="store_true", help="replace existing reports")
    e.add_argument("--quiet", action="store_true", help="no progress bar")
    e.set_defaults(func=cmd_evaluate)

"""``livertumorseg crossval``: k-fold patient-level cross-validation of a training recipe, end to end.

One split says little with 17 patients; reporting a recipe honestly means training k models, each
validated on patients it never saw, and pooling their per-case results. Each fold is an ordinary
training run (resumable: rerunning the command continues where it stopped), and every validation case
is segmented by its fold's model through the real pipeline and scored with the LiTS measures.
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

from LiverTumorSegLib.errors import LiverTumorSegError


def run_crossval(args: argparse.Namespace) -> dict:

    from LiverTumorSegLib.atomicfile import write_image_atomic
    from LiverTumorSegLib.modelfile import load_model
    from LiverTumorSegLib.pipeline import run_segmentation

    from .commands import config_from_args
    from .datasets import cases_by_id
    from .evaluate import evaluate_folders
    from .trainer import CHECKPOINT, MODEL, run_finished, train

    out = Path(args.output)
    folds = args.folds or 5
    if folds < 2:
        raise LiverTumorSegError("cross-validation needs --folds 2 or more")
    for k in range(folds):
        run = out / f"fold{k}"
        fold_args = copy.copy(args)
        fold_args.output, fold_args.folds, fold_args.fold = str(run), folds, k
        fold_args.resume = (run / CHECKPOINT).exists()
        cfg = config_from_args(fold_args)
        if run_finished(run, cfg.epochs):
            print(f"fold {k + 1}/{folds}: already trained ({run / MODEL})")
            continue
        print(f"fold {k + 1}/{folds}: training in {run}", flush=True)
        train(cfg, resume=fold_args.resume, progress=not args.quiet)

    cases, groups = cases_by_id(args.data, kind=args.kind or "auto")  # groups: a table per source
    preds, refs, probs = out / "predictions", out / "references", out / "probabilities"
    fold_of = {}
    for k in range(folds):
        model = load_model(out / f"fold{k}" / MODEL)
        lesion = next((lab for lab in model.config.labels if lab.role == "lesion"), None)
        for case_id in model.config.provenance.get("val_cases", []):
            fold_of[case_id] = k
            pred_path = preds / f"{case_id}.labels.nii.gz"
            prob_path = probs / f"{case_id}.nii.gz"
            if pred_path.exists() and (lesion is None or prob_path.exists()) and not args.overwrite:
                continue
            ct, ref = cases[case_id].load()
            result = run_segmentation(ct, model, device=args.device or "auto")
            if lesion is not None:  # the lesion probability: per-lesion confidence, calibrated below
                write_image_atomic(result.lesion_probability[lesion.name], prob_path, overwrite=True)
            write_image_atomic(result.labels, pred_path, overwrite=True)
            write_image_atomic(ref, refs / f"{case_id}.nii.gz", overwrite=True)
            print(f"fold {k + 1}: segmented {case_id}", flush=True)
    report = evaluate_folders(preds, refs, out / "crossval", overwrite=True, progress=not args.quiet, groups=groups)
    print(report["markdown"])
    if probs.is_dir():
        report["confidence"] = _calibrate_confidence(out, fold_of, groups, quiet=args.quiet)
    return report


def _calibrate_confidence(out: Path, fold_of: dict[str, int], groups: dict[str, str] | None, quiet: bool) -> dict:
    """The per-lesion keep rule (confidence and volume), nested (each fold's chosen on the others), with its own
    report."""
    import dataclasses

    import SimpleITK as sitk

    from LiverTumorSegLib.atomicfile import write_image_atomic, write_json_atomic

    from .confidence import apply_rule, best_rule, held_out_case, nested_rules
    from .evaluate import evaluate_folders

    def read(case_id: str, *folders: Path) -> list:
        names = [f"{case_id}.labels.nii.gz" if f.name == "predictions" else f"{case_id}.nii.gz" for f in folders]
        return [sitk.ReadImage(str(f / name)) for f, name in zip(folders, names)]

    preds, refs, probs = out / "predictions", out / "references", out / "probabilities"
    held_out = [held_out_case(c, fold_of[c], *read(c, preds, probs, refs)) for c in sorted(fold_of)]
    per_fold = nested_rules(held_out)
    chosen = {"nested_per_fold": {k: dataclasses.asdict(r) for k, r in per_fold.items()},
              "all_folds": dataclasses.asdict(best_rule(held_out))}
    filtered = out / "predictions_confidence"
    for case_id in sorted(fold_of):
        pred, prob = read(case_id, preds, probs)
        write_image_atomic(apply_rule(pred, prob, per_fold[fold_of[case_id]]),
                           filtered / f"{case_id}.labels.nii.gz", overwrite=True)
    report = evaluate_folders(filtered, refs, out / "crossval_confidence", overwrite=True, progress=not quiet,
                              groups=groups)
    write_json_atomic(out / "confidence.json", chosen, overwrite=True)
    print(f"per-lesion keep rule, chosen on the other folds: {chosen['nested_per_fold']}; on all folds: "
          f"{chosen['all_folds']}")
    print(report["markdown"])
    return chosen


def cmd_crossval(args: argparse.Namespace) -> int:
    report = run_crossval(args)
    return 1 if report.get("failures") else 0


def add_parser(sub) -> None:
    from .commands import add_train_arguments

    c = sub.add_parser("crossval", help="k-fold patient-level cross-validation of a training recipe "
                                        "(trains every fold, segments each held-out case, LiTS report)")
    add_train_arguments(c)
    c.set_defaults(func=cmd_crossval)

"""``livertumorseg compare``: the five published systems on the same patients, measured the same way.

Their papers report on different data, splits (often by slice, so one patient on both sides) and metrics, so
they cannot be ranked from the literature. Here every system trains with the same trainer on the same
patient-level fold, gets the same stated CPU budget, picks its best epoch on the same validation patients at the
same cadence, runs through the same pipeline, and is scored on the same held-out patients with the same 3-D
measures. Every run is resumable: rerunning the command continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from LiverTumorSegLib.errors import LiverTumorSegError


@dataclass(frozen=True)
class Stage:
    """One network of a system: its run folder, its preset (the authors' recipe) and what the CPU budget
    changes in it (widths, patch sizes, epochs x steps)."""

    run: str
    preset: str
    budget: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class System:
    key: str
    title: str
    stages: tuple[Stage, ...]
    links: tuple[str, ...] = ()  # ``livertumorseg cascade --link`` values, one between each pair of stages
    budget_note: str = ""


#: what every stage gets, whatever its system: the two sources' shared valid HU window (lits18 holds only
#: [-45, 160] HU), clipped before resampling, fast-cpu-mm's intensity augmentation, 1.5 mm in-plane
SHARED: dict[str, Any] = dict(window_hu=(-45.0, 160.0), window_before_resampling=True, intensity_shift=0.18,
                              spacing_mm=1.5)

#: about an hour of training each on 2 CPU cores (seconds per step measured on this machine: REC-UNet w16 batch 8
#: 0.75-1.0, CARes-UNet w16 batch 4 0.97, ResUNet w16 batch 8 1.7, RA-UNet 2-D f4 batch 8 at 256^2 1.5, 3-D f4
#: batch 2 at 32x160^2 6.3 and 32x128^2 4.0, U-Net-ResNet-34 batch 4 2.4)
SYSTEMS: tuple[System, ...] = (
    System("rec_unet", "REC-UNet", (Stage("model", "fast-cpu-mm"),),
           budget_note="width 16 (authors 64), 40 x 120 steps of 8 crops of 128^2"),
    System("cares_unet", "CARes-UNet", (Stage("model", "cares-unet", dict(
        base_width=16, crop=128, epochs=30, steps_per_epoch=120, val_every=10)),),
        budget_note="width 16 (authors 64), 30 x 120 steps of 4 crops of 128^2, supervised only"),
    System("resunet", "ResUNet cascade", (
        Stage("liver", "resunet-liver", dict(batch_size=8, crop=128, epochs=15, steps_per_epoch=70, val_every=5)),
        Stage("tumour", "resunet-tumor", dict(crop=128, epochs=15, steps_per_epoch=70, val_every=5))),
        links=("mask:10:mask-input",),
        budget_note="widths as the authors (16); 2 x 15 x 70 steps of 8 crops of 128^2 (authors: 256^2)"),
    System("raunet", "RA-UNet", (
        Stage("liver2d", "raunet-2d", dict(crop=256, epochs=20, steps_per_epoch=30, val_every=5)),
        Stage("liver3d", "raunet-3d-liver", dict(
            arch_args={"filter_num": 4, "norm_momentum": 0.1}, spacing_z_mm=2.5, patch_size=[32, 160, 160],
            epochs=12, steps_per_epoch=20, val_every=4)),
        Stage("tumour3d", "raunet-3d-tumor", dict(
            arch_args={"filter_num": 4, "norm_momentum": 0.1}, spacing_z_mm=2.5, patch_size=[32, 128, 128],
            batch_size=2, epochs=15, steps_per_epoch=20, val_every=5))),
        links=("box:10", "mask:10"),
        budget_note="2-D as the authors (filter_num 4) 20 x 30 steps of 8 slices of 256^2; 3-D filter_num 4 "
                    "(authors 8) at 1.5 x 1.5 x 2.5 mm, 12 x 20 steps of 2 liver patches 32x160^2 (authors "
                    "32x224^2 at 1 mm) and 15 x 20 of 2 tumour patches 32x128^2; batch-norm momentum 0.1 for so "
                    "few steps"),
    System("unet_resnet34", "U-Net, ResNet-34 encoder", (Stage("model", "unet-resnet34", dict(
        crop=128, epochs=25, steps_per_epoch=60, val_every=5)),),
        budget_note="full size, encoder from scratch (no ImageNet file offline), 25 x 60 steps of 4 crops of "
                    "128^2; liver only, as the authors"),
)

#: settings that name places or machines, not the recipe: a finished run is reused whatever they were
_NOT_RECIPE = ("output", "cache_dir", "device", "preset", "name", "description")


def stage_config(system: System, stage: Stage, data: list[str], out: Path, folds: int, fold: int,
                 extra: dict[str, Any] | None = None):
    from .config import PRESETS, TrainConfig

    values = {**PRESETS["fast-cpu"], **PRESETS[stage.preset], **SHARED, **stage.budget, **(extra or {}),
              "preset": stage.preset, "data": [str(d) for d in data], "output": str(out / system.key / stage.run),
              "folds": folds, "fold": fold, "name": f"{system.title} ({stage.run}, compare fold {fold})"}
    return TrainConfig(**values)


def _train_stage(cfg, quiet: bool) -> Path:
    from .checkpoint import load_checkpoint
    from .config import TrainConfig
    from .trainer import CHECKPOINT, MODEL, run_finished, train

    run = Path(cfg.output)
    resume = (run / CHECKPOINT).exists()
    if resume:
        saved = load_checkpoint(run / CHECKPOINT)
        old = {k: v for k, v in TrainConfig.from_dict(saved["config"]).to_dict().items() if k not in _NOT_RECIPE}
        new = {k: v for k, v in cfg.to_dict().items() if k not in _NOT_RECIPE}
        changed = sorted(k for k in new if json.dumps(new[k], default=str) != json.dumps(old.get(k), default=str))
        if changed:
            raise LiverTumorSegError(f"{run} holds a run of another recipe ({', '.join(changed)} differ); move it "
                                     f"away or give another -o")
        if run_finished(run, cfg.epochs):
            return run / MODEL
    print(f"training {run}", flush=True)
    return train(cfg, resume=resume, progress=not quiet).model_path


def _system_model(system: System, stage_paths: list[Path], out: Path) -> Path:
    import dataclasses

    from LiverTumorSegLib.modelfile import StageLink, cascade, load_model, save_model

    if len(stage_paths) == 1:
        return stage_paths[0]
    path = out / system.key / "model.pt"
    stages = [load_model(p) for p in stage_paths]
    model = cascade(stages, [StageLink.parse(text) for text in system.links])
    model.config = dataclasses.replace(model.config, name=system.title)
    save_model(model, path, overwrite=True)
    return path


def _train_minutes(stage_paths: list[Path]) -> float:
    total = 0.0
    for model_path in stage_paths:
        log = json.loads((model_path.parent / "log.json").read_text(encoding="utf-8"))
        total += sum(r.get("seconds", 0.0) + r.get("val_seconds", 0.0) for r in log)
    return total / 60.0


def run_compare(data: list[str], out: Path, systems: tuple[System, ...] = SYSTEMS, folds: int = 3, fold: int = 0,
                device: str = "auto", extra: dict[str, Any] | None = None, quiet: bool = False) -> dict:
    """Train (or resume) every stage of every system on the same fold, segment the fold's held-out cases with each
    system and write ``OUTDIR/compare.md|.json``: one row per system."""
    from LiverTumorSegLib.atomicfile import write_image_atomic, write_json_atomic, write_text_atomic
    from LiverTumorSegLib.environment import hardware_line
    from LiverTumorSegLib.modelfile import load_model
    from LiverTumorSegLib.pipeline import run_segmentation

    from .datasets import cases_by_id
    from .evaluate import evaluate_folders, json_ready

    cases, groups = cases_by_id(data)
    refs = out / "references"
    rows, val_ids = [], None
    for system in systems:
        stage_paths = [_train_stage(stage_config(system, s, data, out, folds, fold, extra), quiet)
                       for s in system.stages]
        model_path = _system_model(system, stage_paths, out)
        model = load_model(model_path, device="cpu")
        first_stage = (model.stages_before or [model])[0]  # a cascade's stages share the split; the first says it
        ids = list(first_stage.config.provenance.get("val_cases", []))
        if val_ids is None:
            val_ids = ids
        elif ids != val_ids:
            raise LiverTumorSegError(f"{system.title} was validated on other cases than the systems before it; "
                                     f"every system must train on the same split")
        preds, seconds = out / system.key / "predictions", []
        for case_id in val_ids:
            target = preds / f"{case_id}.labels.nii.gz"
            ct, ref = cases[case_id].load()
            start = time.perf_counter()
            result = run_segmentation(ct, model, device=device)
            seconds.append(time.perf_counter() - start)
            write_image_atomic(result.labels, target, overwrite=True)
            if not (refs / f"{case_id}.nii.gz").exists():
                write_image_atomic(ref, refs / f"{case_id}.nii.gz", overwrite=True)
            if not quiet:
                print(f"{system.title}: segmented {case_id} in {seconds[-1]:.1f} s", flush=True)
        report = evaluate_folders(preds, refs, out / system.key / "report", overwrite=True, progress=False,
                                  groups=groups)
        networks = [model.network] + [s.network for s in model.stages_before]
        rows.append({"system": system.title, "key": system.key, "budget": system.budget_note,
                     "stages": [s.run for s in system.stages],
                     "labels": [lab.name for lab in model.output_labels],
                     "parameters": int(sum(p.numel() for n in networks for p in n.parameters())),
                     "train_minutes": _train_minutes(stage_paths),
                     "seconds_per_ct": sum(seconds) / len(seconds) if seconds else float("nan"),
                     "aggregate": {k: v for k, v in report.items() if k not in ("markdown", "failures")},
                     "failures": report["failures"]})
    table = compare_markdown(rows, val_ids or [], fold, folds, hardware_line(device))
    write_text_atomic(out / "compare.md", table, overwrite=True)
    write_json_atomic(out / "compare.json", json_ready({"fold": fold, "folds": folds, "val_cases": val_ids,
                                                        "systems": rows}), overwrite=True)
    print(table)
    return {"rows": rows, "markdown": table}


def _num(v: Any, digits: int = 3) -> str:
    import math

    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def compare_markdown(rows: list[dict], val_ids: list[str], fold: int, folds: int, hardware: str = "") -> str:
    """One row per system: liver and tumour Dice per case and global, lesion recall, false lesions per scan,
    seconds per CT, parameters, training minutes."""
    from .metrics import DETECTION_THRESHOLDS, threshold_key

    key = threshold_key(DETECTION_THRESHOLDS[0])
    head = ["system", "parameters", "training, min", "s per CT", "liver Dice per case", "liver Dice global",
            "liver Dice min", "tumour Dice per case (with tumour)", "tumour Dice global", "lesion recall",
            "recall ≥ 10 mm", "false lesions per scan, mean"]
    lines = [f"Fold {fold} of {folds} (patient-level), {len(val_ids)} held-out scans; {hardware}.", "",
             "| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in rows:
        agg = r["aggregate"]
        liver, tumour = agg["structures"].get("liver", {}), agg["structures"].get("tumor", {})
        has_tumour = "Tumor" in r["labels"]
        les = agg.get("lesions", {}) if has_tumour else {}
        dash = "– (liver only)"
        lines.append("| " + " | ".join([
            r["system"], f"{r['parameters']:,}", _num(r["train_minutes"], 0), _num(r["seconds_per_ct"], 1),
            _num(liver.get("dice_per_case")), _num(liver.get("dice_global")),
            _num(liver.get("metrics", {}).get("dice", {}).get("min")),
            _num(tumour.get("dice_per_case_with_ref")) if has_tumour else dash,
            _num(tumour.get("dice_global")) if has_tumour else dash,
            _num(les.get(key, {}).get("recall")) if has_tumour else dash,
            _num(les.get("recall_10mm_plus", {}).get(key)) if has_tumour else dash,
            _num(les.get("false_per_scan", {}).get("mean"), 1) if has_tumour else dash]) + " |")
    lines += ["", "Budgets: " + "; ".join(f"{r['system']}: {r['budget']}" for r in rows if r["budget"]) + "."]
    return "\n".join(lines) + "\n"


def cmd_compare(args: argparse.Namespace) -> int:
    wanted = [k for k in (args.systems or "").split(",") if k]
    known = {s.key: s for s in SYSTEMS}
    unknown = [k for k in wanted if k not in known]
    if unknown:
        raise LiverTumorSegError(f"unknown system {unknown[0]!r}; choose from {', '.join(known)}")
    systems = tuple(known[k] for k in wanted) if wanted else SYSTEMS
    extra = {"cache_dir": args.cache_dir} if args.cache_dir else None
    report = run_compare([str(d) for d in args.data], Path(args.output), systems, args.folds, args.fold,
                         args.device, extra, args.quiet)
    return 1 if any(r["failures"] for r in report["rows"]) else 0


def add_parser(sub) -> None:
    c = sub.add_parser("compare", help="train every published system on the same patient-level fold with a stated "
                                       "CPU budget and write one table of patient-level results")
    c.add_argument("data", nargs="+", metavar="DATA", help="labelled dataset folders (as for train)")
    c.add_argument("-o", "--output", required=True, metavar="OUTDIR")
    c.add_argument("--systems", default=None, metavar="KEY,...",
                   help=f"a subset ({', '.join(s.key for s in SYSTEMS)}; default all)")
    c.add_argument("--folds", type=int, default=3, help="k of the patient-level split (default 3)")
    c.add_argument("--fold", type=int, default=0, help="the held-out fold (default 0)")
    c.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    c.add_argument("--cache-dir", default=None)
    c.add_argument("--quiet", action="store_true")
    c.set_defaults(func=cmd_compare)

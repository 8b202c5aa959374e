"""``livertumorseg demo``: the whole loop on a fresh machine in a few minutes, no downloads.

Generates phantom CTs with exact ground truth, trains a small REC-UNet on them, segments an unseen
phantom through the real pipeline, and reports Dice, lesions and a QC picture. It proves on any
machine that data reading, training, the model file, inference and the outputs fit together, and
shows a new user every artefact the tool produces. CTs the user passes are segmented too (with the
shipped real-CT model when it is installed, else with the phantom-trained demo model).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

#: targets on the unseen phantom (the issue's acceptance numbers)
TARGET_LIVER, TARGET_TUMOR = 0.95, 0.80


def _phantom_set(folder: Path, overwrite: bool) -> dict[str, list[str]]:
    """Training + validation phantoms in ``folder/trainval``, the unseen test phantom in ``folder/test``."""
    from LiverTumorSegLib.atomicfile import write_image_atomic
    from LiverTumorSegLib.phantom import make_phantom

    rng = np.random.default_rng(2026)
    orientations = ["LPS", "RAS", "LPI", "RAI"]
    roles = {"train": list(range(14)), "val": [100, 101], "test": [200]}
    names: dict[str, list[str]] = {k: [] for k in roles}
    for role, seeds in roles.items():
        for seed in seeds:
            name = f"{role}{seed:03d}"
            names[role].append(name)
            where = folder / ("test" if role == "test" else "trainval")
            if (where / f"{name}.nii.gz").exists() and (where / f"{name}_truth.nii.gz").exists():
                continue
            shape = (int(rng.integers(36, 52)), int(rng.integers(136, 176)), int(rng.integers(136, 176)))
            spacing = (float(rng.uniform(2.5, 3.5)), float(rng.uniform(1.6, 2.2)), 0.0)
            spacing = (spacing[0], spacing[1], spacing[1])
            kwargs = {"lesion_diameters_mm": (12.0, 20.0, 32.0)} if role == "test" else \
                {"n_lesions": int(rng.integers(1, 5))}
            ct, labels = make_phantom(shape_zyx=shape, spacing_zyx=spacing, seed=seed,
                                      orientation=orientations[seed % len(orientations)], **kwargs)
            write_image_atomic(ct, where / f"{name}.nii.gz", overwrite=overwrite)
            write_image_atomic(labels, where / f"{name}_truth.nii.gz", overwrite=overwrite)
    return names


def _segment_and_report(image, model, out: Path, case_id: str, truth=None, device: str = "auto",
                        overwrite: bool = True) -> dict:
    """Segment through the pipeline and write label map, .seg.nrrd, report and QC PNG, like the CLI."""
    import SimpleITK as sitk

    from LiverTumorSegLib.atomicfile import write_image_atomic, write_json_atomic
    from LiverTumorSegLib.cli import case_report, output_paths
    from LiverTumorSegLib.pipeline import run_segmentation
    from LiverTumorSegLib.segfile import write_seg_nrrd

    from .metrics import overlap
    from .plots import qc_slices

    result = run_segmentation(image, model, device=device)
    paths = output_paths(out, case_id)
    write_image_atomic(result.labels, paths["labels"], overwrite=overwrite)
    write_seg_nrrd(result.labels, model.output_labels, paths["segmentation"], overwrite=overwrite)
    report = case_report(result, case_id, case_id, paths)
    if truth is not None:
        pred, ref = sitk.GetArrayViewFromImage(result.labels), sitk.GetArrayViewFromImage(truth)
        report["dice"] = {"liver": overlap(pred > 0, ref > 0)["dice"], "tumor": overlap(pred == 2, ref == 2)["dice"]}
    qc = out / f"{case_id}.qc.png"
    qc_slices(image, result.labels, qc, truth=truth, overwrite=overwrite,
              title=f"{case_id}: prediction (solid) vs truth (dashed)" if truth is not None else case_id)
    report["outputs"]["qc"] = str(qc)
    write_json_atomic(paths["report"], report, overwrite=overwrite)
    return report


def _print_report(report: dict) -> None:
    line = f"{report['case']}: liver {report.get('organ_volume_ml', 0):.0f} mL, {report.get('lesion_count', 0)} " \
           f"lesion(s), tumour {report.get('lesion_volume_ml', 0):.1f} mL " \
           f"({report.get('lesion_burden_percent', 0):.1f} % burden), {report['run']['seconds']['total']:.1f} s"
    print(line)
    for lesion in report.get("lesions", []):
        print(f"    lesion {lesion['id']}: {lesion['volume_ml']:.2f} mL, longest axial diameter "
              f"{lesion['longest_axial_diameter_mm']:.1f} mm")
    if "dice" in report:
        print(f"    Dice vs truth: liver {report['dice']['liver']:.3f}, tumour {report['dice']['tumor']:.3f}")


def run_demo(output: str | Path = "demo-output", inputs: list[str] | None = None, device: str = "auto",
             retrain: bool = False, quiet: bool = False) -> int:
    import SimpleITK as sitk

    from LiverTumorSegLib.cli import default_model_path
    from LiverTumorSegLib.imageio import discover_cases, read_case
    from LiverTumorSegLib.modelfile import load_model

    from .config import PRESETS, TrainConfig
    from .trainer import MODEL, train

    out = Path(output)
    data, run, results = out / "phantoms", out / "run", out / "results"
    t0 = time.perf_counter()
    print(f"1/3 generating phantom CTs with ground truth in {data}")
    names = _phantom_set(data, overwrite=False)
    if retrain or not (run / MODEL).exists():
        print(f"2/3 training a small REC-UNet on {len(names['train'])} phantoms "
              f"(validation: {', '.join(names['val'])}) in {run}")
        values = dict(PRESETS["demo"], preset="demo", data=[str(data / "trainval")], output=str(run), device=device,
                      val_cases=names["val"], cache_dir=str(out / "cache"), name="LiverTumorSeg demo (phantoms only)")
        train(TrainConfig(**values), overwrite=True, progress=not quiet)
    else:
        print(f"2/3 using the model trained earlier in {run} (pass --retrain to train again)")
    model = load_model(run / MODEL)
    print(f"3/3 segmenting the unseen phantom {names['test'][0]} through the inference pipeline")
    test = names["test"][0]
    ct = sitk.ReadImage(str(data / "test" / f"{test}.nii.gz"))
    truth = sitk.ReadImage(str(data / "test" / f"{test}_truth.nii.gz"))
    report = _segment_and_report(ct, model, results, test, truth=truth, device=device)
    _print_report(report)
    ok = report["dice"]["liver"] >= TARGET_LIVER and report["dice"]["tumor"] >= TARGET_TUMOR
    shipped = default_model_path()
    if shipped is not None and shipped.exists():
        real = load_model(shipped)
        print(f"shipped real-CT model {shipped.name}: on the phantom")
        _print_report(_segment_and_report(ct, real, results / "shipped", test, truth=truth, device=device))
    for case in discover_cases(inputs or []):
        image = read_case(case).image
        use = load_model(shipped) if shipped is not None and shipped.exists() else model
        print(f"{case.case_id}: segmenting with {use.config.name}")
        _print_report(_segment_and_report(image, use, results / "inputs", case.case_id, device=device))
    print(f"outputs in {results} (label maps, .seg.nrrd for Slicer, reports, QC PNGs); "
          f"learning curves in {run / 'curves.png'}; {time.perf_counter() - t0:.0f} s in all")
    verdict = "PASS" if ok else "FAIL"
    print(f"{verdict}: unseen phantom liver Dice {report['dice']['liver']:.3f} (target {TARGET_LIVER}), "
          f"tumour Dice {report['dice']['tumor']:.3f} (target {TARGET_TUMOR})")
    (out / "demo_summary.json").write_text(json.dumps({"dice": report["dice"], "pass": ok}, indent=1), encoding="utf-8")
    return 0 if ok else 1


def cmd_demo(args: argparse.Namespace) -> int:
    return run_demo(args.output, args.inputs, args.device, args.retrain, args.quiet)


def add_parser(sub) -> None:
    d = sub.add_parser("demo", help="train on phantoms and segment an unseen one (and any CT you pass)")
    d.add_argument("inputs", nargs="*", metavar="CT", help="your own CT files or DICOM folders to segment too")
    d.add_argument("-o", "--output", default="demo-output", metavar="OUTDIR")
    d.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    d.add_argument("--retrain", action="store_true", help="train again even if a demo model exists")
    d.add_argument("--quiet", action="store_true")
    d.set_defaults(func=cmd_demo)

"""Writing training data as a LiTS- or MSD-style folder (``livertumorseg export``, Slicer "export for training").

Whatever the source (Slicer scenes, IRCADb DICOM, phantoms), other tools (nnU-Net, MONAI, the
REC-UNet authors' scripts) and this project's own readers understand these two layouts, so exporting
to them makes a dataset portable. ``cases.json`` keeps the original case ids (file names become
indices) and the label names, which the LiTS layout otherwise cannot say.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import SimpleITK as sitk

from LiverTumorSegLib.atomicfile import ensure_output_folder, write_image_atomic, write_json_atomic
from LiverTumorSegLib.errors import LiverTumorSegError
from LiverTumorSegLib.geometry import grid_difference

from .datasets import KINDS, LabeledCase, find_cases

LAYOUTS = ("lits", "msd")


def _prefix(name: str) -> str:
    """MSD file prefix from a dataset name ("LiverTumorSeg export" → "livertumorseg_export")."""
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_") or "case"


def _paths(out: Path, layout: str, prefix: str, index: int) -> tuple[Path, Path]:
    if layout == "lits":
        return out / f"volume-{index}.nii.gz", out / f"segmentation-{index}.nii.gz"
    return out / "imagesTr" / f"{prefix}_{index}.nii.gz", out / "labelsTr" / f"{prefix}_{index}.nii.gz"


def _stale_files(out: Path, written: set[Path], layout: str) -> list[Path]:
    """Image files (and a ``dataset.json``) of an earlier export in ``out`` that this one did not write.

    Left in place they would be read as cases of this export (LiTS ``volume-N`` beyond the new count) or
    make the folder look like the other layout (an old ``dataset.json`` beside a new LiTS export).
    """
    found = [out / n for n in os.listdir(out) if re.match(r"^(?:volume|segmentation)-\d+\.nii\.gz$", n)]
    for sub in ("imagesTr", "labelsTr"):
        if (out / sub).is_dir():
            found += [out / sub / n for n in os.listdir(out / sub) if re.match(r"^.+_\d+\.nii\.gz$", n)]
    if layout == "lits" and (out / "dataset.json").is_file():
        found.append(out / "dataset.json")
    return sorted(p for p in found if p not in written)


def _prepared(case_id: str, ct: sitk.Image, labels: sitk.Image, n_labels: int) -> tuple[sitk.Image, sitk.Image]:
    """CT as int16 HU (rounded) and labels as uint8 on the CT's grid, after checking both."""
    if ct.GetDimension() != 3 or ct.GetNumberOfComponentsPerPixel() != 1:
        raise LiverTumorSegError(f"case {case_id}: the CT is not a 3-D scalar image")
    diff = grid_difference(ct, labels)
    if diff is not None:
        raise LiverTumorSegError(f"case {case_id}: the label map is not on the CT grid (CT vs labels: {diff}); "
                                 f"resample it onto the CT first")
    array = sitk.GetArrayViewFromImage(ct)
    if array.dtype != np.int16:
        if not np.issubdtype(array.dtype, np.integer):
            if not np.isfinite(array).all():
                raise LiverTumorSegError(f"case {case_id}: the CT contains NaN or infinite values")
            array = np.rint(array)
        if array.size and (array.min() < -32768 or array.max() > 32767):
            raise LiverTumorSegError(f"case {case_id}: CT values {array.min()}..{array.max()} do not fit int16 HU")
        out = sitk.GetImageFromArray(array.astype(np.int16))
        out.CopyInformation(ct)
        ct = out
    lab = sitk.GetArrayViewFromImage(labels)
    if lab.size and (lab.min() < 0 or lab.max() > n_labels or
                     (not np.issubdtype(lab.dtype, np.integer) and not np.array_equal(lab, np.rint(lab)))):
        raise LiverTumorSegError(f"case {case_id}: label values span {float(lab.min()):g}..{float(lab.max()):g}; "
                                 f"expected whole numbers 0..{n_labels}, one per label name")
    out = sitk.GetImageFromArray(lab.astype(np.uint8))
    out.CopyInformation(ct)  # float noise in the label header is dropped
    return ct, out


def _check_target(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise LiverTumorSegError(f"export folder {out} is a file; choose a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise LiverTumorSegError(f"export folder {out} is not empty; choose a new folder or pass --overwrite "
                                 f"(overwrite=True) to replace the export there")


def export_dataset(items: Iterable[tuple[str, sitk.Image, sitk.Image]], out_dir: str | os.PathLike,
                   layout: str = "lits", label_names: tuple[str, ...] = ("liver", "tumor"),
                   name: str = "LiverTumorSeg export", overwrite: bool = False) -> Path:
    """Write (case_id, ct, labels) items as a LiTS or MSD folder; returns the folder.

    ``layout="lits"``: ``volume-<i>.nii.gz`` + ``segmentation-<i>.nii.gz``; ``layout="msd"``:
    ``imagesTr/<name>_<i>.nii.gz`` + ``labelsTr/<name>_<i>.nii.gz`` + ``dataset.json``; both with
    ``cases.json`` ({"cases": {i: original id}, "label_names": [...]}), ``i`` in input order. CT is
    int16 (HU rounded), labels uint8. Items are consumed one at a time (a generator keeps one case in
    memory). Every file is written atomically and the index files last, so an interrupted export has
    no ``cases.json``/``dataset.json``.

    A non-empty ``out_dir`` is refused unless ``overwrite``; then files are replaced, and the image
    files of an earlier export that this one did not replace (and, for LiTS, an old ``dataset.json``)
    are removed, so that a reader cannot mix the two exports. Nothing else in the folder is touched.
    """
    if layout not in LAYOUTS:
        raise LiverTumorSegError(f"unknown export layout {layout!r}; use one of {', '.join(LAYOUTS)}")
    label_names = tuple(str(n).lower() for n in label_names)
    if not label_names or len(set(label_names)) != len(label_names) or len(label_names) > 255:
        raise LiverTumorSegError(f"label names must be 1..255 distinct names, not {label_names}")
    out = Path(out_dir)
    _check_target(out, overwrite)
    ensure_output_folder(out)
    prefix = _prefix(name)
    ids: list[str] = []
    written: set[Path] = set()
    for index, (case_id, ct, labels) in enumerate(items):
        case_id = str(case_id)
        if case_id in ids:
            raise LiverTumorSegError(f"case id {case_id!r} occurs twice in the export; case ids must be unique")
        ct, labels = _prepared(case_id, ct, labels, len(label_names))
        image_path, label_path = _paths(out, layout, prefix, index)
        write_image_atomic(ct, image_path, overwrite=overwrite)
        write_image_atomic(labels, label_path, overwrite=overwrite)
        ids.append(case_id)
        written.update((image_path, label_path))
    if not ids:
        raise LiverTumorSegError("nothing to export: no cases were given")
    if overwrite:
        for stale in _stale_files(out, written, layout):
            stale.unlink()
        for sub in ("imagesTr", "labelsTr"):
            with contextlib.suppress(OSError):
                (out / sub).rmdir()  # only if now empty
    write_json_atomic(out / "cases.json", {"layout": layout, "label_names": list(label_names),
                                           "cases": {str(i): case_id for i, case_id in enumerate(ids)}},
                      overwrite=overwrite)
    if layout == "msd":
        training = [{"image": f"./imagesTr/{prefix}_{i}.nii.gz", "label": f"./labelsTr/{prefix}_{i}.nii.gz"}
                    for i in range(len(ids))]
        write_json_atomic(out / "dataset.json", {
            "name": name,
            "description": f"{name}: CT with {', '.join(label_names)} labels, exported by LiverTumorSeg",
            "reference": "see cases.json for the original case ids",
            "licence": "that of the source data",
            "release": "",
            "tensorImageSize": "3D",
            "modality": {"0": "CT"},
            "labels": {"0": "background", **{str(i + 1): n for i, n in enumerate(label_names)}},
            "numTraining": len(ids),
            "numTest": 0,
            "training": training,
            "test": [],
        }, overwrite=overwrite)
    return out


def export_cases(cases: Iterable[LabeledCase], out_dir: str | os.PathLike, layout: str = "lits",
                 overwrite: bool = False, name: str = "LiverTumorSeg export",
                 progress: Callable[[int, int], object] | None = None) -> Path:
    """Load labelled cases one by one and export them (``progress(done, total)`` after each)."""
    cases = list(cases)
    unlabelled = [c.case_id for c in cases if c.label_path is None]
    if unlabelled:
        raise LiverTumorSegError(f"cases without labels cannot be exported for training: {unlabelled[:5]}")
    label_sets = sorted({c.label_names for c in cases})
    if len(label_sets) > 1:
        raise LiverTumorSegError(f"cases have different label sets {label_sets}; export each set separately")

    def items() -> Iterator[tuple[str, sitk.Image, sitk.Image]]:
        for done, case in enumerate(cases):
            ct, labels = case.load()
            yield case.case_id, ct, labels
            if progress is not None:
                progress(done + 1, len(cases))

    return export_dataset(items(), out_dir, layout=layout, label_names=label_sets[0] if label_sets else (),
                          name=name, overwrite=overwrite)


def cmd_export(args: argparse.Namespace) -> int:
    """``livertumorseg export``: find the cases of a dataset folder and write them as LiTS or MSD."""
    from tqdm import tqdm

    source, target = Path(args.input).resolve(), Path(args.output).resolve()
    if target == source or source in target.parents:
        raise LiverTumorSegError(f"the export folder {args.output} lies inside the dataset {args.input}; "
                                 f"export to a folder outside it")
    cases = find_cases(args.input, kind=args.kind)
    _check_target(Path(args.output), args.overwrite)  # before the progress bar: a refusal is one line
    with tqdm(total=len(cases), desc="export", unit="case", disable=args.quiet) as bar:
        out = export_cases(cases, args.output, layout=args.layout, overwrite=args.overwrite, name=args.name,
                           progress=lambda done, total: bar.update(done - bar.n))
    if not args.quiet:
        print(f"exported {len(cases)} {cases[0].kind} case(s) ({', '.join(cases[0].label_names)}) "
              f"to {out} ({args.layout} layout)")
    return 0


def add_parser(subparsers) -> None:
    """Add ``export INPUT -o OUTDIR [--layout] [--kind] [--name] [--overwrite] [--quiet]`` to the CLI."""
    p = subparsers.add_parser("export", help="write a labelled dataset folder as LiTS or MSD training data")
    p.add_argument("input", metavar="INPUT", help="dataset folder (LiTS, MSD, 3D-IRCADb, npz, Slicer, phantoms)")
    p.add_argument("-o", "--output", required=True, metavar="OUTDIR")
    p.add_argument("--layout", default="lits", choices=LAYOUTS)
    p.add_argument("--kind", default="auto", choices=("auto", *KINDS), help="dataset layout of INPUT")
    p.add_argument("--name", default="LiverTumorSeg export", help="dataset name (MSD file prefix)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing export in OUTDIR")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_export)

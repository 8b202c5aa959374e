"""Peak memory and time of the whole segmentation pipeline on a long CT (default 512 x 512 x 1000 int16).

Why: a thin-slice or whole-body CT has ~1000 slices; a pipeline that made float32 copies per stage would
need several GB and fail on a laptop. This runs every stage the CLI runs (read, segment = validate +
reorient + resample + infer + post-process, write NIfTI, write .seg.nrrd, report) on a phantom CT and
prints each stage's peak resident memory (Linux: VmHWM, reset per stage) next to the volume sizes.

Two networks, neither trained (this measures the pipeline, not a model):
- ``intensity`` (default): a fixed liver/lesion HU-band detector, so masks and post-processing look
  like a real liver segmentation;
- ``random``: a random REC-UNet, the pathological case where a class can cover the whole volume.

    python benchmarks/pipeline_memory.py [--slices 1000] [--orientation RAS] [--model intensity|random]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import SimpleITK as sitk
import torch
from rss import peak_mib, reset_peak
from torch import nn

from LiverTumorSegLib.atomicfile import write_image_atomic
from LiverTumorSegLib.labels import LIVER, TUMOR
from LiverTumorSegLib.modelfile import ModelConfig, SegmentationModel, new_model
from LiverTumorSegLib.phantom import make_phantom
from LiverTumorSegLib.pipeline import run_segmentation
from LiverTumorSegLib.report import lesion_report
from LiverTumorSegLib.segfile import write_seg_nrrd


class IntensityBands(nn.Module):
    """Logits that are positive inside HU bands (window [-200, 200] -> [-1, 1]), smoothed 5x5."""

    def __init__(self, bands_hu=((80.0, 140.0), (15.0, 65.0))):
        super().__init__()
        self.register_buffer("centre", torch.tensor([(a + b) / 400 for a, b in bands_hu]).view(1, -1, 1, 1))
        self.register_buffer("half_width", torch.tensor([(b - a) / 400 for a, b in bands_hu]).view(1, -1, 1, 1))

    def forward(self, x):
        score = 40 * (self.half_width - (x[:, x.shape[1] // 2:][:, :1] - self.centre).abs()) / self.half_width
        return nn.functional.avg_pool2d(score, 5, stride=1, padding=2)


def stage(name: str, fn, rows: list):
    reset_peak()
    t = time.perf_counter()
    result = fn()
    rows.append((name, time.perf_counter() - t, peak_mib()))
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--slices", type=int, default=1000)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--orientation", default="RAS", help="orientation of the test CT (exercises reorientation)")
    p.add_argument("--model", choices=["intensity", "random"], default="intensity")
    p.add_argument("--spacing-model", type=float, default=0.0, help="model in-plane spacing in mm (0: native)")
    p.add_argument("--workdir", default=None)
    args = p.parse_args()

    work = Path(args.workdir or tempfile.mkdtemp(prefix="lts-bench-"))
    ct_path = work / f"ct_{args.size}x{args.slices}_{args.orientation}.nii.gz"
    if not ct_path.exists():
        ct, _ = make_phantom(shape_zyx=(args.slices, args.size, args.size), spacing_zyx=(1.0, 0.8, 0.8), seed=0,
                             orientation=args.orientation, n_lesions=4)
        write_image_atomic(ct, ct_path)
        del ct
    spacing = (args.spacing_model,) * 2 if args.spacing_model > 0 else None
    if args.model == "intensity":
        cfg = ModelConfig("intensity_bands", {}, (LIVER, TUMOR), spacing_yx_mm=spacing)
        model = SegmentationModel(IntensityBands(), cfg)
    else:
        cfg = ModelConfig("rec_unet", {"in_channels": 3, "out_channels": 2, "base_width": 4}, (LIVER, TUMOR),
                          context_slices=1, spacing_yx_mm=spacing)
        model = new_model(cfg)

    rows: list = []
    start = peak_mib()
    image = stage("read CT (.nii.gz)", lambda: sitk.ReadImage(str(ct_path)), rows)
    result = stage("segment (validate..post-process)", lambda: run_segmentation(image, model, device="cpu"), rows)
    out = work / "out"
    stage("write labels .nii.gz", lambda: write_image_atomic(result.labels, out / "ct.labels.nii.gz",
                                                             overwrite=True), rows)
    stage("write .seg.nrrd", lambda: write_seg_nrrd(result.labels, cfg.labels, out / "ct.seg.nrrd",
                                                    overwrite=True), rows)
    report = stage("lesion report", lambda: lesion_report(result.labels), rows)

    voxels = args.slices * args.size * args.size
    print(f"CT {args.size}x{args.size}x{args.slices} int16 ({args.orientation}), {args.model} model, "
          f"spacing {'native' if spacing is None else spacing}, {torch.get_num_threads()} threads")
    print(f"input int16 {voxels * 2 / 2**20:.0f} MiB; label map uint8 {voxels / 2**20:.0f} MiB; "
          f"one float32 copy would be {voxels * 4 / 2**20:.0f} MiB; libraries loaded {start:.0f} MiB")
    print(f"{'stage':36s} {'seconds':>8s} {'peak RSS MiB':>13s}")
    for name, seconds, peak in rows:
        print(f"{name:36s} {seconds:8.1f} {peak:13.0f}")
    print(f"pipeline stages: {result.summary()['seconds']}")
    print(f"overall peak RSS {max(r[2] for r in rows):.0f} MiB (masks of an untrained detector: "
          f"organ {report['organ_volume_ml']:.0f} mL, {report['lesion_count']} lesions)")


if __name__ == "__main__":
    main()

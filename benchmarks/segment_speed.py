"""How fast is a whole CT, and what does the fast path cost in accuracy?

Runs, in one process, on the same synthetic 512 x 512 x 300 CT (0.8 x 0.8 x 1.0 mm) whose liver spans ~150 slices:

  (a) the REC-UNet authors' way: full width (64), whole 512² slices, fp32, one slice at a time, on the liver
      slices (timed on --authors-slices slices and extrapolated: the per-slice cost is constant);
  (b) our pipeline's slow path: the default model on every whole slice, fp32, no localiser;
  (c) our default path: the same model with its localiser stage (coarse-to-fine), default precision and batch;

and prints seconds, slices/s, peak RSS of each, Dice of (c) against (b) and against the phantom's truth, and the
ratios a/c and b/c. With a CUDA GPU it also runs (b) and (c) there.

Weights: (b) and (c) use the same trained weights. Without --model, a phantom-trained model and localiser are
trained once into --workdir (about 15 minutes on 2 CPU cores) with the fast-cpu recipe's architecture, so that
Dice(c vs b) compares real segmentations. The authors' network (a) has random weights: only its time matters.

    python benchmarks/segment_speed.py [--model FILE_WITH_LOCALISER] [--workdir DIR] [--authors-slices 6]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from rss import peak_mib, reset_peak

from LiverTumorSegLib.atomicfile import write_image_atomic
from LiverTumorSegLib.environment import environment_info, hardware_line
from LiverTumorSegLib.modelfile import attach_localizer, load_model, save_model
from LiverTumorSegLib.models import build_model
from LiverTumorSegLib.phantom import make_phantom
from LiverTumorSegLib.pipeline import run_segmentation


def dice(a: np.ndarray, b: np.ndarray) -> float:
    s = int(a.sum()) + int(b.sum())
    return 1.0 if s == 0 else 2.0 * float(np.logical_and(a, b).sum()) / s


def benchmark_ct(work: Path):
    ct_path, truth_path = work / "bench_ct.nii.gz", work / "bench_truth.nii.gz"
    if not ct_path.exists():
        ct, truth = make_phantom(shape_zyx=(300, 512, 512), spacing_zyx=(1.0, 0.8, 0.8), seed=4242,
                                 liver_slice_fraction=(0.25, 0.75), lesion_diameters_mm=(8.0, 15.0, 25.0, 40.0))
        write_image_atomic(truth, truth_path, overwrite=True)
        write_image_atomic(ct, ct_path, overwrite=True)
    return sitk.ReadImage(str(ct_path)), sitk.ReadImage(str(truth_path))


def train_models(work: Path) -> Path:
    """A phantom-trained default-architecture model plus a localiser, attached (done once per workdir)."""
    from LiverTumorSegTrainLib.config import PRESETS, TrainConfig
    from LiverTumorSegTrainLib.trainer import train

    out = work / "model_with_localizer.pt"
    if out.exists():
        return out
    data = work / "train_phantoms"
    data.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    for seed in range(24):
        if (data / f"t{seed}_truth.nii.gz").exists():
            continue
        shape = (int(rng.integers(70, 110)), int(rng.integers(224, 288)), int(rng.integers(224, 288)))
        spacing = (float(rng.uniform(1.5, 3.0)), float(rng.uniform(1.4, 1.8)), 0.0)
        ct, labels = make_phantom(shape_zyx=shape, spacing_zyx=(spacing[0], spacing[1], spacing[1]), seed=seed,
                                  orientation=["LPS", "RAS"][seed % 2], n_lesions=int(rng.integers(1, 5)))
        write_image_atomic(ct, data / f"t{seed}.nii.gz", overwrite=True)
        write_image_atomic(labels, data / f"t{seed}_truth.nii.gz", overwrite=True)
    common = dict(data=[str(data)], device="auto", val_cases=["t22", "t23"], cache_dir=str(work / "cache"))
    fine = TrainConfig(**{**PRESETS["fast-cpu"], **common, "output": str(work / "fine"), "epochs": 16,
                          "steps_per_epoch": 50, "val_every": 4, "tumor_fraction": 0.5, "preset": "fast-cpu"})
    loc = TrainConfig(**{**PRESETS["fast-cpu"], **PRESETS["localizer"], **common, "output": str(work / "loc"),
                         "preset": "localizer"})
    fine_result = train(fine, overwrite=True)
    loc_result = train(loc, overwrite=True)
    save_model(attach_localizer(load_model(fine_result.model_path), load_model(loc_result.model_path)), out,
               overwrite=True)
    return out


def authors_way(ct, liver_slices: np.ndarray, n: int) -> dict:
    """Full-width REC-UNet on whole 512² slices, fp32, batch 1, the authors' [-200, 200]/200 window."""
    net = build_model("rec_unet", in_channels=1, out_channels=2, base_width=64).eval()
    array = sitk.GetArrayViewFromImage(ct)
    picks = liver_slices[np.linspace(0, len(liver_slices) - 1, n).astype(int)]
    reset_peak()
    with torch.no_grad():
        net(torch.zeros(1, 1, 512, 512))  # warm-up, not timed
        t = time.perf_counter()
        for z in picks:
            x = torch.from_numpy(np.clip(array[z].astype(np.float32), -200, 200) / 200)[None, None]
            torch.sigmoid(net(x))
        per_slice = (time.perf_counter() - t) / n
    return {"per_slice_s": per_slice, "seconds": per_slice * len(liver_slices), "slices": len(liver_slices),
            "timed_slices": n, "peak_rss_mib": peak_mib()}


def our_way(ct, model, device: str, use_localizer: bool, precision: str = "auto") -> dict:
    reset_peak()
    t = time.perf_counter()
    result = run_segmentation(ct, model, device=device, use_localizer=use_localizer, precision=precision)
    seconds = time.perf_counter() - t
    region = result.plan.region
    slices = ct.GetSize()[2] if region is None else region["slices"][1] - region["slices"][0]
    return {"seconds": seconds, "slices_run": slices, "slices_per_s": ct.GetSize()[2] / seconds,
            "stage_seconds": {k: round(v, 2) for k, v in result.seconds.items()}, "plan": result.summary(),
            "peak_rss_mib": peak_mib(), "labels": sitk.GetArrayFromImage(result.labels)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="model file with a localiser stage (default: train on phantoms)")
    p.add_argument("--workdir", default="benchmark-work")
    p.add_argument("--authors-slices", type=int, default=6, help="slices timed for (a) (0: skip (a))")
    p.add_argument("--json", default=None, help="also write the numbers to this JSON file")
    args = p.parse_args()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    ct, truth = benchmark_ct(work)
    t = sitk.GetArrayViewFromImage(truth)
    liver_slices = np.flatnonzero(t.any(axis=(1, 2)))
    model = load_model(args.model or train_models(work))
    if model.localizer is None:
        raise SystemExit("the model has no localiser stage; attach one with livertumorseg attach-localizer")
    print(f"CPU: {hardware_line('cpu')}")
    print(f"CT 512x512x{ct.GetSize()[2]}, liver on {len(liver_slices)} slices; model {model.config.name}: "
          f"{model.config.architecture} {model.config.architecture_kwargs}, {model.config.spacing_yx_mm} mm; "
          f"localiser {model.localizer.config.architecture_kwargs}, {model.localizer.config.spacing_yx_mm} mm")
    results = {}
    if args.authors_slices:
        results["a"] = authors_way(ct, liver_slices, args.authors_slices)
    results["b"] = our_way(ct, model, "cpu", use_localizer=False, precision="fp32")
    results["c"] = our_way(ct, model, "cpu", use_localizer=True)
    b, c = results["b"].pop("labels"), results["c"].pop("labels")
    quality = {"dice_c_vs_b": {"liver": dice(c > 0, b > 0), "tumor": dice(c == 2, b == 2)},
               "dice_b_vs_truth": {"liver": dice(b > 0, t > 0), "tumor": dice(b == 2, t == 2)},
               "dice_c_vs_truth": {"liver": dice(c > 0, t > 0), "tumor": dice(c == 2, t == 2)}}
    if torch.cuda.is_available():
        for key, loc in (("b_cuda", False), ("c_cuda", True)):
            our_way(ct, model, "cuda", use_localizer=loc)  # warm-up (cuDNN autotuning, allocator)
            results[key] = our_way(ct, model, "cuda", use_localizer=loc)
            results[key].pop("labels")
    print(f"{'path':44s} {'seconds':>9s} {'slices/s':>9s} {'peak RSS MiB':>13s}")
    if "a" in results:
        a = results["a"]
        print(f"{'(a) authors: w64, 512², fp32, 1 slice/batch':44s} {a['seconds']:9.1f} {1 / a['per_slice_s']:9.2f} "
              f"{a['peak_rss_mib']:13.0f}   ({a['per_slice_s']:.2f} s/slice x {a['slices']} liver slices, "
              f"timed on {a['timed_slices']})")
    for key, name in (("b", "(b) ours, slow path: every whole slice, fp32"), ("c", "(c) ours, default path"),
                      ("b_cuda", "(b) on CUDA"), ("c_cuda", "(c) on CUDA")):
        if key in results:
            r = results[key]
            print(f"{name:44s} {r['seconds']:9.1f} {r['slices_per_s']:9.2f} {r['peak_rss_mib']:13.0f}   "
                  f"stages {r['stage_seconds']}, ran {r['slices_run']} slices, {r['plan']['precision']}, "
                  f"batch {r['plan']['batch_size']}")
    if "a" in results:
        print(f"a/c = {results['a']['seconds'] / results['c']['seconds']:.1f}x   "
              f"b/c = {results['b']['seconds'] / results['c']['seconds']:.1f}x")
    print("Dice (c) vs (b): liver {liver:.4f}, tumour {tumor:.4f}".format(**quality["dice_c_vs_b"]))
    print("Dice vs phantom truth: (b) liver {:.4f} tumour {:.4f}; (c) liver {:.4f} tumour {:.4f}".format(
        quality["dice_b_vs_truth"]["liver"], quality["dice_b_vs_truth"]["tumor"],
        quality["dice_c_vs_truth"]["liver"], quality["dice_c_vs_truth"]["tumor"]))
    if args.json:
        record = {"results": results, "quality": quality, "environment": environment_info()}
        Path(args.json).write_text(json.dumps(record, indent=1, default=str), encoding="utf-8")


if __name__ == "__main__":
    main()

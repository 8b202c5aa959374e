"""The training loop: seeded sampling, AMP/DDP, exact resume, and the best epoch kept as a model file.

Which patients validate and how an epoch is judged (3-D Dice through the real pipeline) is ``selection``.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import io
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from LiverTumorSegLib.atomicfile import ensure_output_folder, write_json_atomic, write_text_atomic
from LiverTumorSegLib.errors import LiverTumorSegError
from LiverTumorSegLib.modelfile import ModelConfig, SegmentationModel, save_model
from LiverTumorSegLib.models import build_model

from .augment import augment, augment_intensity
from .batches import build_batch, build_patches, epoch_samples
from .cache import CachedCase, prepare_cases
from .checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from .config import TrainConfig, label_specs
from .losses import loss_function
from .optim import make_optimizer, make_scheduler
from .selection import (
    _val_metrics,
    calibrate_thresholds,
    check_window_inside_valid_hu,
    split_cases,
    validate,
)

CHECKPOINT = "checkpoint.pt"
MODEL = "model.pt"


@dataclass
class TrainResult:
    model_path: Path
    history: list[dict[str, Any]]
    best_score: float | None


@dataclass
class _Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()


def _init_distributed(device_kind: str) -> _Dist:
    """torchrun sets WORLD_SIZE/RANK/LOCAL_RANK; gloo on CPU (tests, 2-process CPU runs), NCCL on GPUs."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return _Dist()
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend="nccl" if device_kind == "cuda" else "gloo")
    return _Dist(torch.distributed.get_rank(), torch.distributed.get_world_size(),
                 int(os.environ.get("LOCAL_RANK", "0")))


def _write_logs(out: Path, history: list[dict[str, Any]]) -> None:
    rows = [{k: v for k, v in h.items() if not isinstance(v, dict)} for h in history]
    keys = sorted({k for r in rows for k in r}, key=lambda k: (k != "epoch", k))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys)
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(out / "log.csv", buf.getvalue(), overwrite=True)
    write_json_atomic(out / "log.json", history, overwrite=True)
    from .plots import learning_curves

    learning_curves(history, out / "curves.png")


class Trainer:
    def __init__(self, cfg: TrainConfig, resume: bool = False, overwrite: bool = False, progress: bool = True):
        self.cfg, self.resume, self.progress = cfg, resume, progress
        self.out = Path(cfg.output)
        if not resume and (self.out / CHECKPOINT).exists() and not overwrite:
            raise LiverTumorSegError(f"{self.out} already holds a training run; pass --resume to continue it "
                                     f"or --overwrite to start over")

    def _load_data(self, dist: _Dist):
        from .datasets import find_cases

        cfg = self.cfg
        labelled = [c for root in cfg.data for c in find_cases(root, kind=cfg.kind)]
        if not labelled:
            raise LiverTumorSegError(f"no labelled cases found in {', '.join(cfg.data)}")
        names = {c.label_names for c in labelled}
        if len(names) > 1:
            raise LiverTumorSegError(f"the datasets use different labels {sorted(names)}; train on one label set")
        label_names = labelled[0].label_names
        ids = [c.case_id for c in labelled]
        if len(set(ids)) != len(ids):
            raise LiverTumorSegError("case ids repeat across the datasets; give each dataset distinct case names")
        train_ids, val_ids = split_cases(ids, cfg, {c.case_id: c.patient_group for c in labelled})
        check_window_inside_valid_hu(cfg.window_hu, labelled)
        data_specs = label_specs(label_names)
        lesion_values = tuple(s.value for s in data_specs if s.role == "lesion")
        specs = data_specs
        if cfg.labels:
            wanted = {n.lower() for n in cfg.labels}
            specs = tuple(s for s in data_specs if s.name.lower() in wanted)
            if len(specs) != len(wanted):
                raise LiverTumorSegError(f"--labels {','.join(cfg.labels)}: the data's labels are "
                                         f"{', '.join(label_names)}")
        self.lesion_values = lesion_values
        by_id = {c.case_id: c for c in labelled}
        pseudo = [c for root in cfg.pseudo for c in find_cases(root, kind="auto")]
        check_window_inside_valid_hu(cfg.window_hu, pseudo)
        clip = cfg.window_hu if cfg.window_before_resampling else None
        region = None
        if cfg.stage_margin_mm is not None:
            from .stage_regions import StageRegion

            region = StageRegion(cfg.stage_margin_mm, cfg.stage_mask_input, cfg.window_hu[0], cfg.stage_liver_model)
        # rank 0 preprocesses first; the others then open the same cache
        for turn in ([0, 1] if dist.world > 1 else [0]):
            if (turn == 0) == dist.main:
                cached = prepare_cases([by_id[i] for i in train_ids], cfg.cache_dir, cfg.spacing_mm, lesion_values,
                                       progress=self.progress and dist.main, clip_hu=clip,
                                       spacing_z_mm=cfg.spacing_z_mm, region=region)
                self.n_labelled = len(cached)  # the pseudo-labelled cases follow (``epoch_samples``)
                cached += prepare_cases(pseudo, cfg.cache_dir, cfg.spacing_mm, lesion_values, weight=cfg.pseudo_weight,
                                        progress=self.progress and dist.main, clip_hu=clip,
                                        spacing_z_mm=cfg.spacing_z_mm, region=region)
            dist.barrier()
        val_data = []
        if dist.main:
            for i in val_ids:
                ct, ref = by_id[i].load()
                if region is not None:  # a later stage is validated on what it sees at inference
                    from .stage_regions import crop_case_to_region

                    cropped = crop_case_to_region(ct, ref, region)
                    if cropped is None:
                        continue
                    ct, ref = cropped
                val_data.append((i, ct, ref))
        return specs, cached, train_ids, val_ids, val_data

    def run(self) -> TrainResult:
        cfg = self.cfg
        from LiverTumorSegLib.environment import resolve_device

        device = resolve_device(cfg.device)
        dist = _init_distributed(device.type)
        if dist.world > 1 and device.type == "cuda":
            device = torch.device("cuda", dist.local_rank)
            torch.cuda.set_device(device)
        try:
            return self._run(device, dist)
        finally:
            if dist.world > 1:
                torch.distributed.destroy_process_group()

    def _run(self, device: torch.device, dist: _Dist) -> TrainResult:
        cfg = self.cfg
        torch.manual_seed(cfg.seed)
        np.random.seed(cfg.seed)
        if dist.main:
            ensure_output_folder(self.out)
        specs, cases, train_ids, val_ids, val_data = self._load_data(dist)
        model_cfg, net = self._model(specs, train_ids, val_ids)
        net = net.to(device)
        multiple = model_cfg.size_multiple
        if cfg.channels_last:
            net = net.to(memory_format=torch.channels_last)
        optimizer = make_optimizer(cfg, net.parameters())
        scheduler = make_scheduler(cfg, optimizer)
        amp_dtype = None
        if cfg.amp and device.type == "cuda":
            amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
        start_epoch, best, history = 0, None, []
        if self.resume:
            ckpt = load_checkpoint(self.out / CHECKPOINT)
            net.load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
            scheduler.load_state_dict(ckpt["scheduler"])
            scaler.load_state_dict(ckpt["scaler"])
            start_epoch, best, history = ckpt["epoch"] + 1, ckpt["best_score"], ckpt["history"]
            set_rng_state(ckpt["rng"][dist.rank] if dist.rank < len(ckpt["rng"]) else ckpt["rng"][0])
        train_net = net
        if dist.world > 1:
            train_net = torch.nn.parallel.DistributedDataParallel(
                net, device_ids=[device.index] if device.type == "cuda" else None)
        if cfg.compile:
            train_net = torch.compile(train_net)
        loss_fn = loss_function(cfg.loss, cfg.activation)
        steps = cfg.steps_per_epoch or max(1, sum(len(c.organ_slices) for c in cases) // (cfg.batch_size * dist.world))
        from tqdm import tqdm

        for epoch in range(start_epoch, cfg.epochs):
            t0 = time.perf_counter()
            net.train()
            samples = epoch_samples(cases, steps * cfg.batch_size * dist.world, epoch, cfg.seed,
                                    cfg.tumor_fraction, cfg.background_fraction, cfg.pseudo_fraction,
                                    self.n_labelled)
            if dist.world > 1:  # each process its own disjoint share of the epoch's (already shuffled) samples
                shard = torch.utils.data.DistributedSampler(samples, num_replicas=dist.world, rank=dist.rank,
                                                            shuffle=False, drop_last=True)
                samples = [samples[i] for i in shard]
            losses = []
            bar = tqdm(range(steps), desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="step", leave=False,
                       disable=not (self.progress and dist.main))
            for step in bar:
                batch = samples[step * cfg.batch_size:(step + 1) * cfg.batch_size]
                x, y, w = self._inputs(cases, batch, specs, multiple, epoch, net_cfg=model_cfg)
                x, y, w = x.to(device), y.to(device), w.to(device)
                if cfg.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                optimizer.zero_grad(set_to_none=True)
                ctx = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else contextlib.nullcontext()
                with ctx:
                    logits = train_net(x)
                loss = (loss_fn(logits.float(), y) * w).sum() / w.sum()
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                losses.append(float(loss.detach()))
                bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}")
            lr = optimizer.param_groups[0]["lr"]
            scheduler.step()
            seconds = time.perf_counter() - t0
            record: dict[str, Any] = {"epoch": epoch + 1, "train_loss": float(np.mean(losses)), "lr": lr,
                                      "seconds": round(seconds, 2),
                                      "slices_per_s": round(steps * cfg.batch_size * dist.world / seconds, 2)}
            if dist.main:
                model = SegmentationModel(copy.deepcopy(net).eval(), copy.deepcopy(model_cfg))
                last = epoch + 1 == cfg.epochs
                if val_data and ((epoch + 1) % max(1, cfg.val_every) == 0 or last):
                    t1 = time.perf_counter()
                    result = validate(model, val_data, str(device), lesion_values=self.lesion_values,
                                      lesion_floor=cfg.lesion_score_floor)
                    record.update(_val_metrics(result))
                    record["val_seconds"] = round(time.perf_counter() - t1, 2)
                    if best is None or result["score"] > best:
                        best = result["score"]
                        self._save_model(model, record, epoch)
                elif not val_data:
                    self._save_model(model, record, epoch)
                history.append(record)
                save_checkpoint(self.out / CHECKPOINT, {
                    "model": net.state_dict(), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                    "rng": self._gather_rng(dist), "epoch": epoch, "best_score": best, "history": history,
                    "config": cfg.to_dict()})
                _write_logs(self.out, history)
                if self.progress:
                    print(_epoch_line(record, cfg.epochs), flush=True)
            else:
                self._gather_rng(dist)
            dist.barrier()
        if dist.main and val_data and cfg.calibrate_thresholds and start_epoch < cfg.epochs:
            self._calibrate(val_data, str(device))
        return TrainResult(self.out / MODEL, history, best)

    def _calibrate(self, val_data, device: str) -> None:
        from LiverTumorSegLib.modelfile import load_model

        model = load_model(self.out / MODEL)
        floor = self.cfg.lesion_score_floor
        baseline = validate(model, val_data, device, lesion_values=self.lesion_values, lesion_floor=floor)
        result = calibrate_thresholds(model, val_data, device, baseline, lesion_values=self.lesion_values,
                                      lesion_floor=floor)
        if model.config.thresholds != load_model(self.out / MODEL).config.thresholds:
            model.config.metrics.update(_val_metrics(result), uncalibrated_val_dice=baseline["dice"],
                                        uncalibrated_val_global_dice=baseline["global_dice"])
            save_model(model, self.out / MODEL, overwrite=True)
        if self.progress:
            chosen = ", ".join(f"{s.name} {t:g}" for s, t in zip(model.config.labels, model.config.thresholds))
            dice = ", ".join(f"{k} {v:.3f}" for k, v in result["dice"].items())
            print(f"thresholds {chosen}: validation Dice {dice}", flush=True)

    def _model(self, specs, train_ids: list[str], val_ids: list[str]):
        """The network and its model-file description. The network declares what input it needs
        (``input_contract``) and that goes into the file; architecture arguments are the data's channel counts,
        the base width where the architecture has one, and ``--arch-arg`` values."""
        from LiverTumorSegLib.models import input_contract
        from LiverTumorSegLib.models.registry import accepted_arguments

        cfg = self.cfg
        try:
            accepted = accepted_arguments(cfg.architecture)
        except KeyError as e:
            raise LiverTumorSegError(f"{e.args[0]}; choose --arch from those") from None
        kwargs: dict[str, Any] = {"in_channels": 2 * cfg.context_slices + 1,
                                  "out_channels": len(specs) + (1 if cfg.activation == "softmax" else 0)}
        if "base_width" in accepted:
            kwargs["base_width"] = cfg.base_width
        unknown = sorted(set(cfg.arch_args) - accepted)
        if unknown:
            raise LiverTumorSegError(f"architecture {cfg.architecture} has no argument(s) {', '.join(unknown)}; it "
                                     f"takes {', '.join(sorted(accepted))}")
        kwargs.update(cfg.arch_args)
        try:
            net = build_model(cfg.architecture, **kwargs)
        except (TypeError, ValueError) as e:
            raise LiverTumorSegError(f"cannot build {cfg.architecture} with {kwargs}: {e}; fix --arch-arg") from None
        # arguments that only initialise (pretrained encoder files) are not stored: the model file has the weights
        for name in getattr(net, "init_only_arguments", ()):
            kwargs.pop(name, None)
        contract = input_contract(net)
        three_d = contract["spatial_dims"] == 3
        if three_d and (cfg.patch_size is None or any(p % contract["size_multiple"] for p in cfg.patch_size)):
            raise LiverTumorSegError(f"a 3-D network needs --patch-size Z Y X in multiples of "
                                     f"{contract['size_multiple']}")
        if not three_d and cfg.crop is not None and cfg.crop % contract["size_multiple"]:
            raise LiverTumorSegError(f"--crop {cfg.crop} is not a multiple of {contract['size_multiple']}, which "
                                     f"{cfg.architecture} needs; use e.g. --crop "
                                     f"{-(-cfg.crop // contract['size_multiple']) * contract['size_multiple']}")
        model_cfg = ModelConfig(
            architecture=cfg.architecture, architecture_kwargs=kwargs, labels=specs,
            output_activation=cfg.activation, window_hu=cfg.window_hu, context_slices=cfg.context_slices,
            context_step_mm=None if three_d else cfg.context_step_mm,
            window_before_resampling=cfg.window_before_resampling,
            spacing_yx_mm=None if cfg.spacing_mm is None else (cfg.spacing_mm, cfg.spacing_mm),
            size_multiple=contract["size_multiple"], spatial_dims=contract["spatial_dims"],
            inferer="sliding_window" if three_d else "slices",
            patch_size=tuple(cfg.patch_size) if three_d else None, spacing_z_mm=cfg.spacing_z_mm if three_d else None,
            name=cfg.name, description=cfg.description,
            provenance={"trainer": "LiverTumorSeg", "config": cfg.to_dict(), "train_cases": train_ids,
                        "val_cases": val_ids})
        return model_cfg, net

    def _inputs(self, cases: list[CachedCase], batch, specs, multiple, epoch, net_cfg: ModelConfig):
        from LiverTumorSegLib.inference import normalize_hu

        cfg = self.cfg
        seeds = [(cfg.seed, epoch, s.index) for s in batch]
        if net_cfg.spatial_dims == 3:
            hu, y, w = build_patches(cases, batch, specs, tuple(cfg.patch_size), epoch, cfg.seed, self.lesion_values,
                                     cfg.activation)
            x = normalize_hu(hu, net_cfg.window_hu)
            if cfg.augment:
                x = augment_intensity(x, seeds, cfg.intensity_shift, cfg.intensity_scale)
            return x, y, w
        hu, y, w = build_batch(cases, batch, specs, cfg.context_slices, cfg.crop, multiple, epoch, cfg.seed,
                               self.lesion_values, cfg.context_step_mm, cfg.activation)
        x = normalize_hu(hu, net_cfg.window_hu)
        if cfg.augment:
            x, y = augment(x, y, seeds, cfg.intensity_shift, cfg.intensity_scale)
        return x, y, w

    @staticmethod
    def _gather_rng(dist: _Dist) -> list[dict[str, Any]]:
        """Every rank's RNG state, so a resumed DDP run restores each process's own stream."""
        state = rng_state()
        if dist.world == 1:
            return [state]
        gathered: list[Any] = [None] * dist.world
        torch.distributed.all_gather_object(gathered, state)
        return gathered

    def _save_model(self, model: SegmentationModel, record: dict[str, Any], epoch: int) -> None:
        model.config.metrics = {k: v for k, v in record.items() if k.startswith("val_") or k == "epoch"}
        model.config.provenance = dict(model.config.provenance, epoch=epoch + 1,
                                       saved=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        save_model(model, self.out / MODEL, overwrite=True)


def _epoch_line(record: dict[str, Any], epochs: int) -> str:
    parts = [f"epoch {record['epoch']}/{epochs}", f"loss {record['train_loss']:.4f}", f"lr {record['lr']:.2e}",
             f"{record['slices_per_s']:.1f} slices/s"]
    parts += [f"{k[9:]} Dice {v:.3f}" for k, v in record.items() if k.startswith("val_dice_")]
    parts += [f"{k[16:]} global {v:.3f}" for k, v in record.items() if k.startswith("val_global_dice_")]
    return "  ".join(parts)


def run_finished(run: Path, epochs: int) -> bool:
    """Whether ``run`` holds a model file and a checkpoint of its last epoch: rerunning crossval or compare then
    trains nothing there."""
    from .checkpoint import load_checkpoint

    if not (run / CHECKPOINT).exists() or not (run / MODEL).exists():
        return False
    return load_checkpoint(run / CHECKPOINT)["epoch"] + 1 >= epochs


def train(cfg: TrainConfig, resume: bool = False, overwrite: bool = False, progress: bool = True) -> TrainResult:
    """Train (or resume) a model as configured; returns where the model file is and the history."""
    if not math.isfinite(cfg.lr) or cfg.lr <= 0:
        raise LiverTumorSegError("learning rate must be a positive number")
    return Trainer(cfg, resume=resume, overwrite=overwrite, progress=progress).run()

"""Which slices a training epoch sees, and how they become input/target tensors.

Every sample is a pure function of (seed, epoch, sample index): the epoch's slice list, each crop and
each augmentation are drawn from generators seeded with those numbers. So a run resumed from a
checkpoint, or split across DDP processes, sees exactly the samples an uninterrupted run sees.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from LiverTumorSegLib.context import context_positions, context_step_slices, read_context
from LiverTumorSegLib.labels import LabelSpec

from .cache import CachedCase

AIR_HU = -1024


@dataclass(frozen=True)
class Sample:
    case: int
    z: int
    index: int  # position in the epoch, for per-sample random streams


def epoch_samples(cases: list[CachedCase], n: int, epoch: int, seed: int, tumor_fraction: float,
                  background_fraction: float, pseudo_fraction: float | None = None,
                  n_labelled: int | None = None) -> list[Sample]:
    """``n`` slices for one epoch: tumour slices oversampled, some liver-free slices for negatives.

    Cases are drawn uniformly (a 250-slice scan does not count more than an 80-slice one); pseudo-
    labelled cases are down-weighted in the loss. With ``pseudo_fraction`` that share of the samples comes
    from the pseudo-labelled cases (``cases[n_labelled:]``) and the rest from the labelled ones, whatever
    their numbers: CARes-UNet's 1:1 batches keep 100 labelled slices from drowning among 1,600 pseudo ones.
    """
    rng = np.random.default_rng([seed, epoch, 0x5A])
    everyone = list(range(len(cases)))
    groups = [everyone]
    if pseudo_fraction is not None and n_labelled is not None and 0 < n_labelled < len(cases):
        groups = [everyone[:n_labelled], everyone[n_labelled:]]
    tumour_bearing = [[i for i in g if cases[i].lesion_slices.size] for g in groups]
    samples = []
    for index in range(n):
        g = 0 if len(groups) == 1 else int(rng.random() < pseudo_fraction)
        members, with_tumor = groups[g], tumour_bearing[g]
        u = rng.random()
        if u < tumor_fraction and with_tumor:
            ci = with_tumor[rng.integers(len(with_tumor))]
            pool = cases[ci].lesion_slices
        else:
            ci = members[int(rng.integers(len(members)))]
            case = cases[ci]
            background = u >= 1 - background_fraction or case.organ_slices.size == 0
            pool = np.arange(case.image.shape[0]) if background else case.organ_slices
        samples.append(Sample(int(ci), int(pool[rng.integers(len(pool))]), index))
    return samples


def channel_targets(labels: np.ndarray, specs: tuple[LabelSpec, ...],
                    lesion_values: tuple[int, ...] | None = None) -> np.ndarray:
    """Label values -> one binary target per model channel (sigmoid models).

    An organ channel includes the lesions inside it (tumour is liver tissue: the authors' nested
    [liver ⊇ tumour] channels); every other channel is its own label value only.
    """
    if lesion_values is None:  # a liver-only model trained on liver+tumour data passes the data's lesion values
        lesion_values = tuple(s.value for s in specs if s.role == "lesion")
    lesion_values = list(lesion_values)
    out = np.empty((len(specs),) + labels.shape, dtype=np.float32)
    for c, spec in enumerate(specs):
        values = [spec.value] + (lesion_values if spec.role == "organ" else [])
        out[c] = np.isin(labels, values)
    return out


def class_targets(labels: np.ndarray, specs: tuple[LabelSpec, ...],
                  lesion_values: tuple[int, ...] | None = None) -> np.ndarray:
    """Label values -> one-hot targets of a softmax head: channel 0 background, channel i+1 label i.

    Classes are exclusive: where labels nest (tumour inside liver) the later label wins, as the pipeline paints
    them; an organ whose lesions are not among the model's labels includes them (a liver-only model).
    """
    if lesion_values is None:
        lesion_values = tuple(s.value for s in specs if s.role == "lesion")
    own = {s.value for s in specs}
    index = np.zeros(labels.shape, dtype=np.int64)
    for c, spec in enumerate(specs, start=1):
        values = [spec.value] + ([v for v in lesion_values if v not in own] if spec.role == "organ" else [])
        index[np.isin(labels, values)] = c
    return (index[None] == np.arange(len(specs) + 1).reshape((-1,) + (1,) * labels.ndim)).astype(np.float32)


def targets_for(labels: np.ndarray, specs: tuple[LabelSpec, ...], lesion_values: tuple[int, ...] | None,
                activation: str) -> np.ndarray:
    return class_targets(labels, specs, lesion_values) if activation == "softmax" else \
        channel_targets(labels, specs, lesion_values)


def _crop_origin(case: CachedCase, z: int, crop: int, rng: np.random.Generator) -> tuple[int, int]:
    """Top-left corner of a crop that contains a random foreground point when there is one."""
    h, w = case.image.shape[1:]
    fg = np.argwhere(case.labels[z] > 0)
    if fg.size:
        cy, cx = fg[rng.integers(len(fg))]
        cy += rng.integers(-crop // 4, crop // 4 + 1)
        cx += rng.integers(-crop // 4, crop // 4 + 1)
    else:
        cy, cx = rng.integers(h), rng.integers(w)
    return int(cy) - crop // 2, int(cx) - crop // 2


def _window(array: np.ndarray, zs: np.ndarray, y0: int, x0: int, size: tuple[int, int], fill) -> np.ndarray:
    """array[zs, y0:y0+h, x0:x0+w] with out-of-range parts filled (crops may overhang the slice)."""
    h, w = size
    out = np.full((len(zs), h, w), fill, dtype=array.dtype)
    ys, xs = max(0, y0), max(0, x0)
    ye, xe = min(array.shape[1], y0 + h), min(array.shape[2], x0 + w)
    if ye > ys and xe > xs:
        out[:, ys - y0:ye - y0, xs - x0:xe - x0] = array[zs, ys:ye, xs:xe]
    return out


def build_batch(cases: list[CachedCase], samples: list[Sample], specs: tuple[LabelSpec, ...], context: int,
                crop: int | None, multiple: int, epoch: int, seed: int, lesion_values: tuple[int, ...] | None = None,
                context_step_mm: float | None = None, activation: str = "sigmoid"):
    """(HU slices, targets, weights) tensors for a batch: (B, 2k+1, S, S), (B, C, S, S), (B,).

    The context channels come from the pipeline's own ``read_context`` (neighbours ``context_step_mm``
    apart, interpolated; whole slices when None), so training sees what inference will feed."""
    import torch

    if crop is None:  # whole slices, padded to a common size (a multiple of the network's)
        h = max(cases[s.case].image.shape[1] for s in samples)
        w = max(cases[s.case].image.shape[2] for s in samples)
        size = (-(-h // multiple) * multiple, -(-w // multiple) * multiple)
    else:
        size = (crop, crop)
    images, targets, weights = [], [], []
    for s in samples:
        case = cases[s.case]
        rng = np.random.default_rng([seed, epoch, s.index, 0xC0])
        y0, x0 = _crop_origin(case, s.z, crop, rng) if crop is not None else (0, 0)
        n = case.image.shape[0]
        positions = context_positions(np.array([s.z]), context, context_step_slices(context_step_mm,
                                                                                    case.spacing_zyx[0]), n)[0]
        images.append(read_context(lambda zs: _window(case.image, zs, y0, x0, size, AIR_HU), positions, n))
        targets.append(targets_for(_window(case.labels, np.array([s.z]), y0, x0, size, 0)[0], specs, lesion_values,
                                   activation))
        weights.append(case.weight)
    return (torch.from_numpy(np.stack(images)), torch.from_numpy(np.stack(targets)),
            torch.tensor(weights, dtype=torch.float32))


def build_patches(cases: list[CachedCase], samples: list[Sample], specs: tuple[LabelSpec, ...],
                  patch: tuple[int, int, int], epoch: int, seed: int, lesion_values: tuple[int, ...] | None = None,
                  activation: str = "sigmoid"):
    """3-D patches for volume networks: (B, 1, D, H, W) HU, (B, C, D, H, W) targets, (B,) weights. A sample's
    slice is the patch's centre plane (so tumour oversampling works as for slices); in-plane the patch is placed
    around a foreground point of that slice, like a 2-D crop; what overhangs the scan is air and background."""
    import torch

    d, h, w = patch
    images, targets, weights = [], [], []
    for s in samples:
        case = cases[s.case]
        rng = np.random.default_rng([seed, epoch, s.index, 0xC3])
        y0, x0 = _crop_origin(case, s.z, max(h, w), rng)
        y0, x0 = y0 + (max(h, w) - h) // 2, x0 + (max(h, w) - w) // 2
        z0 = s.z - d // 2 + int(rng.integers(-(d // 4), d // 4 + 1))
        zs = np.arange(z0, z0 + d)
        inside = (zs >= 0) & (zs < case.image.shape[0])
        image = np.full((d, h, w), AIR_HU, dtype=case.image.dtype)
        labels = np.zeros((d, h, w), dtype=case.labels.dtype)
        if inside.any():
            image[inside] = _window(case.image, zs[inside], y0, x0, (h, w), AIR_HU)
            labels[inside] = _window(case.labels, zs[inside], y0, x0, (h, w), 0)
        images.append(image[None])
        targets.append(targets_for(labels, specs, lesion_values, activation))
        weights.append(case.weight)
    return (torch.from_numpy(np.stack(images)), torch.from_numpy(np.stack(targets)),
            torch.tensor(weights, dtype=torch.float32))

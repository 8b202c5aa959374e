"""Training checkpoints: everything needed to continue a killed run exactly where it stopped.

Written atomically after every epoch (a kill during the write leaves the previous checkpoint intact)
and read with ``weights_only=True`` like every other file: RNG states are stored as tensors, lists
and numbers, never as pickled objects.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from LiverTumorSegLib.atomicfile import torch_save_atomic
from LiverTumorSegLib.errors import LiverTumorSegError


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
            "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]]}


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    torch_save_atomic(payload, path, overwrite=True)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise LiverTumorSegError(f"no checkpoint to resume in {path.parent}; start a new run without --resume")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure means the file cannot be trusted
        raise LiverTumorSegError(f"checkpoint {path} cannot be read ({type(e).__name__}); restore it from a backup "
                                 f"or start a new run with --overwrite") from None

"""Converting the REC-UNet authors' checkpoints into LiverTumorSeg model files, once.

Their files are bare state dicts saved from ``nn.DataParallel``, with their preprocessing implied by their
training scripts; here that preprocessing is written into the model file, so the pipeline runs their weights
exactly as they did (and refuses files that are not theirs, including our own model files).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .errors import ModelFileError
from .labels import LABEL_SETS
from .modelfile import FORMAT, ModelConfig, SegmentationModel, _safe_torch_load, file_sha256


def strip_data_parallel_prefix(state: dict[str, Any]) -> dict[str, Any]:
    """Keys saved from ``nn.DataParallel``/DDP start with ``module.``; plain modules do not."""
    if state and all(k.startswith("module.") for k in state):
        return {k[len("module."):]: v for k, v in state.items()}
    return state


def _authors_variant(state: dict[str, Any]) -> str | None:
    if "Conv1.conv1.0.weight" in state:
        return "rec_unet"
    if "Conv1.conv.0.weight" in state:
        return "rec_unet_em"
    return None


def import_authors_weights(path: str | os.PathLike, arch: str, labels: str = "liver,tumor",
                           name: str | None = None) -> SegmentationModel:
    """Convert a checkpoint saved by the REC-UNet authors' training scripts into our model format.

    Their preprocessing is fixed here once: HU clipped to [-200, 200] and divided by 200, centre
    slice only (they build a 3-slice stack but use ``x[:, 1]``), native resolution, sigmoid outputs.
    For MSD Task08 their channel 0 is vessel ∪ tumour, which our "later label wins" rule turns
    into vessel and tumour labels.
    """
    from .models import build_model

    path = Path(path)
    if arch not in ("rec_unet", "rec_unet_em"):
        raise ModelFileError(f"--arch must be rec_unet or rec_unet_em, not {arch!r}")
    if labels not in LABEL_SETS or len(LABEL_SETS[labels]) != 2:
        raise ModelFileError(f"--labels must be liver,tumor or vessel,tumor, not {labels!r}")
    payload = _safe_torch_load(path)
    if isinstance(payload, dict) and payload.get("format") == FORMAT:
        raise ModelFileError(f"{path} is already a LiverTumorSeg model file; use it directly (--model {path}) "
                             f"instead of importing it")
    state = payload
    if isinstance(payload, dict):
        for key in ("state_dict", "model_state_dict", "model", "net"):
            if isinstance(payload.get(key), dict):
                state = payload[key]
                break
    if not isinstance(state, dict) or not all(hasattr(v, "shape") for v in state.values()):
        raise ModelFileError(f"{path} does not contain a REC-UNet state dict (a dict of tensors)")
    state = strip_data_parallel_prefix(dict(state))
    found = _authors_variant(state)
    if found is None:
        raise ModelFileError(f"{path} is not a REC-UNet checkpoint (no Conv1 block weights found)")
    if found != arch:
        raise ModelFileError(f"{path} holds a {found} network (key names), not {arch}; use --arch {found}")
    first = state["Conv1.conv1.0.weight" if found == "rec_unet" else "Conv1.conv.0.weight"]
    base_width, in_channels = int(first.shape[0]), int(first.shape[1])
    out_channels = int(state["Conv.weight"].shape[0]) if "Conv.weight" in state else -1
    if out_channels != 2:
        raise ModelFileError(f"{path} has {out_channels} output channels; the authors' models have 2 "
                             f"({labels.replace(',', ' and ')})")
    kwargs = {"in_channels": in_channels, "out_channels": 2, "base_width": base_width}
    network = build_model(arch, **kwargs)
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ModelFileError(f"{path}: weights do not match {arch} {kwargs}: {str(e).splitlines()[0][:200]}") from None
    config = ModelConfig(
        architecture=arch, architecture_kwargs=kwargs, labels=LABEL_SETS[labels], output_activation="sigmoid",
        window_hu=(-200.0, 200.0), normalization="window_to_unit", spacing_yx_mm=None,
        context_slices=(in_channels - 1) // 2,
        name=name or f"REC-UNet authors' weights ({path.name})",
        description="Imported from the REC-UNet authors' checkpoint; trained on 2-D slices at native "
                    "resolution, validated by the authors on a slice-level split.",
        provenance={"source": "REC-UNet authors (459806555/REC-UNet)", "imported_from": path.name,
                    "sha256": file_sha256(path), "labels": labels})
    return SegmentationModel(network, config, source=str(path))

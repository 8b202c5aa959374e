"""Which compute device to use, and what the user's torch can do (for ``info`` and bug reports)."""

from __future__ import annotations

import platform
import sys
from typing import TYPE_CHECKING, Any

from .errors import DeviceError

if TYPE_CHECKING:  # torch is imported lazily: Slicer imports this package at startup
    import torch

DEVICES = ("auto", "cpu", "cuda", "mps")


def resolve_device(device: str = "auto") -> "torch.device":
    """``auto`` picks CUDA when present, else CPU; MPS only when asked (its kernels still lag)."""
    import torch

    name = (device or "auto").lower()
    kind = name.split(":")[0]
    if kind not in DEVICES:
        raise DeviceError(f"unknown device {device!r}; use one of {', '.join(DEVICES)}")
    if kind == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if kind == "cuda" and not torch.cuda.is_available():
        build = "has no CUDA support (CPU build)" if torch.version.cuda is None else "finds no CUDA GPU"
        raise DeviceError(f"device cuda requested, but torch {torch.__version__} {build}; use --device cpu or auto")
    if kind == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise DeviceError("device mps requested, but Apple MPS is not available here; use --device cpu or auto")
    return torch.device(name)


def cpu_supports_bf16() -> bool:
    """True on CPUs with native bf16 dot products (AVX512-BF16 or AMX), where bf16 beats fp32.

    On other CPUs (most laptops) bf16 is emulated and several times slower than fp32.
    """
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="ignore") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return "avx512_bf16" in flags or "amx_bf16" in flags
    except OSError:
        pass
    return False


def physical_cores() -> int:
    """Physical cores available to this process: hyper-threads only add contention to dense convolutions."""
    import os

    logical = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        cores, block = set(), {}
        with open("/proc/cpuinfo", encoding="ascii", errors="ignore") as f:
            for line in list(f) + [""]:
                if not line.strip():
                    if "core id" in block:
                        cores.add((block.get("physical id"), block["core id"]))
                    block = {}
                elif ":" in line:
                    key, value = line.split(":", 1)
                    block[key.strip()] = value.strip()
        if cores:
            return max(1, min(logical, len(cores)))
    except OSError:
        pass
    return max(1, logical)


def configure_threads() -> int:
    """Use one torch thread per physical core unless the user chose (OMP_NUM_THREADS or torch.set_num_threads)."""
    import os

    import torch

    if not os.environ.get("OMP_NUM_THREADS") and torch.get_num_threads() > physical_cores():
        torch.set_num_threads(physical_cores())
    return torch.get_num_threads()


def environment_info() -> dict[str, Any]:
    """Versions and devices, as ``livertumorseg info`` prints them."""
    import numpy
    import SimpleITK
    import torch

    from . import __version__

    info: dict[str, Any] = {
        "livertumorseg": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torch_build": f"CUDA {torch.version.cuda}" if torch.version.cuda else "CPU only",
        "numpy": numpy.__version__,
        "SimpleITK": SimpleITK.Version_VersionString(),
        "cpu_threads": torch.get_num_threads(),
        "physical_cores": physical_cores(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_bf16": cpu_supports_bf16(),
        "cuda_available": torch.cuda.is_available(),
        "mps_available": bool(hasattr(torch.backends, "mps") and torch.backends.mps.is_available()),
        "gpus": [],
    }
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            free, total = torch.cuda.mem_get_info(i)
            info["gpus"].append({"index": i, "name": torch.cuda.get_device_name(i),
                                 "free_memory_gb": round(free / 2**30, 2), "total_memory_gb": round(total / 2**30, 2)})
    return info


def hardware_line(device: str = "cpu") -> str:
    """One line saying where a time was measured, so that seconds printed by a benchmark or written into a
    comparison table are never read without their machine."""
    import torch

    info = environment_info()
    cpu = (f"{platform.processor() or platform.machine()} ({info['cpu_capability']}, bf16 "
           f"{'native' if info['cpu_bf16'] else 'emulated'}), {info['cpu_threads']} torch threads; "
           f"torch {info['torch']}")
    if device in ("cpu", "auto") and not torch.cuda.is_available():
        return cpu
    gpu = ", ".join(g["name"] for g in info["gpus"]) or device
    return f"{gpu}; {cpu}"

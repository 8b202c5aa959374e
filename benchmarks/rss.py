"""Peak resident memory of this process, shared by the benchmark scripts (Linux: VmHWM, resettable per stage)."""

from __future__ import annotations

import resource


def peak_mib() -> float:
    """Peak RSS in MiB since the process started or since the last ``reset_peak``."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak() -> bool:
    """Start a new peak (so each stage reports its own); False where the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        return True
    except OSError:
        return False

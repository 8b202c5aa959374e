"""Installing the cores' dependencies on first use, and reporting the environment the child process sees."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
import os
import sys
import time

import slicer
from slicer.i18n import tr as _

from .paths import moduleFolder

TORCH_MINIMUM = (2, 1)
#: requirements Slicer itself provides (torch comes from the PyTorch extension); the rest of the cores' requirements
#: (Resources/requirements.txt, the one list) are pip-installed on first use
SLICER_PROVIDES = ("torch", "numpy", "simpleitk", "vtk")
#: pip distribution name -> import name, where they differ
IMPORT_NAMES = {"simpleitk": "SimpleITK"}


def pipRequirements() -> dict[str, str]:
    """Import name -> pip requirement for what the cores need beyond what Slicer ships (read from
    Resources/requirements.txt, the list pyproject.toml also reads)."""
    import re

    path = os.path.join(moduleFolder(), "Resources", "requirements.txt")
    out = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            requirement = line.split("#", 1)[0].strip()
            name = re.split(r"[<>=!~ \[;]", requirement, maxsplit=1)[0].lower() if requirement else ""
            if name and name not in SLICER_PROVIDES:
                out[IMPORT_NAMES.get(name, name)] = requirement
    return out


class InstallError(RuntimeError):
    """A dependency is missing and could not (or may not) be installed; the message says what to do."""


class InstallLogic:
    """What the segmentation needs installed (torch through the PyTorch extension, the rest with pip), and
    the environment as the child process sees it."""

    @staticmethod
    def missingDependencies() -> tuple[bool, list[str]]:
        """(torch missing or older than the minimum, pip requirements of missing packages); imports nothing."""
        try:
            version = importlib.metadata.version("torch")
            numbers = tuple(int("".join(ch for ch in part if ch.isdigit()) or 0) for part in version.split(".")[:2])
            needTorch = numbers < TORCH_MINIMUM
        except importlib.metadata.PackageNotFoundError:
            needTorch = True
        missing = [req for module, req in pipRequirements().items() if importlib.util.find_spec(module) is None]
        return needTorch, missing

    def ensureDependencies(self, askConfirmation: bool = True) -> None:
        """Install what the segmentation needs, after the user confirms: torch through the PyTorch extension
        (which picks the build for the installed NVIDIA driver), the rest with pip (Slicer's numpy kept)."""
        needTorch, missing = self.missingDependencies()
        if not needTorch and not missing:
            return
        torchRequirement = "torch>={}.{}".format(*TORCH_MINIMUM)
        if needTorch:
            try:
                import PyTorchUtils
            except ModuleNotFoundError:
                raise InstallError(_("LiverTumorSeg needs PyTorch: install the PyTorch extension from the Extensions "
                                     "Manager, restart Slicer, and click Apply again.")) from None
        packages = ([torchRequirement] if needTorch else []) + missing
        if askConfirmation and not slicer.app.testingEnabled():
            if not slicer.util.confirmOkCancelDisplay(
                    _("LiverTumorSeg needs Python packages that are not installed yet. Installing them needs a "
                      "network connection and can take several minutes (PyTorch is large). Install now?"),
                    _("Install Python packages"), detailedText="\n".join(packages)):
                raise InstallError(_("Installation cancelled: the segmentation needs {packages}.").format(
                    packages=", ".join(packages)))
        if needTorch:
            torchWasImported = "torch" in sys.modules
            torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(
                askConfirmation=False, torchVersionRequirement=">={}.{}".format(*TORCH_MINIMUM))
            if torch is None:
                raise InstallError(_("PyTorch was not installed: install it with the PyTorch Utils module "
                                     "(version {requirement}) and click Apply again.").format(
                                         requirement=torchRequirement))
            if torchWasImported:
                logging.warning("LiverTumorSeg: PyTorch was updated; restart Slicer before running in-process")
        if missing:
            try:  # keep Slicer's own numpy: a package must not replace it
                missing = missing + [f"numpy=={importlib.metadata.version('numpy')}"]
            except importlib.metadata.PackageNotFoundError:
                pass
            slicer.util.pip_install(missing)
        importlib.invalidate_caches()

    def environmentText(self) -> str:
        """Versions, torch build, CUDA and GPUs as the child process sees them (torch is not imported here)."""
        from LiverTumorSegModuleLib import jobs

        info = self.environmentInfo()
        lines = [_("PyTorch {torch} ({build}), Python {python}").format(
                     torch=info.get("torch"), build=info.get("torch_build"), python=info.get("python")),
                 _("CUDA available: {cuda}").format(cuda=_("yes") if info.get("cuda_available") else _("no")),
                 _("Device 'auto' uses: {device}").format(device="cuda" if info.get("cuda_available") else "cpu")]
        for gpu in info.get("gpus", []):
            lines.append(_("GPU {index}: {name}, {free:.1f} of {total:.1f} GB free").format(
                index=gpu.get("index", 0), name=gpu.get("name"), free=gpu.get("free_memory_gb", 0),
                total=gpu.get("total_memory_gb", 0)))
        lines.append(_("CPU threads: {threads}; LiverTumorSeg {version}; Python executable: {exe}").format(
            threads=info.get("cpu_threads"), version=info.get("livertumorseg"), exe=jobs.pythonExecutable()))
        return "\n".join(lines)

    def environmentInfo(self, timeout: float = 120.0) -> dict:
        """``livertumorseg info --json`` run in Slicer's Python (a child process)."""
        import json

        from LiverTumorSegModuleLib import jobs

        argv = [jobs.pythonExecutable(), "-m", "LiverTumorSegLib", "info", "--json"]
        process = jobs.SegmentationProcess(argv, env=jobs.childEnvironment(pythonPath=[moduleFolder()]))
        process.start()
        deadline = time.monotonic() + timeout
        while not process.poll():
            slicer.app.processEvents()
            if time.monotonic() > deadline:
                process.cancel()
                break
            time.sleep(0.05)
        lines = process.log.lines[1:]  # the first line is the command
        start = next((i for i, line in enumerate(lines) if line.startswith("{")), None)
        if process.returncode != 0 or start is None:
            raise jobs.SegmentationRunError(process.log.errorMessage(process.returncode), process.log.text())
        return json.loads("\n".join(lines[start:]))

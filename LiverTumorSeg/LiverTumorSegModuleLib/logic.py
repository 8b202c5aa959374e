"""The module's logic: models (catalogue, import, download, removal) and runs (options, jobs, writing segments)."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any, Callable

import slicer
import vtk
from slicer import vtkMRMLMarkupsROINode, vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModuleLogic,
)

from . import catalog_view
from .install import InstallLogic
from .parameters import CATALOG_PREFIX, DEVICES, MODELS_FOLDER_SETTING, LiverTumorSegParameterNode
from .paths import ensureCorePackagesImportable, moduleFolder


class LiverTumorSegLogic(ScriptedLoadableModuleLogic):
    """Models, dependencies and runs; usable from the Python console and tests without the widget."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        ensureCorePackagesImportable()
        self.lastReport: dict | None = None
        self.lastLog = ""

    # -- installing (InstallLogic: the dependencies, and the environment the child process sees) -----------------

    def ensureDependencies(self, askConfirmation: bool = True) -> None:
        InstallLogic().ensureDependencies(askConfirmation)

    @staticmethod
    def missingDependencies() -> tuple[bool, list[str]]:
        return InstallLogic.missingDependencies()

    def environmentText(self) -> str:
        return InstallLogic().environmentText()

    def environmentInfo(self, timeout: float = 120.0) -> dict:
        return InstallLogic().environmentInfo(timeout)

    def getParameterNode(self):
        return LiverTumorSegParameterNode(super().getParameterNode())

    # -- models ------------------------------------------------------------------------------------

    @staticmethod
    def modelsFolderSetting() -> str:
        return str(slicer.util.settingsValue(MODELS_FOLDER_SETTING, "") or "")

    def modelsFolder(self) -> Path:
        from LiverTumorSegLib.catalog import models_dir

        return models_dir(self.modelsFolderSetting() or None)

    def availableModels(self) -> list:
        """``catalog.available_models``; when PyTorch is not installed yet, files are listed unchecked."""
        from LiverTumorSegLib.catalog import BUNDLED_DIR, AvailableModel, available_models, load_catalog

        catalog, folder = load_catalog(), self.modelsFolder()
        if importlib.util.find_spec("torch") is not None:
            return available_models(catalog, folder)
        files = {p.name: p for p in folder.glob("*.pt") if p.is_file() and not p.name.startswith(".")}
        bundled = {e.file: BUNDLED_DIR / e.file for e in catalog if (BUNDLED_DIR / e.file).is_file()}
        have = set(files) | set(bundled)
        models = [AvailableModel(bundled.get(e.file, folder / e.file), e, installed=e.file in have,
                                 usable=e.file in have) for e in catalog]
        catalogued = {e.file for e in catalog}
        models += [AvailableModel(p, None, installed=True, usable=True) for n, p in sorted(files.items())
                   if n not in catalogued]
        return models

    def modelChoices(self) -> list[dict]:
        """What the model selectors show (see ``catalog_view.modelChoices``)."""
        return catalog_view.modelChoices(self.availableModels())

    @staticmethod
    def defaultModelChoice(choices: list[dict]) -> str | None:
        return catalog_view.defaultModelChoice(choices)

    def resolveModel(self, model: str | os.PathLike | None = None) -> Path:
        """A model file: a path, a catalogue id (installed), or None for the default model."""
        from LiverTumorSegLib.catalog import default_model, load_catalog

        if model:
            text = str(model)
            text = text[len(CATALOG_PREFIX):] if text.startswith(CATALOG_PREFIX) else text
            for m in self.availableModels():
                if m.entry is not None and m.entry.id == text:
                    if not m.installed:
                        raise ValueError(f"model {text!r} is not installed: download it in the LiverTumorSeg "
                                         f"module (logic.downloadModel({text!r})) or import its file")
                    return m.path
            path = Path(text).expanduser()
            if not path.is_file():
                raise ValueError(f"model {text!r} is neither a model file nor a catalogue model id")
            return path
        path = default_model(load_catalog(), self.modelsFolder())
        if path is None:
            raise ValueError("no model installed: import a model file in the LiverTumorSeg module or set "
                             "LIVERTUMORSEG_MODELS_DIR")
        return path

    def importModelFile(self, path: str | os.PathLike, overwrite: bool = False) -> Path:
        """Check a model file and copy it into the models folder; returns its new path."""
        from LiverTumorSegLib.catalog import import_model_file, load_catalog

        return import_model_file(path, self.modelsFolder(), overwrite=overwrite, catalog=load_catalog())

    def removeModelFile(self, path: str | os.PathLike) -> Path:
        """Delete a downloaded or imported model from the models folder (shipped models cannot be removed)."""
        from LiverTumorSegLib.catalog import remove_model_file

        return remove_model_file(path, self.modelsFolder())

    def downloadModel(self, modelId: str) -> Path:
        """Download a catalogue model into the models folder; a wrong checksum deletes the file and says so."""
        from LiverTumorSegLib.catalog import load_catalog, verify_sha256

        entry = next((e for e in load_catalog() if e.id == modelId), None)
        if entry is None:
            raise ValueError(f"no catalogue model {modelId!r}")
        target = self.modelsFolder() / entry.file
        if target.is_file():
            return target
        if not entry.url:
            raise ValueError(f"model {entry.id!r} has no download address: import its file {entry.file}")
        partial = target.with_name("." + target.name + ".download")  # hidden: not listed until verified
        partial.unlink(missing_ok=True)
        ok = slicer.util.downloadFile(entry.url, str(partial), checksum=f"SHA256:{entry.sha256}")
        if not ok:
            if partial.is_file():
                verify_sha256(partial, entry.sha256)  # raises, deleting the file, when the checksum is wrong
            partial.unlink(missing_ok=True)
            raise RuntimeError(f"downloading {entry.url} failed (network, proxy or firewall?); download the file "
                               f"with a browser and import it with 'Import model file...'")
        os.replace(partial, target)
        return target

    # -- running -----------------------------------------------------------------------------------

    def process(self, volumeNode: vtkMRMLScalarVolumeNode, segmentationNode: vtkMRMLSegmentationNode | None = None,
                model: str | os.PathLike | None = None, progress: Callable[[Any], Any] | None = None,
                sliceRange=None, roiNode: vtkMRMLMarkupsROINode | None = None, inProcess: bool = False,
                options=None, **overrides) -> vtkMRMLSegmentationNode:
        """Segment ``volumeNode`` and write "Liver"/"Tumor" segments into ``segmentationNode`` (new if None).

        ``model``: a model file, a catalogue id, or None for the default model. ``progress(p)`` gets a
        ``Progress`` (``p.stage``, ``p.done``/``p.total`` slices, ``p.fraction``, ``p.etaSeconds``, ``p.text()``)
        and may return False to cancel. ``sliceRange=(first, last)``: 0-based inclusive slice indices along the
        axis closest to S (last None: to the end). ``roiNode``: segment only inside this ROI. ``inProcess``: run
        in this process instead of a child process (blocks the GUI). Everything else is the core's
        ``SegmentOptions``, given whole (``options``) or by field name (``device="cpu"``,
        ``keep_labels=["Liver"]``, ``thresholds=(0.5, 0.3)`` or ``{"Tumor": 0.3}``, ``min_lesion_mm3``, ...).
        Existing segments of the same names are updated in place; other segments are not touched. The lesion
        report is kept in ``self.lastReport``.
        """
        job = self.prepareJob(volumeNode, segmentationNode, model=model, sliceRange=sliceRange, roiNode=roiNode,
                              options=options, **overrides)
        try:
            self.runJob(job, progress=progress, inProcess=inProcess)
            return self.finishJob(job)
        finally:
            job.cleanup()

    def prepareJob(self, volumeNode: vtkMRMLScalarVolumeNode, segmentationNode: vtkMRMLSegmentationNode | None = None,
                   model=None, sliceRange=None, roiNode: vtkMRMLMarkupsROINode | None = None, options=None,
                   **overrides):
        """Pull the volume and resolve the options (nothing runs yet)."""
        import sitkUtils

        if volumeNode is None or not volumeNode.IsA("vtkMRMLScalarVolumeNode") \
                or volumeNode.IsA("vtkMRMLLabelMapVolumeNode"):
            raise ValueError("select a CT volume (a scalar volume, not a label map)")
        if volumeNode.GetImageData() is None:
            raise ValueError(f"volume '{volumeNode.GetName()}' has no voxels")
        image = sitkUtils.PullVolumeFromSlicer(volumeNode)
        region = self.regionFor(image, volumeNode, roiNode=roiNode, sliceRange=sliceRange)
        job = self.prepareImageJob(image, model=model, options=options, region=region, **overrides)
        job.volumeNode, job.segmentationNode = volumeNode, segmentationNode
        return job

    def prepareImageJob(self, image, model=None, options=None, **overrides):
        """A job for a SimpleITK image (the Segment Editor effect's source volume)."""
        from LiverTumorSegModuleLib.jobs import SegmentationJob

        modelFile = self.resolveModel(model)
        return SegmentationJob(image, modelFile, self.segmentOptions(modelFile, options, **overrides))

    @staticmethod
    def segmentOptions(modelFile: Path, options=None, **overrides):
        """The core's SegmentOptions: ``options`` (default: the model's settings) with ``overrides`` by field
        name; thresholds may be given per label name ({"Tumor": 0.3}: the model's value for the others)."""
        import dataclasses

        from LiverTumorSegLib.options import SegmentOptions

        thresholds = overrides.get("thresholds")
        if isinstance(thresholds, dict):
            from LiverTumorSegLib.catalog import read_model_config

            config = read_model_config(modelFile)
            given = {str(k).lower(): float(v) for k, v in thresholds.items()}
            overrides["thresholds"] = tuple(given.get(lab.name.lower(), default)
                                            for lab, default in zip(config.labels, config.thresholds))
        try:
            options = dataclasses.replace(options or SegmentOptions(), **overrides)
        except TypeError as e:
            raise ValueError(f"unknown segmentation option ({e}); use the names of LiverTumorSegLib.options."
                             f"SegmentOptions") from None
        if options.device not in DEVICES:
            raise ValueError(f"device must be one of {', '.join(DEVICES)}, not {options.device!r}")
        return options

    @staticmethod
    def regionFor(image, volumeNode: vtkMRMLScalarVolumeNode, roiNode: vtkMRMLMarkupsROINode | None = None,
                  sliceRange=None):
        """The core's index box for an ROI and/or a slice range (None: the whole volume)."""
        from LiverTumorSegModuleLib import segments

        box = None
        if roiNode is not None:
            bounds = [0.0] * 6
            roiNode.GetObjectBounds(bounds)
            objectToWorld = segments.vtkMatrixToNumpy(roiNode.GetObjectToWorldMatrix())
            parent = volumeNode.GetParentTransformNode()
            if parent is not None:
                worldToVolume = vtk.vtkMatrix4x4()
                if not slicer.vtkMRMLTransformNode.GetMatrixTransformBetweenNodes(None, parent, worldToVolume):
                    raise ValueError("the volume is under a non-linear transform: harden it before using an ROI")
                objectToWorld = segments.vtkMatrixToNumpy(worldToVolume) @ objectToWorld
            box = segments.regionFromRasPoints(image, segments.boxCorners(bounds, objectToWorld))
        if sliceRange is not None:
            first, last = sliceRange
            box = segments.intersectRegions(box, segments.regionFromSliceRange(image, first, last))
        if box is not None and all(b == (0, n) for b, n in zip(box, image.GetSize())):
            return None
        return box

    def runJob(self, job, progress=None, inProcess: bool = False) -> None:
        """Run a job to the end while keeping Slicer's GUI refreshed; raises SegmentationCancelledError or
        SegmentationRunError (``.log``: the child process's whole output)."""

        def callback(p):
            answer = progress(p) if progress is not None else None
            slicer.app.processEvents()
            return answer

        try:
            job.run(callback, inProcess=inProcess, pythonPath=[moduleFolder()])
        finally:
            self.lastLog = job.log

    def startJob(self, job, onProgress=None, onFinished=None):
        """Start a job without blocking; ``onFinished(job, error)`` runs when it ends (error None on success)."""
        from LiverTumorSegModuleLib import jobs

        def finished(process) -> None:
            error = None
            try:
                job.takeResults(process)
            except Exception as e:  # noqa: BLE001 - handed to the caller, who shows it
                job.log = process.log.text()
                error = e
            self.lastLog = job.log
            if onFinished is not None:
                onFinished(job, error)

        process = job.childProcess(pythonPath=[moduleFolder()])
        return jobs.QtSegmentationRunner(process, onProgress=onProgress, onFinished=finished).start()

    def finishJob(self, job, segmentationNode: vtkMRMLSegmentationNode | None = None):
        """Write a finished job's label map into segments of ``segmentationNode`` (or the job's, or a new one)."""
        from LiverTumorSegModuleLib import segments

        volumeNode: vtkMRMLScalarVolumeNode = job.volumeNode
        if volumeNode is None or volumeNode.GetScene() is None:
            raise ValueError("the input volume was removed from the scene while it was being segmented")
        segmentationNode = segmentationNode or job.segmentationNode
        if segmentationNode is not None and segmentationNode.GetScene() is None:
            segmentationNode = None  # deleted during the run: write into a new one
        if segmentationNode is None:
            segmentationNode = slicer.mrmlScene.AddNewNodeByClass(
                "vtkMRMLSegmentationNode", slicer.mrmlScene.GenerateUniqueName(volumeNode.GetName() + " segmentation"))
            segmentationNode.CreateDefaultDisplayNodes()
            segmentationNode.SetAndObserveTransformNodeID(volumeNode.GetTransformNodeID())
            segments.placeUnderVolumeStudy(segmentationNode, volumeNode)
        if segmentationNode.GetDisplayNode() is None:
            segmentationNode.CreateDefaultDisplayNodes()
        role = slicer.vtkMRMLSegmentationNode.GetReferenceImageGeometryReferenceRole()
        if segmentationNode.GetNodeReference(role) is None:
            segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(volumeNode)
        keep = job.options.keep_labels if job.options is not None else None
        specs = [s for s in job.specs if not keep or s.name.lower() in {k.lower() for k in keep}]
        wasModifying = segmentationNode.StartModify()
        try:
            segments.writeLabelmapToSegments(segmentationNode, job.labels, volumeNode, specs)
        finally:
            segmentationNode.EndModify(wasModifying)
        self.lastReport = job.report
        return segmentationNode

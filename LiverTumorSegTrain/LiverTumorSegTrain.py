"""LiverTumorSegTrain: export a Slicer scene as a training set and run ``livertumorseg train`` headless.

Thin glue: the segments are turned into one label map per CT on the CT's own grid here, and
everything else (writing the data set, training) is done by the Slicer-free ``LiverTumorSegTrainLib``,
imported inside functions so that Slicer's startup never loads torch.
"""

import logging
import os
import pathlib
import re
import shlex
import subprocess
import sys
from typing import Annotated

import ctk
import qt
import slicer
import vtk

# Slicer finds the module's test class in this file; it lives in the module's library.
# LiverTumorSeg (a dependency, so its folder is on sys.path) holds the one path bootstrap of the glue.
from LiverTumorSegModuleLib.paths import ensureCorePackagesImportable
from LiverTumorSegTrainModuleLib.selftest import LiverTumorSegTrainTest  # noqa: F401
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

#: Data-set layouts ``LiverTumorSegTrainLib.export.export_dataset`` writes.
LAYOUTS = ("lits", "msd")


def _segmentRole(name: str, terminology: str) -> str | None:
    """'liver', 'tumor' or None, by the same rule as segments read from .seg.nrrd files.

    ``terminology`` is Slicer's TerminologyEntry string; its third ``~`` field is the type
    (``scheme^code^meaning``), the form the core's rule reads from slicerio segment dicts.
    """
    ensureCorePackagesImportable()
    from LiverTumorSegTrainLib.datasets import segment_role

    fields = (terminology or "").split("~")
    typeCode = fields[2].split("^") if len(fields) > 2 else []
    return segment_role({"name": name or "", "terminology": {"type": typeCode} if typeCode else {}})


def _safeCaseIds(names: list[str]) -> list[str]:
    """File-name-safe case ids, unique also on case-insensitive file systems."""
    ids, taken = [], set()
    for name in names:
        base = re.sub(r"[^A-Za-z0-9._-]+", "_", name or "").strip("._-") or "case"
        caseId, n = base, 1
        while caseId.lower() in taken:
            n += 1
            caseId = f"{base}_{n}"
        taken.add(caseId.lower())
        ids.append(caseId)
    return ids


#
# LiverTumorSegTrain
#


class LiverTumorSegTrain(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("Liver Tumor Seg Training")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = ["Segmentations", "LiverTumorSeg"]
        self.parent.contributors = ["LiverTumorSeg developers"]
        self.parent.helpText = _("""
Exports the CT volumes of the scene that have a segmentation with a "Liver" segment (and optionally
"Tumor"/"Tumour"/"Lesion" segments) as a training data set (LiTS or MSD layout): one label map per CT
on the CT's own grid, 1 = liver, 2 = tumour.
<p>Training runs headless, without blocking Slicer (the command is shown in the module):</p>
<pre>Slicer --no-main-window --python-script &lt;module folder&gt;/Scripts/train.py -- DATA [options]</pre>
<p>The options are those of <code>livertumorseg train</code>; add <code>--help</code> to list them.
From the Python console, <code>slicer.util.getModuleLogic("LiverTumorSegTrain").train([...])</code> runs the
same in-process, but blocks the application until training ends.</p>
""")
        self.parent.acknowledgementText = _("""
LiverTumorSeg re-implements REC-UNet (https://github.com/459806555/REC-UNet); please cite the authors' paper.
Built on 3D Slicer's scripted module template by Jean-Christophe Fillion-Robin (Kitware), Andras Lasso (PerkLab)
and Steve Pieper (Isomics).
""")
        self.parent.hidden = False


#
# LiverTumorSegTrainParameterNode
#


@parameterNodeWrapper
class LiverTumorSegTrainParameterNode:
    """outputDirectory: where the data set is written; layout: its file layout; overwrite: replace existing cases."""

    outputDirectory: pathlib.Path = pathlib.Path.home() / "LiverTumorSegTrainingData"
    layout: Annotated[str, Choice(list(LAYOUTS))] = "lits"
    overwrite: bool = False


#
# LiverTumorSegTrainWidget
#


class LiverTumorSegTrainWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        self.logic = LiverTumorSegTrainLogic()

        self.exportSection = ctk.ctkCollapsibleButton()
        self.exportSection.text = _("Export scene for training")
        self.layout.addWidget(self.exportSection)
        form = qt.QFormLayout(self.exportSection)

        self.outputDirectorySelector = ctk.ctkPathLineEdit()
        self.outputDirectorySelector.filters = ctk.ctkPathLineEdit.Dirs
        self.outputDirectorySelector.toolTip = _("Folder the training data set is written to.")
        self.outputDirectorySelector.setProperty("SlicerParameterName", "outputDirectory")
        form.addRow(_("Output folder:"), self.outputDirectorySelector)

        self.layoutComboBox = qt.QComboBox()
        self.layoutComboBox.toolTip = _("lits: volume-N.nii.gz + segmentation-N.nii.gz; "
                                        "msd: imagesTr/ + labelsTr/ + dataset.json. Both keep the node names "
                                        "in cases.json.")
        self.layoutComboBox.setProperty("SlicerParameterName", "layout")
        form.addRow(_("Layout:"), self.layoutComboBox)

        self.overwriteCheckBox = qt.QCheckBox()
        self.overwriteCheckBox.toolTip = _("Replace an earlier export in the output folder "
                                            "(a non-empty folder is refused otherwise).")
        self.overwriteCheckBox.setProperty("SlicerParameterName", "overwrite")
        form.addRow(_("Overwrite:"), self.overwriteCheckBox)

        self.exportButton = qt.QPushButton(_("Export scene for training"))
        self.exportButton.toolTip = _("Write every CT that has a segmentation with a Liver segment.")
        form.addRow(self.exportButton)

        self.statusLabel = qt.QLabel()
        self.statusLabel.wordWrap = True
        form.addRow(self.statusLabel)

        self.commandText = qt.QPlainTextEdit()
        self.commandText.readOnly = True
        self.commandText.toolTip = _("Run this in a terminal to train on the exported folder without blocking Slicer. "
                                     "Add the options of 'livertumorseg train' (see --help).")
        self.commandText.setMaximumHeight(90)
        form.addRow(_("Headless training:"), self.commandText)

        self.layout.addStretch(1)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.exportButton.connect("clicked(bool)", self.onExportButton)

        self.initializeParameterNode()

    def cleanup(self) -> None:
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        self.setParameterNode(None)

    def onSceneStartClose(self, caller, event) -> None:
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(LiverTumorSegTrainParameterNode(self.logic.getParameterNode()))

    def setParameterNode(self, inputParameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateGui)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.exportSection)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateGui)
            self._updateGui()

    def _outputDirectory(self) -> str:
        path = str(self._parameterNode.outputDirectory) if self._parameterNode else ""
        return "" if path in ("", ".") else path

    def _updateGui(self, caller=None, event=None) -> None:
        outputDirectory = self._outputDirectory()
        self.exportButton.enabled = bool(outputDirectory)
        if not outputDirectory:
            self.commandText.plainText = ""
            return
        try:
            self.commandText.plainText = self.logic.headlessCommandLine(self.logic.trainingArguments(outputDirectory))
        except RuntimeError as e:
            self.commandText.plainText = str(e)

    def onExportButton(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Failed to export the scene for training."), waitCursor=True):
            self.statusLabel.text = ""
            exported = self.logic.exportSceneForTraining(self._outputDirectory(), layout=self._parameterNode.layout,
                                                         overwrite=self._parameterNode.overwrite)
            self.statusLabel.text = _("Exported to {path}").format(path=exported)
            self.commandText.plainText = self.logic.headlessCommandLine(self.logic.trainingArguments(exported))


#
# LiverTumorSegTrainLogic
#


class LiverTumorSegTrainLogic(ScriptedLoadableModuleLogic):
    """Scene -> training data set, and the training command; usable without the widget."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)

    @staticmethod
    def trainScriptPath() -> str:
        return os.path.join(os.path.dirname(os.path.abspath(__file__)), "Scripts", "train.py")

    @staticmethod
    def trainingArguments(dataDirectory: str, runDirectory: str | None = None) -> list[str]:
        """``livertumorseg train`` arguments for an exported folder; the run goes to ``<folder>-run`` by default.

        Users add options (``--preset``, ``--epochs``, ``--device``...; ``--help`` lists them).
        """
        dataDirectory = str(dataDirectory).rstrip("/\\") or str(dataDirectory)
        return [dataDirectory, "-o", str(runDirectory) if runDirectory else dataDirectory + "-run"]

    def train(self, argv: list[str]) -> int:
        """Runs ``livertumorseg train`` in this process and returns its exit status.

        For scripting from the Python console. It blocks Slicer until training ends, which can be
        hours: the recommended way is the headless command (``headlessCommand``) in a terminal.
        """
        ensureCorePackagesImportable()
        from LiverTumorSegTrainLib.commands import train_main

        try:
            status = train_main([str(a) for a in argv])
        except SystemExit as e:  # argparse --help / usage errors must not close Slicer
            status = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        return int(status or 0)

    def headlessCommand(self, argv: list[str]) -> list[str]:
        """This Slicer's command line that trains headless with ``argv`` (``--`` keeps Slicer off e.g. ``--help``)."""
        args = [str(a) for a in argv]
        launcher = slicer.app.launcherExecutableFilePath
        if launcher:
            return [launcher, "--no-main-window", "--python-script", self.trainScriptPath(), "--"] + args
        if sys.executable:  # PythonSlicer: Slicer's Python without the application, enough for training
            return [sys.executable, self.trainScriptPath()] + args
        raise RuntimeError(_("Cannot find the Slicer launcher or PythonSlicer to run training headless."))

    def headlessCommandLine(self, argv: list[str]) -> str:
        """``headlessCommand`` quoted for this platform's shell, to copy into a terminal."""
        command = self.headlessCommand(argv)
        return subprocess.list2cmdline(command) if os.name == "nt" else shlex.join(command)

    # -- scene export ------------------------------------------------------------------------------

    def exportSceneForTraining(self, outputDir: str, layout: str = "lits", volumeNodes=None,
                               overwrite: bool = False) -> str:
        """Writes the CT volumes and their Liver/Tumor segments as a training data set; returns its folder.

        ``volumeNodes``: None for every scalar volume that a segmentation references as its geometry;
        a list of volume nodes to restrict that; or explicit ``(volumeNode, segmentationNode)`` pairs.
        Each CT's label map is on the CT's own grid: 1 liver, 2 tumour (tumour wins where they overlap).
        Raises ValueError with a one-line message when there is nothing to export.
        """
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, not {layout!r}")
        if not outputDir or str(outputDir) == ".":
            raise ValueError("choose an output folder for the training data set")
        cases = self._casesToExport(volumeNodes)
        caseIds = _safeCaseIds([volumeNode.GetName() for volumeNode, _seg, _liver, _tumor in cases])

        ensureCorePackagesImportable()
        from LiverTumorSegTrainLib.export import export_dataset

        items = (self._caseItem(caseId, *case) for caseId, case in zip(caseIds, cases))
        path = export_dataset(items, outputDir, layout=layout, overwrite=overwrite)
        logging.info(f"LiverTumorSegTrain: exported {len(cases)} case(s) to {path}")
        return str(path)

    def _casesToExport(self, volumeNodes) -> list:
        """(volume, segmentation, liver segment ids, tumour segment ids) for each case, checked before writing."""
        explicitPairs = volumeNodes is not None and any(isinstance(v, (tuple, list)) for v in volumeNodes)
        if explicitPairs:
            pairs = [tuple(pair) for pair in volumeNodes]
        else:
            pairs = self._referencedPairs(volumeNodes)
        if not pairs:
            raise ValueError("no CT volume with a segmentation found: create a segmentation of the CT "
                             "(Segment Editor) or pass (volumeNode, segmentationNode) pairs")
        cases, skipped = [], []
        for volumeNode, segmentationNode in pairs:
            self._checkPair(volumeNode, segmentationNode)
            liverIds, tumorIds = self._segmentIdsByRole(segmentationNode)
            if liverIds:
                cases.append((volumeNode, segmentationNode, liverIds, tumorIds))
            elif explicitPairs:
                raise ValueError(f"segmentation '{segmentationNode.GetName()}' has no liver segment: "
                                 "name a segment 'Liver' or give it the Liver terminology")
            else:
                skipped.append(segmentationNode.GetName())
        if skipped:
            logging.warning("LiverTumorSegTrain: skipped segmentations without a liver segment: " + ", ".join(skipped))
        if not cases:
            raise ValueError("no segmentation with a liver segment found (checked: " + ", ".join(skipped)
                             + "): name a segment 'Liver' or give it the Liver terminology")
        return cases

    @staticmethod
    def _referencedPairs(volumeNodes) -> list:
        """Segmentations paired with the volume they reference as geometry (optionally only given volumes)."""
        wanted = None if volumeNodes is None else {v.GetID() for v in volumeNodes}
        role = slicer.vtkMRMLSegmentationNode.GetReferenceImageGeometryReferenceRole()
        pairs = []
        for segmentationNode in slicer.util.getNodesByClass("vtkMRMLSegmentationNode"):
            volumeNode = segmentationNode.GetNodeReference(role)
            if volumeNode is None or not volumeNode.IsA("vtkMRMLScalarVolumeNode"):
                continue
            if volumeNode.IsA("vtkMRMLLabelMapVolumeNode"):
                continue
            if wanted is None or volumeNode.GetID() in wanted:
                pairs.append((volumeNode, segmentationNode))
        return pairs

    @staticmethod
    def _checkPair(volumeNode: vtkMRMLScalarVolumeNode, segmentationNode: vtkMRMLSegmentationNode) -> None:
        if volumeNode is None or not volumeNode.IsA("vtkMRMLScalarVolumeNode") \
                or volumeNode.IsA("vtkMRMLLabelMapVolumeNode"):
            raise ValueError("each pair must start with a scalar (CT) volume node, not a label map or None")
        if volumeNode.GetImageData() is None:
            raise ValueError(f"volume '{volumeNode.GetName()}' has no voxels: load the CT first")
        if segmentationNode is None or not segmentationNode.IsA("vtkMRMLSegmentationNode"):
            raise ValueError(f"volume '{volumeNode.GetName()}' is not paired with a segmentation node")

    @staticmethod
    def _segmentIdsByRole(segmentationNode: vtkMRMLSegmentationNode) -> tuple[list[str], list[str]]:
        """Ids of the liver and tumour segments (by terminology or by name; several of one kind are merged)."""
        segmentation = segmentationNode.GetSegmentation()
        liverIds, tumorIds = [], []
        for index in range(segmentation.GetNumberOfSegments()):
            segmentId = segmentation.GetNthSegmentID(index)
            segment = segmentation.GetSegment(segmentId)
            role = _segmentRole(segment.GetName(), segment.GetTerminology())
            if role == "liver":
                liverIds.append(segmentId)
            elif role == "tumor":
                tumorIds.append(segmentId)
        return liverIds, tumorIds

    def _caseItem(self, caseId: str, volumeNode: vtkMRMLScalarVolumeNode, segmentationNode: vtkMRMLSegmentationNode,
                  liverIds: list[str], tumorIds: list[str]):
        """(case id, CT, label map) as SimpleITK images on the CT's grid; pulled one case at a time."""
        import numpy as np
        import SimpleITK as sitk
        import sitkUtils

        ct = sitkUtils.PullVolumeFromSlicer(volumeNode)
        liver = self._segmentsMask(volumeNode, segmentationNode, liverIds)
        tumor = self._segmentsMask(volumeNode, segmentationNode, tumorIds) if tumorIds else np.zeros_like(liver)
        if liver.shape != sitk.GetArrayViewFromImage(ct).shape:
            raise ValueError(f"segments of '{segmentationNode.GetName()}' could not be exported on the grid of "
                             f"'{volumeNode.GetName()}'")
        labelArray = np.zeros(liver.shape, np.uint8)
        labelArray[liver] = 1
        labelArray[tumor] = 2
        labels = sitk.GetImageFromArray(labelArray)
        labels.CopyInformation(ct)
        return caseId, ct, labels

    @staticmethod
    def _segmentsMask(volumeNode: vtkMRMLScalarVolumeNode, segmentationNode: vtkMRMLSegmentationNode,
                      segmentIds: list[str]):
        """Union of segments as a boolean KJI array on the volume's grid, through a temporary label map node.

        The export also adds a display node and a colour table to the scene; every node it adds is removed.
        """
        import SimpleITK as sitk
        import sitkUtils

        ids = vtk.vtkStringArray()
        for segmentId in segmentIds:
            ids.InsertNextValue(segmentId)
        nodesBefore = _sceneNodeIds()
        labelmapNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "__LiverTumorSegTrain_export__")
        try:
            if not slicer.modules.segmentations.logic().ExportSegmentsToLabelmapNode(
                    segmentationNode, ids, labelmapNode, volumeNode):
                raise ValueError(f"exporting segments of '{segmentationNode.GetName()}' to a label map failed")
            return sitk.GetArrayFromImage(sitkUtils.PullVolumeFromSlicer(labelmapNode)) != 0
        finally:
            slicer.mrmlScene.RemoveNode(labelmapNode)
            for nodeId in _sceneNodeIds() - nodesBefore:
                node = slicer.mrmlScene.GetNodeByID(nodeId)
                if node is not None:
                    slicer.mrmlScene.RemoveNode(node)


def _sceneNodeIds() -> set[str]:
    return {slicer.mrmlScene.GetNthNode(i).GetID() for i in range(slicer.mrmlScene.GetNumberOfNodes())}

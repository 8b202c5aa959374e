"""The module's self-test, for Slicer's test runner: the shipped model on a phantom, in a child process and in
process, regions and errors, and the Segment Editor effect with undo."""

from __future__ import annotations

import os

import slicer
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModuleTest,
)

from .logic import LiverTumorSegLogic
from .parameters import EFFECT_NAME
from .paths import ensureCorePackagesImportable


class LiverTumorSegTest(ScriptedLoadableModuleTest):
    """Phantom CT in the scene, the shipped default model (or ``$LIVERTUMORSEG_TEST_MODEL``), then the logic
    (child process and in-process) and the Segment Editor effect, checked against the phantom's truth."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_ProcessInChildProcessAndInProcess()
        self.setUp()
        self.test_RegionsAndErrors()
        self.setUp()
        self.test_SegmentEditorEffectAndUndo()

    # -- fixtures ----------------------------------------------------------------------------------

    def _model(self) -> str:
        """The model file to test with: ``$LIVERTUMORSEG_TEST_MODEL``, else the default model the extension ships
        (it finds the phantom's liver with Dice above 0.95, its tumours with about 0.7)."""
        LiverTumorSegLogic().ensureDependencies(askConfirmation=False)  # testing mode: installs without asking
        if os.environ.get("LIVERTUMORSEG_TEST_MODEL"):
            return os.environ["LIVERTUMORSEG_TEST_MODEL"]
        return str(LiverTumorSegLogic().resolveModel(None))

    def _phantomVolume(self, name: str = "Phantom CT"):
        import sitkUtils

        ensureCorePackagesImportable()
        from LiverTumorSegLib.phantom import make_phantom

        ct, truth = make_phantom(shape_zyx=(40, 128, 128), spacing_zyx=(2.5, 1.8, 1.8), seed=1,
                                 lesion_diameters_mm=(14.0, 24.0))
        volumeNode = sitkUtils.PushVolumeToSlicer(ct, name=name)
        return volumeNode, truth

    @staticmethod
    def _dice(a, b) -> float:
        total = int(a.sum()) + int(b.sum())
        return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total

    def _segmentArray(self, segmentationNode: vtkMRMLSegmentationNode, name: str,
                      volumeNode: vtkMRMLScalarVolumeNode):
        segmentId = segmentationNode.GetSegmentation().GetSegmentIdBySegmentName(name)
        self.assertTrue(segmentId, f"segment {name} missing")
        return slicer.util.arrayFromSegmentBinaryLabelmap(segmentationNode, segmentId, volumeNode) > 0

    def _checkSegments(self, segmentationNode: vtkMRMLSegmentationNode, volumeNode: vtkMRMLScalarVolumeNode, truth,
                       minLiverDice: float = 0.9) -> None:
        import numpy as np
        import SimpleITK as sitk

        truthArray = sitk.GetArrayFromImage(truth)
        segmentation = segmentationNode.GetSegmentation()
        codes = {"Liver": "SCT^10200004^Liver", "Tumor": "SCT^108369006^Neoplasm"}
        for name, code in codes.items():
            segment = segmentation.GetSegment(segmentation.GetSegmentIdBySegmentName(name))
            self.assertIsNotNone(segment, f"segment {name} missing")
            self.assertIn(code, segment.GetTerminology())
        liver = self._segmentArray(segmentationNode, "Liver", volumeNode)
        tumor = self._segmentArray(segmentationNode, "Tumor", volumeNode)
        self.assertEqual(liver.shape, truthArray.shape, "segments are not on the volume's grid")
        self.assertFalse(np.any(liver & tumor), "Liver and Tumor overlap")
        dice = self._dice(liver | tumor, truthArray >= 1)
        self.delayDisplay(f"Liver Dice {dice:.3f}, tumour Dice {self._dice(tumor, truthArray == 2):.3f}")
        self.assertGreaterEqual(dice, minLiverDice)

    # -- tests -------------------------------------------------------------------------------------

    def test_ProcessInChildProcessAndInProcess(self):
        import numpy as np

        model = self._model()
        volumeNode, truth = self._phantomVolume()
        logic = LiverTumorSegLogic()

        self.delayDisplay("Segmenting in a child process (PythonSlicer)")
        stages = []
        segmentationNode = logic.process(volumeNode, model=model, device="cpu", progress=lambda p: stages.append(
            (p.stage, p.done, p.total)))
        self.assertTrue(any(s[0] == "segmenting" and s[1] == s[2] > 0 for s in stages), "no slice progress")
        self._checkSegments(segmentationNode, volumeNode, truth)
        self.assertGreater(logic.lastReport["organ_volume_ml"], 0)
        role = slicer.vtkMRMLSegmentationNode.GetReferenceImageGeometryReferenceRole()
        self.assertEqual(segmentationNode.GetNodeReference(role), volumeNode)
        shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(slicer.mrmlScene)
        self.assertEqual(shNode.GetItemParent(shNode.GetItemByDataNode(segmentationNode)),
                         shNode.GetItemParent(shNode.GetItemByDataNode(volumeNode)))

        self.delayDisplay("In-process run into the same segmentation: Liver/Tumor updated, Spleen untouched")
        spleenId = segmentationNode.GetSegmentation().AddEmptySegment("", "Spleen")
        spleen = np.zeros(slicer.util.arrayFromVolume(volumeNode).shape, np.uint8)
        spleen[5:10, 10:30, 10:30] = 1
        slicer.util.updateSegmentBinaryLabelmapFromArray(spleen, segmentationNode, spleenId, volumeNode)
        before = segmentationNode.GetSegmentation().GetNumberOfSegments()
        logic.process(volumeNode, segmentationNode, model=model, device="cpu", inProcess=True,
                      thresholds={"Liver": 0.5, "Tumor": 0.5})
        self.assertEqual(segmentationNode.GetSegmentation().GetNumberOfSegments(), before)
        np.testing.assert_array_equal(self._segmentArray(segmentationNode, "Spleen", volumeNode), spleen > 0)
        self._checkSegments(segmentationNode, volumeNode, truth)
        self.delayDisplay("Test passed")

    def test_RegionsAndErrors(self):
        import sitkUtils

        model = self._model()
        volumeNode, truth = self._phantomVolume()
        logic = LiverTumorSegLogic()

        self.delayDisplay("Slice range: nothing outside slices 10-19")
        segmentationNode = logic.process(volumeNode, model=model, device="cpu", sliceRange=(10, 19), inProcess=True,
                                         keep_labels=["Liver"])
        liver = self._segmentArray(segmentationNode, "Liver", volumeNode)
        self.assertFalse(liver[:10].any() or liver[20:].any())
        self.assertTrue(liver[10:20].any())
        self.assertFalse(segmentationNode.GetSegmentation().GetSegmentIdBySegmentName("Tumor"),
                         "liver only: no Tumor segment")

        self.delayDisplay("ROI: nothing outside the box")
        roiNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsROINode")
        bounds = [0.0] * 6
        volumeNode.GetRASBounds(bounds)
        center = [(bounds[0] + bounds[1]) / 2, (bounds[2] + bounds[3]) / 2, (bounds[4] + bounds[5]) / 2]
        roiNode.SetCenter(center)
        roiNode.SetSize([(bounds[1] - bounds[0]) / 2, bounds[3] - bounds[2], bounds[5] - bounds[4]])
        region = logic.regionFor(sitkUtils.PullVolumeFromSlicer(volumeNode), volumeNode, roiNode=roiNode)
        self.assertIsNotNone(region)
        (i0, i1), _j, _k = region
        self.assertLess(i1 - i0, 128)
        segmentationNode2 = logic.process(volumeNode, model=model, device="cpu", roiNode=roiNode, inProcess=True)
        liver = self._segmentArray(segmentationNode2, "Liver", volumeNode)
        self.assertFalse(liver[:, :, :i0].any() or liver[:, :, i1:].any())

        self.delayDisplay("Errors: unknown model, label map input")
        with self.assertRaisesRegex(ValueError, "neither a model file"):
            logic.process(volumeNode, model="/no/such/model.pt")
        labelmap = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
        with self.assertRaisesRegex(ValueError, "label map"):
            logic.process(labelmap, model=model)
        from LiverTumorSegModuleLib.jobs import SegmentationRunError

        with self.assertRaises(SegmentationRunError) as caught:
            logic.process(volumeNode, model=model, thresholds=(0.5,))  # one threshold for two labels
        self.assertIn("thresholds", str(caught.exception))
        self.assertIn("livertumorseg", caught.exception.log)
        self.delayDisplay("Test passed")

    def test_SegmentEditorEffectAndUndo(self):
        import numpy as np

        model = self._model()
        volumeNode, truth = self._phantomVolume()
        from LiverTumorSeg import registerSegmentEditorEffect

        registerSegmentEditorEffect()

        segmentationNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode")
        segmentationNode.CreateDefaultDisplayNodes()
        segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(volumeNode)
        existingId = segmentationNode.GetSegmentation().AddEmptySegment("", "Existing")
        existing = np.zeros(slicer.util.arrayFromVolume(volumeNode).shape, np.uint8)
        existing[2:6, 100:120, 100:120] = 1
        slicer.util.updateSegmentBinaryLabelmapFromArray(existing, segmentationNode, existingId, volumeNode)

        segmentEditorWidget = slicer.qMRMLSegmentEditorWidget()
        segmentEditorWidget.show()  # as the Segment Editor effect template's test does
        segmentEditorWidget.setMRMLScene(slicer.mrmlScene)
        segmentEditorNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentEditorNode")
        segmentEditorNode.SetOverwriteMode(slicer.vtkMRMLSegmentEditorNode.OverwriteNone)  # "Existing" stays as is
        segmentEditorWidget.setMRMLSegmentEditorNode(segmentEditorNode)
        segmentEditorWidget.setSegmentationNode(segmentationNode)
        segmentEditorWidget.setSourceVolumeNode(volumeNode)
        self.assertIn(EFFECT_NAME, segmentEditorWidget.availableEffectNames())

        self.delayDisplay("Applying the Liver Tumor AI effect")
        segmentEditorWidget.setActiveEffectByName(EFFECT_NAME)
        effect = segmentEditorWidget.activeEffect()
        self.assertIsNotNone(effect)
        effect.setParameter("Model", model)
        effect.setParameter("Device", "cpu")
        effect.setParameter("Output", "both")
        effect.self().onApply()
        self._checkSegments(segmentationNode, volumeNode, truth)
        self.assertEqual(segmentationNode.GetSegmentation().GetNumberOfSegments(), 3)
        np.testing.assert_array_equal(self._segmentArray(segmentationNode, "Existing", volumeNode), existing > 0)
        self.assertTrue(segmentEditorNode.GetSelectedSegmentID())

        self.delayDisplay("One undo restores the previous state")
        segmentEditorWidget.undo()
        segmentation = segmentationNode.GetSegmentation()
        self.assertEqual(segmentation.GetNumberOfSegments(), 1)
        self.assertEqual(segmentation.GetNthSegment(0).GetName(), "Existing")
        np.testing.assert_array_equal(self._segmentArray(segmentationNode, "Existing", volumeNode), existing > 0)

        segmentEditorWidget.setActiveEffectByName("")
        segmentEditorWidget.close()
        slicer.mrmlScene.RemoveNode(segmentEditorNode)
        self.delayDisplay("Test passed")

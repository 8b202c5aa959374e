"""The training module's self-test, for Slicer's test runner: phantom CTs with exact ground truth exported from the
scene as a training set and read back."""

import os

import slicer
from slicer.ScriptedLoadableModule import ScriptedLoadableModuleTest


class LiverTumorSegTrainTest(ScriptedLoadableModuleTest):
    """Exports phantom CTs with exact ground truth from the scene and reads the data set back."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_ExportSceneForTraining()
        self.setUp()
        self.test_ExportErrors()

    def _addPhantomCase(self, name: str, shape, orientation: str, segmentNames=("Liver", "Tumour")):
        """A phantom CT and a segmentation of it; Liver is painted over the tumour, as users often do."""
        import numpy as np
        import SimpleITK as sitk
        import sitkUtils
        from LiverTumorSegModuleLib.paths import ensureCorePackagesImportable

        ensureCorePackagesImportable()
        from LiverTumorSegLib.phantom import make_phantom

        ct, labels = make_phantom(shape_zyx=shape, spacing_zyx=(3.0, 2.0, 2.0), seed=7, orientation=orientation,
                                  lesion_diameters_mm=(14.0, 18.0))
        volumeNode = sitkUtils.PushVolumeToSlicer(ct, name=name)
        volumeNode.SetName(name)  # PushVolumeToSlicer makes names unique; scenes can hold equal names
        segmentationNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", name + " segmentation")
        segmentationNode.CreateDefaultDisplayNodes()
        segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(volumeNode)
        truth = sitk.GetArrayFromImage(labels)
        masks = {"Liver": truth >= 1, "Tumour": truth == 2, "Spleen": np.zeros_like(truth, bool)}
        for segmentName in segmentNames:
            segmentId = segmentationNode.GetSegmentation().AddEmptySegment("", segmentName)
            slicer.util.updateSegmentBinaryLabelmapFromArray(masks[segmentName].astype(np.uint8), segmentationNode,
                                                             segmentId, volumeNode)
        return volumeNode, segmentationNode, labels

    def test_ExportSceneForTraining(self):
        import tempfile

        import numpy as np
        import SimpleITK as sitk
        from LiverTumorSegModuleLib.paths import ensureCorePackagesImportable

        ensureCorePackagesImportable()
        from LiverTumorSegTrainLib.datasets import find_cases

        self.delayDisplay("Exporting two phantom CTs")
        # The same node name twice: case ids must be made unique. RAI: a non-LPS direction must survive.
        truths = {"Phantom_CT": self._addPhantomCase("Phantom CT", (20, 60, 70), "LPS")[2],
                  "Phantom_CT_2": self._addPhantomCase("Phantom CT", (22, 64, 72), "RAI")[2]}
        nodesBefore = slicer.mrmlScene.GetNumberOfNodes()

        with tempfile.TemporaryDirectory() as folder:
            from LiverTumorSegTrain import LiverTumorSegTrainLogic

            logic = LiverTumorSegTrainLogic()
            exported = logic.exportSceneForTraining(os.path.join(folder, "data"), layout="lits")
            self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), nodesBefore, "temporary nodes were left behind")
            cases = {case.case_id: case for case in find_cases(exported)}
            self.assertEqual(sorted(cases), sorted(truths))
            for caseId, truth in truths.items():
                ct, labels = cases[caseId].load()
                self.assertEqual(labels.GetSize(), truth.GetSize())
                np.testing.assert_allclose(labels.GetDirection(), truth.GetDirection(), atol=1e-6)
                np.testing.assert_allclose(labels.GetOrigin(), truth.GetOrigin(), atol=1e-3)
                np.testing.assert_allclose(labels.GetSpacing(), truth.GetSpacing(), atol=1e-5)
                np.testing.assert_array_equal(sitk.GetArrayFromImage(labels), sitk.GetArrayFromImage(truth))
        self.delayDisplay("Test passed")

    def test_ExportErrors(self):
        import tempfile

        from LiverTumorSegTrain import LiverTumorSegTrainLogic

        logic = LiverTumorSegTrainLogic()
        with tempfile.TemporaryDirectory() as folder:
            with self.assertRaisesRegex(ValueError, "no CT volume with a segmentation"):
                logic.exportSceneForTraining(folder)
            volumeNode, segmentationNode, _labels = self._addPhantomCase("No liver", (16, 48, 48), "LPS", ("Spleen",))
            with self.assertRaisesRegex(ValueError, "no segmentation with a liver segment"):
                logic.exportSceneForTraining(folder)
            with self.assertRaisesRegex(ValueError, "has no liver segment"):
                logic.exportSceneForTraining(folder, volumeNodes=[(volumeNode, segmentationNode)])
            with self.assertRaisesRegex(ValueError, "layout"):
                logic.exportSceneForTraining(folder, layout="nnunet")
        command = logic.headlessCommand(logic.trainingArguments("DATA"))
        self.assertIn(logic.trainScriptPath(), command)
        self.assertEqual(command[-3:], ["DATA", "-o", "DATA-run"])
        self.delayDisplay("Test passed")

"""The module's segment writer and index geometry (pure): ROIs and slice ranges as index boxes, label masks, and
the effect's source volume as an image."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import SimpleITK as sitk
from LiverTumorSegModuleLib import segments

# --------------------------------------------------------------------------------------------------
# Geometry (pure)
# --------------------------------------------------------------------------------------------------


def oblique_image(size=(20, 30, 10), flip_axes=False) -> sitk.Image:
    image = sitk.Image(list(size), sitk.sitkInt16)
    image.SetSpacing((0.7, 0.9, 2.5))
    image.SetOrigin((-12.0, 30.5, 101.25))
    angle = np.deg2rad(10)
    direction = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    if flip_axes:  # index axis 1 runs along S: axial slices are along j
        direction = direction[:, [0, 2, 1]]
    image.SetDirection(direction.ravel().tolist())
    return image


def test_ijk_to_ras_round_trips_through_an_array_and_a_vtk_extent():
    image = oblique_image()
    matrix = segments.ijkToRasFromImage(image)
    ras = matrix @ np.array([3, 4, 5, 1.0])
    lps = image.TransformIndexToPhysicalPoint((3, 4, 5))
    np.testing.assert_allclose(ras[:3], [-lps[0], -lps[1], lps[2]], atol=1e-9)

    array = np.arange(20 * 30 * 10, dtype=np.int16).reshape(10, 30, 20)
    again = segments.imageFromArray(array, matrix)
    np.testing.assert_allclose(again.GetOrigin(), image.GetOrigin(), atol=1e-9)
    np.testing.assert_allclose(again.GetSpacing(), image.GetSpacing(), atol=1e-12)
    np.testing.assert_allclose(again.GetDirection(), image.GetDirection(), atol=1e-12)
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(again), array)

    # a VTK extent starting at (2, 3, 4): voxel 0 of the array is voxel (2, 3, 4) of the matrix
    shifted = segments.imageFromArray(array, matrix, (2, 3, 4))
    np.testing.assert_allclose(shifted.GetOrigin(), image.TransformIndexToPhysicalPoint((2, 3, 4)), atol=1e-9)


def test_slice_range_is_along_the_axis_closest_to_s():
    image = oblique_image()
    assert segments.sliceAxis(image) == 2
    assert segments.regionFromSliceRange(image, 2, 5) == ((0, 20), (0, 30), (2, 6))
    assert segments.regionFromSliceRange(image, 7, None) == ((0, 20), (0, 30), (7, 10))
    assert segments.regionFromSliceRange(image, 7, 99) == ((0, 20), (0, 30), (7, 10))
    flipped = oblique_image(flip_axes=True)
    assert segments.sliceAxis(flipped) == 1
    assert segments.regionFromSliceRange(flipped, 0, 9) == ((0, 20), (0, 10), (0, 10))
    for bad in ((10, None), (5, 4), (-1, 3)):
        with pytest.raises(ValueError, match="slice range"):
            segments.regionFromSliceRange(image, *bad)


def test_roi_corners_become_the_voxels_whose_centres_are_inside():
    image = oblique_image()
    matrix = segments.ijkToRasFromImage(image)
    # an ROI that is exactly the index box [2.0, 6.0] x [3.0, 10.0] x [1.0, 4.0] (voxel centres on its faces count)
    corners = segments.boxCorners((2, 6, 3, 10, 1, 4), matrix)
    assert len(corners) == 8
    assert segments.regionFromRasPoints(image, corners) == ((2, 7), (3, 11), (1, 5))
    # half a voxel more or less does not change which centres are inside
    assert segments.regionFromRasPoints(image, segments.boxCorners((1.6, 6.4, 2.6, 10.4, 0.6, 4.4), matrix)) == (
        (2, 7), (3, 11), (1, 5))
    # clipped to the image
    assert segments.regionFromRasPoints(image, segments.boxCorners((-5, 50, -5, 50, 8, 30), matrix)) == (
        (0, 20), (0, 30), (8, 10))
    with pytest.raises(ValueError, match="does not overlap"):
        segments.regionFromRasPoints(image, segments.boxCorners((30, 40, 3, 10, 1, 4), matrix))


def test_regions_intersect():
    a, b = ((0, 10), (0, 10), (2, 8)), ((3, 20), (0, 5), (0, 4))
    assert segments.intersectRegions(a, b) == ((3, 10), (0, 5), (2, 4))
    assert segments.intersectRegions(None, b) == b and segments.intersectRegions(a, None) == a
    with pytest.raises(ValueError, match="do not overlap"):
        segments.intersectRegions(a, ((0, 10), (0, 10), (8, 9)))


def test_label_masks():
    labels = sitk.GetImageFromArray(np.array([[[0, 1, 2, 2]]], np.uint8))
    from LiverTumorSegLib.labels import LabelSpec

    masks = segments.labelMasks(labels, [LabelSpec("Liver", 1, (1, 2, 3), ""), LabelSpec("Tumor", 2, (4, 5, 6), "")])
    np.testing.assert_array_equal(masks["Liver"], [[[0, 1, 0, 0]]])
    np.testing.assert_array_equal(masks["Tumor"], [[[0, 0, 1, 1]]])
    assert masks["Liver"].dtype == np.uint8


class OrientedImageShim:
    """What the effect uses of a ``vtkOrientedImageData`` (Slicer's class), over a plain ``vtkImageData``."""

    def __init__(self, image, matrix) -> None:
        self.image, self.matrix = image, matrix

    def GetExtent(self):
        return self.image.GetExtent()

    def GetPointData(self):
        return self.image.GetPointData()

    def GetImageToWorldMatrix(self, matrix) -> None:
        matrix.DeepCopy(self.matrix)


def test_the_effects_source_volume_becomes_an_image_and_masks_go_back_voxel_for_voxel(monkeypatch):
    """The effect reads ``sourceVolumeImageData()`` (a VTK extent that may not start at 0, i fastest) and writes
    masks on the same extent; the voxel order and geometry must survive both ways."""
    import types

    import vtk
    from vtk.util import numpy_support

    image = vtk.vtkImageData()
    image.SetExtent(2, 5, 3, 7, 1, 4)
    image.AllocateScalars(vtk.VTK_SHORT, 1)
    values = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())
    values[:] = np.arange(values.size) - 500
    ras = segments.ijkToRasFromImage(oblique_image())
    matrix = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            matrix.SetElement(r, c, ras[r, c])
    source = OrientedImageShim(image, matrix)

    sitk_image = segments.orientedImageToSitk(source)
    assert sitk_image.GetSize() == (4, 5, 4)
    array = sitk.GetArrayViewFromImage(sitk_image)
    for i, j, k in ((2, 3, 1), (5, 7, 4), (3, 6, 2)):
        assert array[k - 1, j - 3, i - 2] == image.GetScalarComponentAsDouble(i, j, k, 0)
    corner = ras @ np.array([2, 3, 1, 1.0])
    np.testing.assert_allclose(sitk_image.GetOrigin(), [-corner[0], -corner[1], corner[2]], atol=1e-9)

    class FakeOrientedImageData(vtk.vtkImageData):
        def SetImageToWorldMatrix(self, m) -> None:
            self.matrix = vtk.vtkMatrix4x4()
            self.matrix.DeepCopy(m)

    monkeypatch.setitem(sys.modules, "slicer", types.SimpleNamespace(vtkOrientedImageData=FakeOrientedImageData))
    mask = (array > 0).astype(np.uint8)
    back = segments.orientedImageFromMask(mask, source)
    assert back.GetExtent() == image.GetExtent()
    assert all(back.matrix.GetElement(r, c) == matrix.GetElement(r, c) for r in range(4) for c in range(4))
    for i, j, k in ((2, 3, 1), (5, 7, 4), (3, 6, 2), (4, 4, 3)):
        assert back.GetScalarComponentAsDouble(i, j, k, 0) == float(image.GetScalarComponentAsDouble(i, j, k, 0) > 0)
    with pytest.raises(ValueError, match="does not match"):
        segments.orientedImageFromMask(mask[:-1], source)

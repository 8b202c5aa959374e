"""Label maps into segments, and the index geometry between Slicer's grids and SimpleITK images.

Segments: ``ensureSegment`` finds or creates a named segment and sets its colour and SNOMED terminology;
``writeLabelmapToSegments`` writes each label of a label map (on a volume's grid) into its segment,
updating existing segments in place and leaving every other segment alone. The Segment Editor effect
writes through ``scriptedEffect.modifySegmentByLabelmap`` instead (for undo and masking), with the
``vtkOrientedImageData`` made by ``orientedImageFromMask``.

Geometry (pure: numpy and SimpleITK only, tested without Slicer): an image's IJK-to-RAS matrix from a
SimpleITK image and back, and the core's index box for an ROI or a slice range. A SimpleITK image's
physical space is LPS, Slicer's is RAS: the two differ by the sign of x and y.

Slicer, numpy and SimpleITK are imported inside functions: Slicer loads this package at startup.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:  # for annotations only (and the API check): this file imports without Slicer
    from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode, vtkOrientedImageData

    from LiverTumorSegLib.labels import LabelSpec  # the one label record (name, value, colour, terminology)

#: Half-open voxel ranges per ITK index axis: ((i0, i1), (j0, j1), (k0, k1)).
IndexBox = tuple[tuple[int, int], tuple[int, int], tuple[int, int]]
_LPS_FROM_RAS = (-1.0, -1.0, 1.0)


# --------------------------------------------------------------------------------------------------
# Geometry (pure)
# --------------------------------------------------------------------------------------------------


def ijkToRasFromImage(image):
    """The 4x4 IJK-to-RAS matrix (numpy) of a SimpleITK image."""
    import numpy as np

    direction = np.array(image.GetDirection(), dtype=float).reshape(3, 3)
    spacing = np.array(image.GetSpacing(), dtype=float)
    flip = np.diag(_LPS_FROM_RAS)
    matrix = np.eye(4)
    matrix[:3, :3] = flip @ direction @ np.diag(spacing)
    matrix[:3, 3] = flip @ np.array(image.GetOrigin(), dtype=float)
    return matrix


def imageFromArray(arrayKji, ijkToRas, extentStart: Sequence[int] = (0, 0, 0)):
    """A SimpleITK image of a (k, j, i) array whose voxel ``extentStart + (i, j, k)`` maps to RAS by ``ijkToRas``.

    ``extentStart`` is the first index of a VTK extent (``vtkOrientedImageData`` extents need not start at 0).
    """
    import numpy as np
    import SimpleITK as sitk

    m = np.asarray(ijkToRas, dtype=float).reshape(4, 4)
    flip = np.diag(_LPS_FROM_RAS)
    axes = flip @ m[:3, :3]
    spacing = np.linalg.norm(axes, axis=0)
    if np.any(spacing <= 0):
        raise ValueError("the image-to-world matrix has a zero-length axis")
    origin = axes @ np.asarray(extentStart, dtype=float) + flip @ m[:3, 3]
    image = sitk.GetImageFromArray(np.ascontiguousarray(arrayKji))
    image.SetSpacing([float(s) for s in spacing])
    image.SetDirection([float(v) for v in (axes / spacing).ravel()])
    image.SetOrigin([float(v) for v in origin])
    return image


def sliceAxis(image) -> int:
    """ITK index axis of the axial slices: the core's one rule (``geometry.slice_axis``)."""
    from LiverTumorSegLib.geometry import slice_axis

    return slice_axis(image.GetDirection())


def regionFromSliceRange(image, first: int, last: int | None) -> IndexBox:
    """The index box of slices ``first..last`` (inclusive, 0-based; ``last`` None: to the end) along the
    axis closest to S, the whole image along the other two."""
    size = list(image.GetSize())
    axis = sliceAxis(image)
    n = size[axis]
    stop = n if last is None else int(last) + 1
    start = int(first)
    if not 0 <= start < n or stop <= start:
        raise ValueError(f"slice range {first}..{'end' if last is None else last} is not inside the volume's "
                         f"{n} slices (0..{n - 1})")
    box = [(0, s) for s in size]
    box[axis] = (start, min(stop, n))
    return tuple(box)  # type: ignore[return-value]


def regionFromRasPoints(image, pointsRas: Sequence[Sequence[float]]) -> IndexBox:
    """The index box of the voxels whose centres lie inside the axis-aligned (in index space) hull of RAS points,
    e.g. the 8 corners of an ROI box; clipped to the image. Raises ValueError when it misses the image."""
    import numpy as np

    flip = np.array(_LPS_FROM_RAS)
    indices = np.array([image.TransformPhysicalPointToContinuousIndex([float(v) for v in np.asarray(p) * flip])
                        for p in pointsRas], dtype=float)
    low, high = indices.min(axis=0), indices.max(axis=0)
    eps = 1e-6
    box = []
    for axis, n in enumerate(image.GetSize()):
        start = max(0, math.ceil(low[axis] - eps))
        stop = min(n, math.floor(high[axis] + eps) + 1)
        if stop <= start:
            raise ValueError("the region of interest does not overlap the volume: move or resize the ROI")
        box.append((int(start), int(stop)))
    return tuple(box)  # type: ignore[return-value]


def boxCorners(bounds: Sequence[float], matrix) -> list[list[float]]:
    """The 8 corners of bounds (xmin, xmax, ymin, ymax, zmin, zmax) mapped by a 4x4 matrix (numpy-able)."""
    import itertools

    import numpy as np

    m = np.asarray(matrix, dtype=float).reshape(4, 4)
    corners = []
    for x, y, z in itertools.product(bounds[0:2], bounds[2:4], bounds[4:6]):
        corners.append(list((m @ np.array([x, y, z, 1.0]))[:3]))
    return corners


def intersectRegions(a: IndexBox | None, b: IndexBox | None) -> IndexBox | None:
    """The overlap of two index boxes (None means the whole image)."""
    if a is None:
        return b
    if b is None:
        return a
    box = tuple((max(p[0], q[0]), min(p[1], q[1])) for p, q in zip(a, b))
    if any(stop <= start for start, stop in box):
        raise ValueError("the region of interest and the slice range do not overlap")
    return box  # type: ignore[return-value]


def labelMasks(labels, specs: Sequence[LabelSpec]):
    """{spec name: uint8 (k, j, i) mask} of each label of a label map."""
    import numpy as np
    import SimpleITK as sitk

    arr = sitk.GetArrayViewFromImage(labels)
    return {spec.name: (arr == spec.value).astype(np.uint8) for spec in specs}


# --------------------------------------------------------------------------------------------------
# Slicer
# --------------------------------------------------------------------------------------------------


def vtkMatrixToNumpy(vtkMatrix):
    import numpy as np

    return np.array([[vtkMatrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def ensureSegment(segmentationNode: vtkMRMLSegmentationNode, name: str, color: Sequence[int],
                  terminology: str = "") -> str:
    """The id of the segment called ``name`` (created, empty, if missing), with colour and terminology set.

    The terminology goes in the ``TerminologyEntry`` tag, which every Slicer since 5.6 reads (as
    TotalSegmentator and MONAIAuto3DSeg write it); ``vtkSegment.SetTerminology`` would need 5.10.
    """
    segmentation = segmentationNode.GetSegmentation()
    segmentId = segmentation.GetSegmentIdBySegmentName(name)
    if not segmentId:
        segmentId = segmentation.AddEmptySegment(segmentation.GenerateUniqueSegmentID(name), name)
    segment = segmentation.GetSegment(segmentId)
    segment.SetColor(*[float(c) / 255.0 for c in color[:3]])
    segment.SetColorAutoGenerated(False)
    if terminology:
        segment.SetTag(segment.GetTerminologyEntryTagName(), terminology)
    return segmentId


def writeLabelmapToSegments(segmentationNode: vtkMRMLSegmentationNode, labelsImage,
                            volumeNode: vtkMRMLScalarVolumeNode, specs: Sequence[LabelSpec]) -> list[str]:
    """Write each label of ``labelsImage`` (on ``volumeNode``'s voxel grid) into the segment of its name.

    Existing segments of those names are updated in place (content replaced, colour and terminology set),
    new ones are created, and no other segment is modified. Parent transforms of the volume and the
    segmentation are taken into account by Slicer's import. Returns the segment ids in ``specs`` order.
    """
    import slicer

    imageData = volumeNode.GetImageData()
    expected = tuple(reversed(imageData.GetDimensions())) if imageData is not None else None
    masks = labelMasks(labelsImage, specs)
    segmentIds = []
    for spec in specs:
        mask = masks[spec.name]
        if expected is not None and tuple(mask.shape) != expected:
            raise ValueError(f"the label map has {tuple(reversed(mask.shape))} voxels but volume "
                             f"'{volumeNode.GetName()}' has {tuple(reversed(expected))}")
        segmentId = ensureSegment(segmentationNode, spec.name, spec.color, spec.terminology)
        slicer.util.updateSegmentBinaryLabelmapFromArray(mask, segmentationNode, segmentId, volumeNode)
        segmentIds.append(segmentId)
    return segmentIds


def placeUnderVolumeStudy(segmentationNode: vtkMRMLSegmentationNode, volumeNode: vtkMRMLScalarVolumeNode) -> None:
    """Put the segmentation next to its volume in the subject hierarchy (same study or folder)."""
    import slicer

    shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(slicer.mrmlScene)
    volumeItem = shNode.GetItemByDataNode(volumeNode)
    segmentationItem = shNode.GetItemByDataNode(segmentationNode)
    if volumeItem and segmentationItem:
        shNode.SetItemParent(segmentationItem, shNode.GetItemParent(volumeItem))


def orientedImageToSitk(orientedImage: vtkOrientedImageData):
    """A SimpleITK image of a single-component ``vtkOrientedImageData`` (e.g. the effect's source volume)."""
    import vtk
    from vtk.util import numpy_support

    extent = orientedImage.GetExtent()
    dims = (extent[1] - extent[0] + 1, extent[3] - extent[2] + 1, extent[5] - extent[4] + 1)
    scalars = orientedImage.GetPointData().GetScalars()
    if scalars is None or min(dims) < 1:
        raise ValueError("the source volume is empty")
    if scalars.GetNumberOfComponents() != 1:
        raise ValueError("the source volume has several components per voxel; a CT has one")
    array = numpy_support.vtk_to_numpy(scalars).reshape(dims[::-1])
    matrix = vtk.vtkMatrix4x4()
    orientedImage.GetImageToWorldMatrix(matrix)
    return imageFromArray(array, vtkMatrixToNumpy(matrix), (extent[0], extent[2], extent[4]))


def orientedImageFromMask(maskKji, referenceImage: vtkOrientedImageData) -> vtkOrientedImageData:
    """A uint8 ``vtkOrientedImageData`` of a (k, j, i) mask, with the extent and geometry of ``referenceImage``."""
    import numpy as np
    import slicer
    import vtk
    from vtk.util import numpy_support

    extent = referenceImage.GetExtent()
    dims = (extent[1] - extent[0] + 1, extent[3] - extent[2] + 1, extent[5] - extent[4] + 1)
    if tuple(maskKji.shape) != dims[::-1]:
        raise ValueError(f"mask shape {maskKji.shape} does not match the reference extent {extent}")
    image = slicer.vtkOrientedImageData()
    image.SetExtent(*extent)
    matrix = vtk.vtkMatrix4x4()
    referenceImage.GetImageToWorldMatrix(matrix)
    image.SetImageToWorldMatrix(matrix)
    image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())[:] = np.asarray(maskKji, np.uint8).ravel()
    image.Modified()
    return image

"""Synthetic abdominal CT phantoms with exact ground truth.

Real liver CT (LiTS, MSD, hospital data) cannot ship with the code, is slow to download, and its
labels are themselves imperfect human annotations. Tests, the demo, training smoke tests and the
benchmark need something else: a CT-like volume that is generated in milliseconds to seconds,
deterministically from a seed, in any size, spacing and orientation, and whose labels are *exactly*
known because the labels are drawn first and the image is painted from them. Such a phantom lets a
test assert that orientation handling, resampling, post-processing or a whole pipeline give the
right answer, which no real scan can do.

The phantom is built in a canonical frame: array axes (z, y, x) = (slice, row, column) of an LPS
image with identity direction, i.e. z grows towards the head, y from anterior to posterior, x from
the patient's right to the patient's left (the liver therefore sits at low x, the spine at high y).
All anatomy is described in physical millimetres so that it has a realistic size whatever the
spacing; when the field of view is too small for a real abdomen, the in-plane anatomy is scaled down
as a whole (and the cranio-caudal anatomy with the liver length) so that everything stays inside.

Label values follow the LiTS convention: 0 background, 1 liver (hepatic vessels inside the liver
included), 2 tumour. The liver label (1 or 2) is one 6-connected component without enclosed holes,
every lesion is surrounded by at least one voxel of liver, and lesions never touch each other.

Large volumes are painted in slabs of a few slices in float32, so a 512 x 512 x 300 phantom costs
little more memory than its int16/uint8 output arrays.
"""

from .api import make_phantom, make_phantom_with_info, rotate_direction
from .constants import BACKGROUND_LABEL, LIVER_LABEL, TUMOR_LABEL
from .info import LesionInfo, PhantomInfo

__all__ = [
    "BACKGROUND_LABEL",
    "LIVER_LABEL",
    "TUMOR_LABEL",
    "LesionInfo",
    "PhantomInfo",
    "make_phantom",
    "make_phantom_with_info",
    "rotate_direction",
]

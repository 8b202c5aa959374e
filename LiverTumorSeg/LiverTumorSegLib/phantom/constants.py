"""Label values, intensity limits and sizes shared by the phantom's modules."""

from __future__ import annotations

import numpy as np

#: Label values (LiTS convention).
BACKGROUND_LABEL = 0
LIVER_LABEL = 1
TUMOR_LABEL = 2

AIR_HU = -1000.0
HU_MIN, HU_MAX = -1024, 3071

#: Minimum and maximum diameter of randomly drawn lesions (mm).
LESION_MIN_MM, LESION_MAX_MM = 3.0, 60.0

#: Voxels per painting slab: large enough that numpy overhead is negligible, small enough that the
#: handful of float32 temporaries per slab stay at a few tens of MB.
SLAB_VOXELS = 2_000_000

DTYPES = {"int16": np.int16, "int32": np.int32, "float32": np.float32}

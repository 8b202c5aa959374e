"""Checking an image file against its own header before the image library reads it.

ITK reads a truncated ``.nii.gz`` (or a header claiming more voxels than the file holds) without a word,
zero-filling what is missing: a liver then comes out 12x too large, or a 512x512x4000 header allocates
gigabytes and runs for minutes. Its NIfTI reader also turns NaN and infinite voxels into 0 and replaces
a zero ``pixdim`` by 1 mm. So for the formats users hand us (NIfTI, NRRD, MetaImage) the data stream is
measured and, for float data, scanned, before any voxel is allocated; a lie gets one line naming the file
and the fix.
"""

from __future__ import annotations

import gzip
import math
import re
import struct
import zlib
from pathlib import Path

import numpy as np

from .errors import InputImageError

#: more voxels than any CT holds (a 512 x 512 x 8192 volume is 2^31): a damaged header, never allocated
MAX_VOXELS = 1 << 31
_CHUNK = 1 << 24

# NIfTI datatype codes: (numpy dtype, bytes per element); complex and RGB types are not CT
_NIFTI_TYPES = {2: "u1", 4: "i2", 8: "i4", 16: "f4", 64: "f8", 256: "i1", 512: "u2", 768: "u4", 1024: "i8",
                1280: "u8"}
_NRRD_TYPES = {"signed char": "i1", "int8": "i1", "int8_t": "i1", "uchar": "u1", "unsigned char": "u1", "uint8": "u1",
               "uint8_t": "u1", "short": "i2", "short int": "i2", "signed short": "i2", "signed short int": "i2",
               "int16": "i2", "int16_t": "i2", "ushort": "u2", "unsigned short": "u2", "unsigned short int": "u2",
               "uint16": "u2", "uint16_t": "u2", "int": "i4", "signed int": "i4", "int32": "i4", "int32_t": "i4",
               "uint": "u4", "unsigned int": "u4", "uint32": "u4", "uint32_t": "u4", "longlong": "i8",
               "long long": "i8", "int64": "i8", "int64_t": "i8", "ulonglong": "u8", "unsigned long long": "u8",
               "uint64": "u8", "uint64_t": "u8", "float": "f4", "double": "f8"}
_META_TYPES = {"MET_CHAR": "i1", "MET_UCHAR": "u1", "MET_SHORT": "i2", "MET_USHORT": "u2", "MET_INT": "i4",
               "MET_UINT": "u4", "MET_LONG": "i4", "MET_ULONG": "u4", "MET_LONG_LONG": "i8", "MET_ULONG_LONG": "u8",
               "MET_FLOAT": "f4", "MET_DOUBLE": "f8"}


def _fail(path: Path, problem: str, fix: str = "export or copy the file again") -> InputImageError:
    return InputImageError(f"{path.name}: {problem}; {fix}")


def _check_count(path: Path, shape: tuple[int, ...]) -> int:
    n = math.prod(shape)
    if n <= 0:
        raise _fail(path, f"its header describes an empty image ({' x '.join(map(str, shape))})")
    if n > MAX_VOXELS:
        raise _fail(path, f"its header claims {' x '.join(map(str, shape))} = {n:,} voxels, more than any CT "
                          f"(the header is damaged)")
    return n


class _Stream:
    """Counts the bytes of a data stream (up to ``limit``) and, for float data, its NaN/inf values."""

    def __init__(self, dtype: str, endian: str, limit: int, skip: int = 0):
        self.dtype = np.dtype(dtype).newbyteorder(endian)
        self.limit = limit
        self.bytes = 0
        self.bad = 0
        self._rest = b""
        self._skip = skip  # leading bytes that are not voxel data (a .nii.gz's header)

    @property
    def full(self) -> bool:
        return self.bytes >= self.limit

    def feed(self, chunk: bytes) -> None:
        if self._skip:
            dropped = min(self._skip, len(chunk))
            chunk, self._skip = chunk[dropped:], self._skip - dropped
        chunk = chunk[: self.limit - self.bytes]
        self.bytes += len(chunk)
        if self.dtype.kind != "f":
            return
        data = self._rest + chunk
        usable = len(data) - len(data) % self.dtype.itemsize
        self._rest = data[usable:]
        values = np.frombuffer(data[:usable], dtype=self.dtype)
        self.bad += int(values.size - np.count_nonzero(np.isfinite(values)))


def _read_plain(path: Path, offset: int, stream: _Stream) -> None:
    with open(path, "rb") as f:
        f.seek(offset)
        while not stream.full and (chunk := f.read(_CHUNK)):
            stream.feed(chunk)


def _read_compressed(path: Path, offset: int, stream: _Stream, kind: str) -> None:
    """Decompress gzip (a ``.nii.gz``, NRRD's gzip encoding) or zlib (MetaImage) data starting at byte ``offset``
    of the file, incrementally: a truncated stream still yields everything it holds."""
    try:
        inflate = zlib.decompressobj(16 + zlib.MAX_WBITS if kind == "gzip" else zlib.MAX_WBITS)
        with open(path, "rb") as f:
            f.seek(offset)
            while not stream.full and (raw := f.read(_CHUNK)):
                stream.feed(inflate.decompress(raw, _CHUNK * 8))
                while inflate.unconsumed_tail and not stream.full:
                    stream.feed(inflate.decompress(inflate.unconsumed_tail, _CHUNK * 8))
    except (OSError, zlib.error):
        pass  # a damaged stream: the byte count says how much it held


def _verdict(path: Path, stream: _Stream, needed: int, what: str) -> None:
    if stream.bytes < needed:
        raise _fail(path, f"the file is truncated or damaged: its header describes {needed:,} bytes of {what}, "
                          f"the file holds {stream.bytes:,}")
    if stream.bad:
        raise _fail(path, f"{stream.bad} voxels are NaN or infinite (the image library would read them as 0)",
                    "fix the export, e.g. fill them with -1000 HU, and try again")


# ---- NIfTI ----------------------------------------------------------------------------------------


def _check_nifti(path: Path, compressed: bool) -> None:
    try:
        if compressed:
            with gzip.open(path, "rb") as f:
                head = f.read(544)
        else:
            with open(path, "rb") as f:
                head = f.read(544)
    except (OSError, EOFError, zlib.error) as e:
        raise _fail(path, f"it cannot be decompressed ({type(e).__name__})") from None
    if len(head) < 348:
        raise _fail(path, f"it holds {len(head)} bytes, less than a NIfTI header")
    for endian in "<>":
        size = struct.unpack(endian + "i", head[:4])[0]
        if size in (348, 540):
            break
    else:
        raise _fail(path, "it is not a NIfTI file (bad header size)", "give a NIfTI, NRRD or MHA file")
    if size == 348:
        dims = struct.unpack(endian + "8h", head[40:56])
        datatype = struct.unpack(endian + "h", head[70:72])[0]
        pixdim = struct.unpack(endian + "8f", head[76:108])
        vox_offset = int(struct.unpack(endian + "f", head[108:112])[0])
    else:
        if len(head) < 540:
            raise _fail(path, "its NIfTI-2 header is incomplete")
        datatype = struct.unpack(endian + "h", head[12:14])[0]
        dims = struct.unpack(endian + "8q", head[16:80])
        pixdim = struct.unpack(endian + "8d", head[104:168])
        vox_offset = struct.unpack(endian + "q", head[168:176])[0]
    ndim = int(dims[0])
    if not 1 <= ndim <= 7:
        raise _fail(path, f"its header gives {ndim} dimensions")
    shape = tuple(int(d) for d in dims[1:ndim + 1])
    spatial = [float(p) for p in pixdim[1:min(ndim, 3) + 1]]
    if any(not math.isfinite(p) or p <= 0 for p in spatial):
        raise _fail(path, f"its voxel spacing (pixdim) is {tuple(spatial)} mm, not positive (the image library would "
                          f"silently use 1 mm or flip the axis)", "fix the header's pixdim")
    n = _check_count(path, shape)
    dtype = _NIFTI_TYPES.get(int(datatype))
    if dtype is None:
        return  # complex or RGB: validation says why it is not CT
    needed = n * np.dtype(dtype).itemsize
    if compressed:
        stream = _Stream(dtype, endian, needed, skip=vox_offset)  # the header and extensions are in the stream
        _read_compressed(path, 0, stream, "gzip")
    else:
        stream = _Stream(dtype, endian, needed)
        _read_plain(path, vox_offset, stream)
    _verdict(path, stream, needed, "voxel data")


def _check_axes(path: Path, spacing: list[float] | None, axes: list[list[float]] | None) -> None:
    """Spacings must be positive and axis directions independent: ITK refuses such headers with messages like
    "0 0 1", or silently substitutes 1 mm."""
    if spacing is not None and any(not math.isfinite(v) or v <= 0 for v in spacing):
        raise _fail(path, f"its voxel spacing {tuple(spacing)} mm is not positive", "fix the image header")
    if axes:
        matrix = np.asarray(axes, dtype=float)
        norms = np.linalg.norm(matrix, axis=1)
        if not np.all(np.isfinite(matrix)) or np.any(norms <= 0):
            raise _fail(path, "an axis of its grid has zero length (spacing 0)", "fix the image header")
        if matrix.shape[0] == matrix.shape[1] and abs(np.linalg.det(matrix / norms[:, None])) < 1e-3:
            raise _fail(path, "two axes of its grid point the same way (singular direction matrix)",
                        "fix the image header")


# ---- NRRD -----------------------------------------------------------------------------------------


def _text_header(path: Path, end) -> tuple[dict[str, str], int]:
    """Key/value lines of a text header, and the byte offset where the data starts (``end(line)``)."""
    fields: dict[str, str] = {}
    offset = 0
    with open(path, "rb") as f:
        for raw in iter(lambda: f.readline(1 << 16), b""):
            offset += len(raw)
            line = raw.decode("latin-1").rstrip("\r\n")
            stop, key_value = end(line)
            if key_value:
                fields[key_value[0]] = key_value[1]
            if stop:
                return fields, offset
            if offset > (1 << 20):
                break
    return fields, -1


def _nrrd_line(line: str):
    if line == "":
        return True, None
    match = re.match(r"^([^:#][^:]*):=?\s*(.*)$", line)
    return False, ((match.group(1).strip().lower(), match.group(2).strip()) if match else None)


def _check_nrrd(path: Path) -> None:
    fields, offset = _text_header(path, _nrrd_line)
    if "sizes" not in fields or "type" not in fields:
        raise _fail(path, "its NRRD header has no 'sizes' or 'type' line")
    try:
        shape = tuple(int(v) for v in fields["sizes"].split())
    except ValueError:
        raise _fail(path, f"its NRRD sizes {fields['sizes']!r} are not whole numbers") from None
    n = _check_count(path, shape)
    vectors = re.findall(r"\(([^)]*)\)", fields.get("space directions", ""))
    try:
        axes = [[float(v) for v in vec.split(",")] for vec in vectors] or None
        spacing = [float(v) for v in fields["spacings"].split()] if "spacings" in fields else None
    except ValueError:
        raise _fail(path, "its NRRD space directions or spacings are not numbers", "fix the image header") from None
    _check_axes(path, [v for v in spacing if not math.isnan(v)] if spacing else None, axes)
    dtype = _NRRD_TYPES.get(fields["type"].lower())
    encoding = fields.get("encoding", "raw").lower()
    if dtype is None or encoding not in ("raw", "gzip", "gz") or any(k in fields for k in ("line skip", "byte skip")):
        return  # rare layouts: left to the reader
    data_file = fields.get("data file") or fields.get("datafile")
    if data_file:
        if data_file.startswith("LIST") or " " in data_file.strip():
            return
        source, start = path.parent / data_file, 0
        if not source.is_file():
            raise _fail(path, f"its data file {data_file} is missing", "keep the .raw/.gz file beside the header")
    else:
        if offset < 0:
            raise _fail(path, "its NRRD header never ends (no blank line before the data)")
        source, start = path, offset
    endian = ">" if fields.get("endian", "little").lower() == "big" else "<"
    needed = n * np.dtype(dtype).itemsize
    stream = _Stream(dtype, endian, needed)
    if encoding == "raw":
        _read_plain(source, start, stream)
    else:
        _read_compressed(source, start, stream, "gzip")
    _verdict(path, stream, needed, "voxel data")


# ---- MetaImage ------------------------------------------------------------------------------------


def _meta_line(line: str):
    match = re.match(r"^\s*(\w+)\s*=\s*(.*?)\s*$", line)
    if not match:
        return False, None
    return match.group(1) == "ElementDataFile", (match.group(1), match.group(2))


def _check_meta(path: Path) -> None:
    fields, offset = _text_header(path, _meta_line)
    if "DimSize" not in fields or "ElementType" not in fields or "ElementDataFile" not in fields:
        raise _fail(path, "its MetaImage header lacks DimSize, ElementType or ElementDataFile")
    try:
        shape = tuple(int(v) for v in fields["DimSize"].split())
        channels = int(fields.get("ElementNumberOfChannels", "1"))
    except ValueError:
        raise _fail(path, f"its DimSize {fields['DimSize']!r} is not whole numbers") from None
    n = _check_count(path, shape) * max(1, channels)
    try:
        spacing = [float(v) for v in fields.get("ElementSpacing", fields.get("ElementSize", "")).split()] or None
        matrix = [float(v) for v in fields.get("TransformMatrix", "").split()]
    except ValueError:
        raise _fail(path, "its ElementSpacing or TransformMatrix are not numbers", "fix the image header") from None
    k = len(shape)
    _check_axes(path, spacing, [matrix[i * k:(i + 1) * k] for i in range(k)] if len(matrix) == k * k else None)
    dtype = _META_TYPES.get(fields["ElementType"].upper())
    data_file = fields["ElementDataFile"]
    if dtype is None or data_file.upper().startswith("LIST") or "%" in data_file:
        return
    if data_file.upper() == "LOCAL":
        source, start = path, offset
    else:
        source, start = path.parent / data_file, 0
        if not source.is_file():
            raise _fail(path, f"its data file {data_file} is missing", "keep the .raw/.zraw file beside the header")
    msb = fields.get("BinaryDataByteOrderMSB", fields.get("ElementByteOrderMSB", "False")).lower() == "true"
    needed = n * np.dtype(dtype).itemsize
    stream = _Stream(dtype, ">" if msb else "<", needed)
    if fields.get("CompressedData", "False").lower() == "true":
        _read_compressed(source, start, stream, "zlib")
    else:
        _read_plain(source, start, stream)
    _verdict(path, stream, needed, "voxel data")


def check_image_file(path: str | Path) -> None:
    """Raise InputImageError if an image file's data does not match its header (truncated, damaged, a header
    lying about the size), holds NaN/infinite values, or has a non-positive spacing. Formats other than
    NIfTI, NRRD and MetaImage (and DICOM) are left to the reader."""
    path = Path(path)
    low = path.name.lower()
    if low.endswith(".nii.gz"):
        _check_nifti(path, compressed=True)
    elif low.endswith(".nii"):
        _check_nifti(path, compressed=False)
    elif low.endswith((".nrrd", ".nhdr")):
        _check_nrrd(path)
    elif low.endswith((".mha", ".mhd")):
        _check_meta(path)

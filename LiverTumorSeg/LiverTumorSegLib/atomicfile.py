"""Atomic file writing: a result exists under its real name only once it is complete.

A crash, a Ctrl-C or an exception while writing a big image must never leave a truncated file where
Slicer or a later step would take it for a valid result, and an existing result is never replaced
unless the user asked for it.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from pathlib import Path
from typing import Any, Iterator

import SimpleITK as sitk


def _full_suffix(name: str) -> str:
    """``.nii.gz`` for ``ct.nii.gz``, ``.seg.nrrd`` for ``a.seg.nrrd`` (writers choose the format by it)."""
    stripped = name.lstrip(".")
    dot = stripped.find(".")
    return stripped[dot:] if dot >= 0 else ""


@contextlib.contextmanager
def atomic_path(final_path: str | os.PathLike, overwrite: bool = False) -> Iterator[str]:
    """Yield a temporary path to write to; it becomes ``final_path`` only if the block succeeds.

    Why: a crash, a Ctrl-C or an exception while writing a big image must never leave a truncated file
    under the real name, where Slicer or a later pipeline step would take it for a valid result. The
    temporary file lies in the same directory (so ``os.replace`` is an atomic rename on the same file
    system) and has the same full suffix (``.nii.gz``, ``.seg.nrrd``, ``.json``, ``.pt``), because writers
    such as SimpleITK pick the file format from the extension. Its name starts with a dot and contains
    ``.tmp`` so that it is recognisable, e.g. ``.case1.3f9a1c0b.tmp.seg.nrrd``.

    The parent directory is created if missing. The temporary file is not created here: the writer
    creates it (so it gets the usual permissions); if the block ends normally without having written it,
    ``FileNotFoundError`` is raised. On any exception the temporary file is removed and the exception
    propagates; an existing final file is then left untouched.

    Raises ``FileExistsError`` if ``final_path`` exists and ``overwrite`` is false.
    """
    final = Path(final_path)
    if final.exists() and not overwrite:
        raise FileExistsError(f"{final} exists; pass --overwrite to replace it")
    if final.is_dir():
        raise IsADirectoryError(f"{final} is a directory, not a file")
    final.parent.mkdir(parents=True, exist_ok=True)
    suffix = _full_suffix(final.name)
    stem = final.name[: len(final.name) - len(suffix)] if suffix else final.name
    while True:
        temp = final.parent / f".{stem.lstrip('.')}.{secrets.token_hex(4)}.tmp{suffix}"
        if not temp.exists():
            break
    try:
        yield str(temp)
        if not temp.exists():
            raise FileNotFoundError(f"nothing was written to the temporary file {temp} for {final}")
        os.replace(temp, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()
        raise


def write_json_atomic(path: str | os.PathLike, obj: Any, overwrite: bool = False) -> None:
    """Write ``obj`` as indented UTF-8 JSON, atomically (a reader never sees half a report)."""
    with atomic_path(path, overwrite=overwrite) as temp:
        with open(temp, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=2, ensure_ascii=False, allow_nan=False)
            f.write("\n")


def write_text_atomic(path: str | os.PathLike, text: str, overwrite: bool = False) -> None:
    """UTF-8 text, atomically. The encoding is explicit: ITK's DICOM reader can switch the process locale
    to "C", after which Python's default text encoding is ASCII."""
    with atomic_path(path, overwrite=overwrite) as temp:
        with open(temp, "w", encoding="utf-8", newline="") as f:
            f.write(text)


def write_image_atomic(image: sitk.Image, path: str | os.PathLike, overwrite: bool = False,
                       compress: bool = True) -> None:
    """Write a SimpleITK image atomically; the format follows the extension of ``path``."""
    with atomic_path(path, overwrite=overwrite) as temp:
        sitk.WriteImage(image, temp, useCompression=compress)

"""Atomic file writing: a result exists under its real name only once it is complete.

A crash, a Ctrl-C or an exception while writing a big image must never leave a truncated file where
Slicer or a later step would take it for a valid result, and an existing result is never replaced
unless the user asked for it.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import SimpleITK as sitk

from .errors import OutputError, OutputExistsError


def _full_suffix(name: str) -> str:
    """``.nii.gz`` for ``ct.nii.gz``, ``.seg.nrrd`` for ``a.seg.nrrd`` (writers choose the format by it)."""
    stripped = name.lstrip(".")
    dot = stripped.find(".")
    return stripped[dot:] if dot >= 0 else ""


#: a temporary file whose writer is gone is removed by the next write of the same name; one without a
#: process id (older LiverTumorSeg) once it is this old
_STALE_SECONDS = 24 * 3600
_IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # someone else's process: leave its file alone
    return True


def remove_stale_temporaries(final: Path) -> list[Path]:
    """Remove temporary files of ``final`` left by killed runs (their process is gone); returns them."""
    suffix = _full_suffix(final.name)
    stem = final.name[: len(final.name) - len(suffix)] if suffix else final.name
    prefix = f".{stem.lstrip('.')}."
    removed = []
    try:
        candidates = [p for p in final.parent.iterdir()
                      if p.name.startswith(prefix) and p.name.endswith(f".tmp{suffix}")]
    except OSError:
        return removed
    for path in candidates:
        tag = path.name[len(prefix):-len(f".tmp{suffix}")]
        pid_text = tag.split("-", 1)[0] if "-" in tag else ""
        try:
            stale = (not _process_alive(int(pid_text))) if pid_text.isdigit() else \
                time.time() - path.stat().st_mtime > _STALE_SECONDS
            if stale:
                path.unlink()
                removed.append(path)
        except OSError:
            continue
    return removed


def output_error(error: OSError, path: str | os.PathLike, doing: str = "write") -> OutputError:
    """An OSError while writing ``path`` as one line naming the problem and the fix."""
    path = Path(path)
    folder = path.parent
    code = getattr(error, "errno", None)
    if code in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
        return OutputError(f"cannot {doing} {path}: no space left (disk full, quota or file-size limit); free some "
                           f"space or choose another output folder")
    if code in (errno.EACCES, errno.EPERM, errno.EROFS):
        return OutputError(f"cannot {doing} {path}: {folder} is read-only or not writable for you; choose a "
                           f"writable output folder")
    if code == errno.ENOTDIR:
        return OutputError(f"cannot {doing} {path}: a part of that path is a file, not a folder; choose another "
                           f"output location")
    if code == errno.EISDIR:
        return OutputError(f"cannot {doing} {path}: it is a folder; give a file name")
    if code == errno.ENAMETOOLONG:
        return OutputError(f"cannot {doing} {path}: the name is too long; choose a shorter output path")
    return OutputError(f"cannot {doing} {path}: {error.strerror or error}; check the output location")


def ensure_output_folder(folder: str | os.PathLike) -> Path:
    """Create an output folder (and its parents) and prove it writable, or say in one line why not."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"{folder} is a file, not a folder; give a folder for the outputs")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".livertumorseg-write-test.{os.getpid()}-{secrets.token_hex(4)}.tmp"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise output_error(e, folder, "write to") from None
    return folder


def check_written_image(temp: str | os.PathLike, final: str | os.PathLike) -> None:
    """Catch image writers that fail without raising (ITK's NIfTI writer on a full disk): the written file must
    be non-empty and hold all the data its header describes."""
    from .errors import InputImageError
    from .filecheck import check_image_file

    temp, final = Path(temp), Path(final)
    if temp.stat().st_size == 0:
        raise OutputError(f"writing {final} failed: the written file is empty (disk full?); free some space or "
                          f"choose another output folder")
    try:
        check_image_file(temp)
    except InputImageError:
        raise OutputError(f"writing {final} failed: the written file is incomplete (disk full or file-size "
                          f"limit?); free some space or choose another output folder") from None


@contextlib.contextmanager
def atomic_path(final_path: str | os.PathLike, overwrite: bool = False,
                check: Callable[[str, Path], None] | None = None) -> Iterator[str]:
    """Yield a temporary path to write to; it becomes ``final_path`` only if the block succeeds and what it
    wrote is complete.

    Why: a crash, a Ctrl-C, an exception or a full disk while writing a big image must never leave a truncated
    file under the real name, where Slicer or a later pipeline step would take it for a valid result. The
    temporary file lies in the same directory (so ``os.replace`` is an atomic rename on the same file system)
    and has the same full suffix (``.nii.gz``, ``.seg.nrrd``, ``.json``, ``.pt``), because writers such as
    SimpleITK pick the file format from the extension. Its name starts with a dot and carries the writing
    process's id, e.g. ``.case1.4242-3f9a1c0b.tmp.seg.nrrd``, so the next write of the same name removes
    temporaries whose process is gone (a killed run).

    The parent directory is created if missing. The temporary file is not created here: the writer
    creates it (so it gets the usual permissions). Before the rename, ``check(temp, final)`` may verify what
    was written (``check_written_image`` for images). On any exception the temporary file is removed and the
    exception propagates (``OSError`` as a one-line ``OutputError``); an existing final file is then left untouched.

    Raises ``OutputError`` if ``final_path`` exists and ``overwrite`` is false, or names a folder.
    """
    final = Path(final_path)
    if final.is_dir():
        raise OutputError(f"{final} is a folder; give a file name for this output")
    if final.exists() and not overwrite:
        raise OutputExistsError(f"{final} exists; pass --overwrite to replace it")
    if final.parent.exists() and not final.parent.is_dir():
        raise OutputError(f"cannot write {final}: {final.parent} is a file, not a folder; choose another output "
                          f"location")
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise output_error(e, final) from None
    remove_stale_temporaries(final)
    suffix = _full_suffix(final.name)
    stem = final.name[: len(final.name) - len(suffix)] if suffix else final.name
    while True:
        temp = final.parent / f".{stem.lstrip('.')}.{os.getpid()}-{secrets.token_hex(4)}.tmp{suffix}"
        if not temp.exists():
            break
    try:
        try:
            yield str(temp)
            if not temp.exists():
                raise OutputError(f"writing {final} failed: nothing was written; check the output folder")
            if check is not None:
                check(str(temp), final)
            os.replace(temp, final)
        except OutputError:
            raise
        except OSError as e:
            raise output_error(e, final) from None
    except BaseException:
        with contextlib.suppress(OSError):
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
    from .native import quiet_native_output

    with atomic_path(path, overwrite=overwrite, check=check_written_image) as temp:
        with quiet_native_output():
            try:
                sitk.WriteImage(image, temp, useCompression=compress)
            except RuntimeError as e:
                reason = [line for line in str(e).splitlines() if line.strip()][-1:] or ["unknown reason"]
                raise OutputError(f"writing {path} failed ({reason[0].strip()[:120]}); check free space and the "
                                  f"output folder") from None


def torch_save_atomic(obj: Any, path: str | os.PathLike, overwrite: bool = False) -> None:
    """``torch.save`` atomically; its own failures (a full disk shows as "unexpected pos ...") as one line."""
    import torch

    with atomic_path(path, overwrite=overwrite) as temp:
        try:
            torch.save(obj, temp)
        except RuntimeError as e:
            raise OutputError(f"writing {path} failed ({str(e).splitlines()[0][:100]}); check free space and the "
                              f"output folder") from None

"""The model catalogue (``Resources/models.json``) and the per-user folder that holds model files.

Why a catalogue: the Slicer module offers models by name, downloads them from a URL and checks their
SHA256 before anything reads them, and shows how long they take on a CPU and a GPU before the user
commits to a run. Why a per-user folder: model files are large, outlive extension updates, and must
be replaceable offline (a proxy blocks the download: the user imports the file by hand). The folder
is chosen by a setting, then ``$LIVERTUMORSEG_MODELS_DIR``, then a per-user default.

``models.json`` (``schema_version`` 1) is a JSON object::

    {"schema_version": 1,
     "models": [
       {"id": "rec_unet_lits",                # unique; letters, digits, "._-"
        "version": "1.0.0",                   # of the weights; a new version gets a new file name
        "title": "REC-UNet liver + tumour (LiTS)",
        "description": "one paragraph shown in the GUI",
        "file": "rec_unet_lits_v1.0.0.pt",    # file name in the models folder (no folders), ends in .pt
        "url": "https://...",                 # download address; "" when the file is only imported by hand
        "sha256": "64 lowercase hex digits",  # of the file; a download that does not match is deleted
        "labels": ["Liver", "Tumor"],         # segment names the model produces, in label order
        "input_spacing_mm": [0.8, 0.8],       # in-plane (row, column) spacing the network expects; null: native
        "context_slices": 1,                  # k: the network sees 2k+1 neighbouring slices
        "seconds_cpu": 95.0,                  # measured time for one abdominal CT; null if not measured
        "seconds_gpu": 6.5,
        "hardware": "where the seconds were measured (CPU model, GPU model, CT size)",
        "licence": "licence of the weights (that of the data they were trained on)",
        "default": true}                      # at most one entry: the model used when none is chosen
     ]}

Every field is required (``url`` may be "", the seconds and the spacing may be null); unknown fields
are refused, so a misspelt key is found when the file is edited rather than silently ignored.
Model files themselves are the ``LiverTumorSegLib.modelfile`` format; this module never unpickles
anything: it reads them with ``torch.load(weights_only=True)`` only.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from .errors import LiverTumorSegError, ModelFileError

if TYPE_CHECKING:  # only for annotations: importing modelfile's helpers stays lazy
    from .modelfile import ModelConfig

SCHEMA_VERSION = 1
MODELS_DIR_ENV = "LIVERTUMORSEG_MODELS_DIR"
DEFAULT_CATALOG = Path(__file__).resolve().parents[1] / "Resources" / "models.json"
#: model files that ship inside the extension (read-only, already checked): usable offline with no download
BUNDLED_DIR = Path(__file__).resolve().parents[1] / "Resources" / "Models"

_FIELDS = ("id", "version", "title", "description", "file", "url", "sha256", "labels", "input_spacing_mm",
           "context_slices", "seconds_cpu", "seconds_gpu", "hardware", "licence", "default")
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_SHA256 = re.compile(r"[0-9a-f]{64}")


class CatalogError(LiverTumorSegError):
    """The model catalogue or the models folder is unusable (malformed JSON, missing field, unwritable folder)."""


@dataclass(frozen=True)
class CatalogEntry:
    """One downloadable model as the catalogue describes it (see the module docstring for the fields)."""

    id: str
    version: str
    title: str
    description: str
    file: str
    url: str
    sha256: str
    labels: tuple[str, ...]
    input_spacing_mm: tuple[float, float] | None
    context_slices: int
    seconds_cpu: float | None
    seconds_gpu: float | None
    hardware: str
    licence: str
    default: bool = False


@dataclass(frozen=True)
class AvailableModel:
    """A model the user can pick: a catalogue entry (installed or not) or a file imported into the folder.

    ``usable`` is false with a one-line ``problem`` for a file that is there but cannot be used, so that
    the GUI can show why instead of hiding the file the user just copied in.
    """

    path: Path
    entry: CatalogEntry | None = None
    installed: bool = False
    usable: bool = False
    problem: str = ""
    config: "ModelConfig | None" = field(default=None, compare=False)

    @property
    def id(self) -> str:
        """Catalogue id, or the file name for an imported file (unique within one folder)."""
        return self.entry.id if self.entry else self.path.name

    @property
    def title(self) -> str:
        if self.entry:
            return self.entry.title
        return self.config.name if self.config is not None else self.path.name


# --------------------------------------------------------------------------------------------------
# The catalogue
# --------------------------------------------------------------------------------------------------


def _fail(source: Path, where: str, problem: str) -> CatalogError:
    return CatalogError(f"model catalogue {source}: {where}{problem}; fix the file (see LiverTumorSegLib/catalog.py "
                        f"for the fields)")


def _number_or_none(value: Any, name: str, fail) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise fail(f"{name} must be a non-negative number or null, not {value!r}")
    return float(value)


def _entry(raw: Any, index: int, source: Path) -> CatalogEntry:
    where = f"models[{index}]"
    if isinstance(raw, dict) and isinstance(raw.get("id"), str):
        where += f" ({raw['id']})"

    def fail(problem: str) -> CatalogError:
        return _fail(source, f"{where}: ", problem)

    if not isinstance(raw, dict):
        raise fail(f"an entry must be an object, not {type(raw).__name__}")
    missing = [k for k in _FIELDS if k not in raw]
    if missing:
        raise fail(f"missing field{'s' if len(missing) > 1 else ''} {', '.join(missing)}")
    unknown = sorted(set(raw) - set(_FIELDS))
    if unknown:
        raise fail(f"unknown field{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}")
    for key in ("id", "version", "title", "description", "file", "url", "sha256", "hardware", "licence"):
        if not isinstance(raw[key], str):
            raise fail(f"{key} must be a string, not {raw[key]!r}")
    if not _ID.fullmatch(raw["id"]):
        raise fail(f"id {raw['id']!r} must be letters, digits, '.', '_' or '-'")
    # The file name comes from a downloaded catalogue: a path in it could write outside the models folder.
    if not _ID.fullmatch(raw["file"]) or not raw["file"].endswith(".pt"):
        raise fail(f"file {raw['file']!r} must be a plain file name ending in .pt (no folders)")
    if not _SHA256.fullmatch(raw["sha256"]):
        raise fail(f"sha256 must be 64 lowercase hexadecimal digits, not {raw['sha256']!r}")
    if raw["url"] and not raw["url"].startswith(("https://", "http://")):
        raise fail(f"url must be empty or start with https://, not {raw['url']!r}")
    labels = raw["labels"]
    if not isinstance(labels, list) or not labels or not all(isinstance(x, str) and x for x in labels):
        raise fail(f"labels must be a non-empty list of names, not {labels!r}")
    spacing = raw["input_spacing_mm"]
    if spacing is not None:
        ok = isinstance(spacing, list) and len(spacing) == 2 and all(
            isinstance(s, (int, float)) and not isinstance(s, bool) and s > 0 for s in spacing)
        if not ok:
            raise fail(f"input_spacing_mm must be [row, column] in mm or null, not {spacing!r}")
        spacing = (float(spacing[0]), float(spacing[1]))
    context = raw["context_slices"]
    if isinstance(context, bool) or not isinstance(context, int) or context < 0:
        raise fail(f"context_slices must be a non-negative integer, not {context!r}")
    if not isinstance(raw["default"], bool):
        raise fail(f"default must be true or false, not {raw['default']!r}")
    return CatalogEntry(
        id=raw["id"], version=raw["version"], title=raw["title"], description=raw["description"], file=raw["file"],
        url=raw["url"], sha256=raw["sha256"], labels=tuple(labels), input_spacing_mm=spacing, context_slices=context,
        seconds_cpu=_number_or_none(raw["seconds_cpu"], "seconds_cpu", fail),
        seconds_gpu=_number_or_none(raw["seconds_gpu"], "seconds_gpu", fail),
        hardware=raw["hardware"], licence=raw["licence"], default=raw["default"])


def load_catalog(path: str | os.PathLike | None = None) -> list[CatalogEntry]:
    """The catalogue's entries, validated; ``CatalogError`` naming the entry and field that is wrong.

    Validation happens here, once, so that the GUI and the downloader can trust every field (a file name
    is a plain name, a checksum is a checksum) instead of each checking again.
    """
    source = Path(path) if path is not None else DEFAULT_CATALOG
    try:
        text = source.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CatalogError(f"model catalogue {source} not found; reinstall the extension or give an existing "
                           f"models.json") from None
    except OSError as e:
        raise CatalogError(f"model catalogue {source} cannot be read ({e.strerror or e}); check its permissions") \
            from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise _fail(source, "", f"not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None
    if not isinstance(data, dict):
        raise _fail(source, "", f"the top level must be an object, not {type(data).__name__}")
    version = data.get("schema_version")
    if isinstance(version, bool) or not isinstance(version, int):
        raise _fail(source, "", f"schema_version must be an integer, not {version!r}")
    if version > SCHEMA_VERSION:
        raise CatalogError(f"model catalogue {source} has schema_version {version}, newer than this LiverTumorSeg "
                           f"understands ({SCHEMA_VERSION}); update LiverTumorSeg")
    if version < 1:
        raise _fail(source, "", f"schema_version must be 1, not {version}")
    models = data.get("models")
    if not isinstance(models, list):
        raise _fail(source, "", "'models' must be a list")
    entries = [_entry(raw, i, source) for i, raw in enumerate(models)]
    for key in ("id", "file"):
        seen: set[str] = set()
        for e in entries:
            value = getattr(e, key)
            if value.lower() in seen:  # case-insensitive: two files may not differ only in case on Windows/macOS
                raise _fail(source, "", f"two entries have the same {key} {value!r}")
            seen.add(value.lower())
    defaults = [e.id for e in entries if e.default]
    if len(defaults) > 1:
        raise _fail(source, "", f"more than one default model ({', '.join(defaults)})")
    return entries


# --------------------------------------------------------------------------------------------------
# The models folder
# --------------------------------------------------------------------------------------------------


def default_models_dir(environ: Mapping[str, str] | None = None, windows: bool | None = None) -> Path:
    """The per-user folder: ``%LOCALAPPDATA%/LiverTumorSeg/models`` on Windows (not roamed: files are large),
    ``~/.livertumorseg/models`` elsewhere. ``environ``/``windows`` exist so both cases can be tested anywhere."""
    environ = os.environ if environ is None else environ
    windows = (sys.platform == "win32") if windows is None else windows
    if windows:
        local = environ.get("LOCALAPPDATA") or str(Path.home() / "AppData" / "Local")
        return Path(local) / "LiverTumorSeg" / "models"
    return Path.home() / ".livertumorseg" / "models"


def models_dir(setting: str | os.PathLike | None = None) -> Path:
    """The folder model files live in, created if needed.

    Precedence: ``setting`` (the Slicer module passes its saved setting) > ``$LIVERTUMORSEG_MODELS_DIR`` (shared
    machines and scripts) > the per-user default. Empty values count as not set. ``~`` and ``$VARS`` are expanded
    because users type them in the setting as they would in a shell.
    """
    candidates = ((setting, "the models-folder setting"), (os.environ.get(MODELS_DIR_ENV), f"${MODELS_DIR_ENV}"))
    for value, origin in candidates:
        chosen = str(value).strip() if value is not None else ""
        if chosen:
            folder = Path(os.path.expandvars(os.path.expanduser(chosen)))
            break
    else:
        folder, origin = default_models_dir(), "the default"
    if folder.exists() and not folder.is_dir():
        raise CatalogError(f"models folder {folder} (from {origin}) is a file, not a folder; choose another folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CatalogError(f"cannot create the models folder {folder} (from {origin}): {e.strerror or e}; choose a "
                           f"writable folder in the module's settings or with ${MODELS_DIR_ENV}") from None
    return folder


def read_model_config(path: str | os.PathLike) -> "ModelConfig":
    """A model file's description without reading its weights: listing a folder of 100 MB files must be instant.

    The file is memory-mapped (``mmap=True``), so tensors are not read, and checked as far as that allows: format,
    version, description, and that every weight's name and shape fits the architecture (built on the ``meta``
    device, which allocates nothing). Any failure is reported by ``modelfile.load_model`` itself, so the reason has
    exactly its wording; that full load happens only for files that are broken anyway (or that are in the legacy,
    non-zip format, which cannot be memory-mapped).
    """
    import warnings

    import torch

    from .modelfile import FORMAT, FORMAT_VERSION, ModelConfig, load_model
    from .models import build_model, model_names

    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            payload = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        ok = isinstance(payload, dict) and payload.get("format") == FORMAT \
            and isinstance(payload.get("format_version"), int) and payload["format_version"] <= FORMAT_VERSION \
            and isinstance(payload.get("state_dict"), dict)
        config = ModelConfig.from_dict(payload["config"]) if ok else None
        if config is not None and config.architecture in model_names():
            with torch.device("meta"):
                expected = build_model(config.architecture, **config.architecture_kwargs).state_dict()
            stored = payload["state_dict"]
            if set(stored) == set(expected) and all(
                    tuple(getattr(stored[k], "shape", ())) == tuple(v.shape) for k, v in expected.items()):
                return config
    except Exception:  # noqa: BLE001 - unsafe, corrupt or foreign: the full load below refuses it with the reason
        pass
    return load_model(path).config  # raises ModelFileError with the reason, or succeeds on a legacy-format file


def available_models(catalog: Sequence[CatalogEntry], folder: str | os.PathLike,
                     bundled: str | os.PathLike | None = BUNDLED_DIR) -> list[AvailableModel]:
    """What the model selector offers: every catalogue entry (``installed`` when its file is in ``folder`` or
    ships in ``bundled``), then every other ``*.pt`` in ``folder`` (imported or trained files), unusable ones
    included with their reason.

    Hidden files are skipped: they are ``atomic_path`` temporaries of a copy or download still under way.
    """
    folder = Path(folder)
    present = {p.name: p for p in folder.glob("*.pt") if p.is_file() and not p.name.startswith(".")} \
        if folder.is_dir() else {}
    result = []
    for entry in catalog:
        path = _installed_file(entry, folder, bundled)
        result.append(_describe(path, entry) if path is not None else AvailableModel(folder / entry.file, entry))
    catalogued = {e.file for e in catalog}
    for name in sorted(set(present) - catalogued, key=str.lower):
        result.append(_describe(present[name], None))
    return result


def _installed_file(entry: CatalogEntry, folder: Path, bundled: str | os.PathLike | None) -> Path | None:
    """Where a catalogue model's file is: shipped with the extension first (a user cannot have a newer copy
    under the same name: a new version gets a new file name), then the models folder."""
    for where in ([Path(bundled)] if bundled is not None else []) + [Path(folder)]:
        path = where / entry.file
        if path.is_file() and not path.name.startswith("."):
            return path
    return None


def _describe(path: Path, entry: CatalogEntry | None) -> AvailableModel:
    try:
        config = read_model_config(path)
    except ModelFileError as e:
        return AvailableModel(path, entry, installed=True, usable=False, problem=str(e))
    return AvailableModel(path, entry, installed=True, usable=True, config=config)


def default_model(catalog: Sequence[CatalogEntry], folder: str | os.PathLike,
                  bundled: str | os.PathLike | None = BUNDLED_DIR) -> Path | None:
    """The file of the catalogue's default model if it ships with the extension or is installed in ``folder``;
    None otherwise (the caller then asks the user to pick or import a model rather than silently using another)."""
    for entry in catalog:
        if entry.default:
            return _installed_file(entry, Path(folder), bundled)
    return None


def verify_sha256(path: str | os.PathLike, expected: str) -> None:
    """Check a downloaded file against the catalogue's SHA256 and delete it if it differs.

    Why delete: a truncated download or a proxy's error page left under the model's name would be offered as
    installed next time; removing it makes the next attempt download again. ``expected`` may carry Slicer's
    ``SHA256:`` prefix (as passed to ``slicer.util.downloadFile``).
    """
    from .modelfile import file_sha256

    path = Path(path)
    want = expected.strip()
    if want.upper().startswith("SHA256:"):
        want = want[len("SHA256:"):]
    want = want.lower()
    if not _SHA256.fullmatch(want):
        raise CatalogError(f"cannot verify {path}: {expected!r} is not a SHA256 checksum (64 hexadecimal digits)")
    if not path.is_file():
        raise ModelFileError(f"model file not found: {path}; download it again")
    got = file_sha256(path)
    if got != want:
        path.unlink(missing_ok=True)
        raise ModelFileError(f"checksum mismatch for {path}: expected {want}, got {got}; the file was deleted, "
                             f"download it again")


def import_model_file(src: str | os.PathLike, folder: str | os.PathLike, overwrite: bool = False,
                      catalog: Sequence[CatalogEntry] = ()) -> Path:
    """Copy a model file into the models folder after checking it is a safe, complete LiverTumorSeg model file.

    Validation is ``modelfile.load_model`` itself, so an unsafe pickle, a corrupt or truncated file, or a foreign
    checkpoint is refused with its message before anything is copied. The copy is atomic (a half-copied file never
    appears in the model list) and keeps the name, with a ``.pt`` suffix. An existing file of that name is kept
    unless ``overwrite`` (importing the same file again is a no-op), and a catalogue model's file name is refused
    for a different file, which would otherwise be taken for the catalogue model.
    """
    from .atomicfile import atomic_path
    from .modelfile import file_sha256, load_model

    src = Path(src)
    load_model(src)  # raises ModelFileError with the reason and the fix
    folder = Path(folder)
    dest = folder / (src.name if src.suffix == ".pt" else f"{src.stem}.pt")
    if dest.exists() and dest.resolve() == src.resolve():
        return dest
    digest = file_sha256(src)
    for entry in catalog:
        if entry.file.lower() == dest.name.lower() and entry.sha256 != digest:
            raise CatalogError(f"{dest.name} is the file name of the catalogue model {entry.id!r}, and {src} is a "
                               f"different file; rename it before importing")
    if dest.exists():
        if dest.is_file() and file_sha256(dest) == digest:
            return dest
        if not overwrite:
            raise CatalogError(f"a different model file named {dest.name} is already in {folder}; rename {src} "
                               f"or choose to replace the existing file")
    with atomic_path(dest, overwrite=overwrite) as tmp:
        shutil.copyfile(src, tmp)
        if file_sha256(tmp) != digest:  # the source changed while it was copied (still being written?)
            raise ModelFileError(f"{src} changed while it was copied; wait until it is complete and import it again")
    return dest


def remove_model_file(path: str | os.PathLike, folder: str | os.PathLike) -> Path:
    """Delete a downloaded or imported model file from the models folder (and nothing else).

    Only a ``.pt`` file directly inside ``folder`` can go: the models shipped with the extension and files
    elsewhere on disk are not the module's to delete. A downloaded catalogue model can be downloaded again.
    """
    path, folder = Path(path), Path(folder)
    try:
        inside = path.resolve().parent == folder.resolve()
    except OSError:
        inside = False
    if not inside or path.suffix != ".pt":
        raise CatalogError(f"{path} is not a model file in the models folder {folder}; only downloaded or imported "
                           f"models can be removed (shipped models stay with the extension)")
    if not path.is_file():
        raise CatalogError(f"{path} does not exist (already removed?); refresh the model list")
    try:
        path.unlink()
    except OSError as e:
        raise CatalogError(f"cannot remove {path}: {e.strerror}; check the folder's permissions") from None
    return path

"""Headless training: ``livertumorseg train`` run by Slicer's own Python, or by any Python.

    Slicer --no-main-window --python-script /path/to/LiverTumorSegTrain/train.py -- DATA [train options]
    PythonSlicer /path/to/LiverTumorSegTrain/train.py DATA [train options]
    python /path/to/LiverTumorSegTrain/train.py DATA [train options]

Why this file exists: a packaged extension puts its Python packages beside its module files, on
Slicer's module paths but not on the PYTHONPATH of a plain interpreter, so the training command
is reached through a script at a known place (``slicer.modules.livertumorsegtrain.path``'s folder).

Why it always ends with ``slicer.util.exit``: ``Slicer --python-script`` does not exit when the
script returns, so without it a finished, failed or mistyped run would leave a headless Slicer
waiting forever. The ``--`` before the training arguments stops Slicer from taking options such
as ``--help`` for itself; Slicer removes it, and a ``--`` that still arrives here is dropped.
"""

from __future__ import annotations

import os
import sys
import traceback

_CORE_PACKAGES = ("LiverTumorSegTrainLib", "LiverTumorSegLib")


def _script_path() -> str:
    """This file, also when Slicer runs it with ``exec`` (which sets ``__file__`` but not ``__spec__``)."""
    return os.path.abspath(globals().get("__file__") or sys.argv[0])


def _add_core_paths(script: str) -> None:
    """The cores sit beside the module files in an extension build; in a clone LiverTumorSegLib is in
    ``../LiverTumorSeg``. Folders one level up count too, so the script may also live in a subfolder."""
    here = os.path.dirname(script)
    up = os.path.dirname(here)
    for folder in (here, os.path.join(up, "LiverTumorSeg"), up, os.path.join(os.path.dirname(up), "LiverTumorSeg")):
        has_core = any(os.path.isdir(os.path.join(folder, package)) for package in _CORE_PACKAGES)
        if has_core and folder not in sys.path:
            sys.path.insert(0, folder)


def _is_this_script(argument: str, script: str) -> bool:
    try:
        return os.path.isfile(argument) and os.path.samefile(argument, script)
    except OSError:
        return False


def training_arguments(argv: list[str], script: str) -> list[str]:
    """The arguments meant for ``livertumorseg train``: without the script path and a leading ``--``."""
    args = list(argv)
    if args and _is_this_script(args[0], script):
        args = args[1:]
    if args and args[0] in ("--", "--ignore-rest"):
        args = args[1:]
    return args


def _exit_status(code: object) -> int:
    """An exit status from what ``train_main`` returned or ``SystemExit`` carried, read as ``sys.exit`` reads it."""
    if code is None:
        return 0
    if isinstance(code, int):
        return int(code)
    print(code, file=sys.stderr)
    return 1


def run(argv: list[str]) -> int:
    """Runs the training command; never raises, so the caller can always exit with the status."""
    try:
        from LiverTumorSegTrainLib.commands import train_main

        return _exit_status(train_main(argv))
    except SystemExit as e:  # argparse: --help (0) and usage errors (2)
        return _exit_status(e.code)
    except KeyboardInterrupt:
        print("livertumorseg train: error: interrupted", file=sys.stderr)
        return 130
    except BaseException as e:  # whatever happens, a headless Slicer must still exit
        traceback.print_exc()
        message = " ".join(str(e).split()) or "(no message)"
        print(f"livertumorseg train: error: {type(e).__name__}: {message}", file=sys.stderr)
        return 1


def _slicer_app():
    """The ``slicer`` module when running inside the Slicer application, else None.

    Inside the application ``slicer`` is imported before any script runs and has ``app``; PythonSlicer
    and plain Python have no ``slicer.app``, and importing ``slicer`` only to find that out would be slow.
    """
    slicer = sys.modules.get("slicer")
    return slicer if getattr(slicer, "app", None) is not None and hasattr(slicer, "util") else None


def main() -> None:
    script = _script_path()
    _add_core_paths(script)
    status = run(training_arguments(sys.argv[1:], script))
    sys.stdout.flush()
    sys.stderr.flush()
    slicer = _slicer_app()
    if slicer is not None:
        try:
            slicer.util.exit(status)  # lets Slicer finish pending events, then ends it with this status
            return
        except Exception:  # never leave a headless Slicer running
            traceback.print_exc()
    sys.exit(status)


if __name__ == "__main__":
    main()

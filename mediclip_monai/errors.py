"""Errors a user can fix, and how an uncaught one is shown.

`MediclipError` is the base of every error whose message is the whole story: it names the file or
config key, says what is wrong and, where it helps, the fix. Such an error needs no traceback.
`DataError` (a dataset problem, listing every bad entry at once through `format_problems`),
`ConfigValueError` (an invalid config value) and `MissingPackageError` (an optional package that is
not installed) are its kinds here; other modules add their own (the CLIP weights errors in
``networks/weights.py``).

MONAI's config runner wraps every exception raised inside the configs in "Failed to evaluate
ConfigExpression ..." / "Failed to instantiate component ..." errors, which leaves the real reason far
up a long traceback. `report_uncaught` is a ``sys.excepthook`` that makes the reason the last line:
for a `MediclipError` anywhere in the chain it prints just that message; for anything else it prints
the traceback as Python would, then the root cause. ``MEDICLIP_TRACEBACK=1`` shows the full traceback
for user errors too. Under torchrun, the reason also goes into the failure summary torchrun prints at
the end (through the error file it gives each worker). The bundle configs install the hook by importing
``mediclip_monai.readable_errors``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import time
import traceback
from collections.abc import Sequence

__all__ = [
    "TRACEBACK_ENV",
    "ConfigValueError",
    "DataError",
    "MediclipError",
    "MissingPackageError",
    "format_problems",
    "install_excepthook",
    "reason_of",
    "report_uncaught",
    "require_package",
]

# Set to 1 to see the full traceback of user errors as well.
TRACEBACK_ENV = "MEDICLIP_TRACEBACK"

# Packages of optional extras that other libraries import themselves (MONAI's onnx_export, torch.onnx): what
# needs each, and the extra that installs it. Missing, they are named with the install command.
EXTRA_PACKAGES = {
    "onnx": ("ONNX export", "export"),
    "onnxscript": ("ONNX export", "export"),
    "onnxruntime": ("Running the exported ONNX model", "export"),
}


class MediclipError(Exception):
    """An error the user can fix from its message alone (file or config key, what is wrong, the fix)."""


class DataError(MediclipError, ValueError):
    """A dataset problem the user has to fix (missing file, unreadable image, bad datalist).

    The message names every bad file with the reason, one per line.
    """


class ConfigValueError(MediclipError, ValueError):
    """A config value (a command-line override) that cannot work, named by its key."""


class MissingPackageError(MediclipError, ImportError):
    """An optional package a feature needs is not installed; the message says what to install."""


def format_problems(problems: Sequence[str], what: str = "data") -> str:
    """Join problem lines into one `DataError` message.

    Args:
        problems: one line per bad entry, each ``"<file>: <reason>"``.
        what: what was being checked, for the heading line (e.g. ``"datalist entries"``).
    """
    n = len(problems)
    head = f"{n} problem{'s' if n != 1 else ''} with the {what}:"
    return "\n".join([head, *(f"  {p}" for p in problems)])


def require_package(module: str, feature: str, install: str) -> None:
    """Raise `MissingPackageError` unless ``module`` can be imported.

    Args:
        module: the import name (``"onnx"``, ``"monailabel"``).
        feature: what needs it, for the message (``"ONNX export"``).
        install: the command that installs it (``"pip install onnx"``).
    """
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package is missing, or a broken half-install
        found = False
    if not found:
        raise missing_package(module, feature, install)


def missing_package(module: str, feature: str, install: str) -> MissingPackageError:
    """The error for ``module`` not installed: what needs it and the command that installs it."""
    return MissingPackageError(f"{feature} needs the package '{module}', which is not installed: {install}")


def _chain(error: BaseException) -> list[BaseException]:
    """``error`` and the exceptions it was raised from (``__cause__``, else an unsuppressed ``__context__``)."""
    chain: list[BaseException] = []
    while error is not None and error not in chain:
        chain.append(error)
        error = error.__cause__ or (None if error.__suppress_context__ else error.__context__)
    return chain


def reason_of(error: BaseException) -> tuple[BaseException, bool]:
    """The exception that explains ``error``, and whether it is a user error.

    The outermost `MediclipError` in the chain when there is one (its own causes are details, such as the
    reader's exception under a DataError); else the root cause, as a `MissingPackageError` when it is the
    import of a package of an extra (`EXTRA_PACKAGES`).
    """
    chain = _chain(error)
    for item in chain:
        if isinstance(item, MediclipError):
            return item, True
    root = chain[-1]
    package = (root.name or "").split(".")[0] if isinstance(root, ModuleNotFoundError) else ""
    if package in EXTRA_PACKAGES:
        feature, extra = EXTRA_PACKAGES[package]
        return missing_package(package, feature, f'pip install -e ".[{extra}]"'), True
    return root, False


def report_uncaught(exc_type, error, tb) -> None:
    """``sys.excepthook``: the reason of an uncaught error is the last line printed."""
    if not isinstance(error, Exception):  # KeyboardInterrupt, SystemExit: Python's own way
        sys.__excepthook__(exc_type, error, tb)
        return
    reason, is_user_error = reason_of(error)
    sys.stdout.flush()  # everything logged before goes first, also when stdout is a pipe
    if not is_user_error or os.environ.get(TRACEBACK_ENV, "").lower() in ("1", "true", "yes"):
        traceback.print_exception(exc_type, error, tb, file=sys.stderr)
    text = str(reason).strip() if is_user_error else "".join(traceback.format_exception_only(reason)).strip()
    text = f"error: {text or type(reason).__name__}"
    print(text, file=sys.stderr, flush=True)
    _tell_torchrun(text)


def _tell_torchrun(text: str) -> None:
    """Under torchrun, put the reason into the failure summary it prints last (its "Root Cause" section)."""
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if not path:
        return
    data = {"message": {"message": text, "extraInfo": {"py_callstack": text, "timestamp": str(int(time.time()))}}}
    try:
        with open(path, "w") as f:
            json.dump(data, f)
    except OSError:
        pass  # the summary then says what it says without it


def install_excepthook() -> None:
    """Make `report_uncaught` the interpreter's hook for uncaught exceptions (idempotent)."""
    sys.excepthook = report_uncaught

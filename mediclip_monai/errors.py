"""Errors a user can fix, and how an uncaught one is shown.

`MediclipError` is the base of every error whose message is the whole story: it names the file or
config key, says what is wrong and, where it helps, the fix. Such an error needs no traceback.
`DataError` (a dataset problem, listing every bad entry at once through `format_problems`),
`ConfigValueError` (an invalid config value), `OutputError` (a folder that cannot be written: read-only,
full, no permission) and `MissingPackageError` (an optional package that is not installed) are its kinds
here; other modules add their own (the CLIP weights errors in ``networks/weights.py``).

MONAI's config runner wraps every exception raised inside the configs in "Failed to evaluate
ConfigExpression ..." / "Failed to instantiate component ..." errors, which leaves the real reason far
up a long traceback. `report_uncaught` is a ``sys.excepthook`` that makes the reason the last line:
for a `MediclipError` anywhere in the chain (or an `OSError` that says the disk is full or read-only)
it prints just that message; for anything else it prints the traceback as Python would, then the root
cause. ``MEDICLIP_TRACEBACK=1`` shows the full traceback for user errors too. MONAI's ``StatsHandler``
logs the traceback of any exception raised inside an engine before it re-raises it; installing the hook
also stops that for user errors, whose message alone is the story. Under torchrun, the reason also goes
into the failure summary torchrun prints at the end (through the error file it gives each worker). The
bundle configs install the hook by importing ``mediclip_monai.readable_errors``.
"""

from __future__ import annotations

import contextlib
import errno
import importlib.util
import json
import logging
import os
import sys
import time
import traceback
from collections.abc import Iterator, Sequence

__all__ = [
    "TRACEBACK_ENV",
    "ConfigValueError",
    "DataError",
    "MediclipError",
    "MissingPackageError",
    "OutputError",
    "describe_failure",
    "format_problems",
    "install_excepthook",
    "output_error",
    "reason_of",
    "report_uncaught",
    "require_package",
    "writing_into",
]

# Set to 1 to see the full traceback of user errors as well.
TRACEBACK_ENV = "MEDICLIP_TRACEBACK"

# Packages of optional extras that other libraries import themselves (MONAI's onnx_export, torch.onnx): what
# needs each, and the extra that installs it. Missing, they are named with the install command.
EXTRA_PACKAGES = {
    "onnx": ("ONNX export", "export"),
    "onnxscript": ("ONNX export", "export"),
    "onnxruntime": ("Running the exported ONNX model", "export"),
    "holoscan": ("The MediCLIP MONAI Deploy app", "deploy"),
}


class MediclipError(Exception):
    """An error the user can fix from its message alone (file or config key, what is wrong, the fix)."""


class DataError(MediclipError, ValueError):
    """A dataset problem the user has to fix (missing file, unreadable image, bad datalist).

    The message names every bad file with the reason, one per line.
    """


class ConfigValueError(MediclipError, ValueError):
    """A config value (a command-line override) that cannot work, named by its key."""


class OutputError(MediclipError):
    """An output cannot be written: its folder is read-only, full or not writable; the message names it
    and the fix."""


# Why a write failed, and what the user can do about it, by errno.
_WRITE_FAILURES = {
    errno.EROFS: ("read-only file system", "give a folder you can write to"),
    errno.EACCES: ("permission denied", "give a folder you can write to, or make this one writable"),
    errno.EPERM: ("operation not permitted", "give a folder you can write to, or make this one writable"),
    errno.ENOSPC: ("no space left on the device", "free some space or give a folder on another disk"),
    errno.EDQUOT: ("disk quota exceeded", "free some space or give a folder on another disk"),
}
# The failures that can only come from writing (a permission error may also be a file that cannot be read).
DISK_FULL_OR_READ_ONLY = (errno.EROFS, errno.ENOSPC, errno.EDQUOT)


def output_error(where: str, error: OSError, doing: str = "", then: str = "") -> OutputError:
    """The `OutputError` for ``error``, raised while writing into ``where``: the reason and the fix.

    Args:
        where: what to name: the folder and its config key (``"--output_dir /data/out"``), or a file.
        error: the OSError of the write.
        doing: what was being written (``"while writing case t1"``).
        then: what else the user should know, last (what was kept, how to go on).
    """
    reason, fix = _WRITE_FAILURES.get(
        getattr(error, "errno", None), (error.strerror or str(error), "give a folder you can write to")
    )
    doing = f" {doing}" if doing else ""
    then = f"; {then}" if then else ""
    return OutputError(f"{where}: cannot write there ({reason}{doing}); {fix}{then}")


@contextlib.contextmanager
def writing_into(where: str, doing: str = "", then: str = "") -> Iterator[None]:
    """Turn a disk-full or read-only OSError raised inside into `output_error`'s OutputError.

    Other errors pass unchanged: a permission error may be an input that cannot be read.
    """
    try:
        yield
    except OSError as error:
        if error.errno not in DISK_FULL_OR_READ_ONLY:
            raise
        raise output_error(where, error, doing, then) from error


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
    import of a package of an extra (`EXTRA_PACKAGES`), as an `OutputError` naming the file when it is a
    disk that is full or read-only (whatever library was writing).
    """
    chain = _chain(error)
    for item in chain:
        if isinstance(item, MediclipError):
            return item, True
    root = chain[-1]
    if isinstance(root, OSError) and root.errno in DISK_FULL_OR_READ_ONLY and root.filename:
        return output_error(str(root.filename), root), True
    package = (root.name or "").split(".")[0] if isinstance(root, ModuleNotFoundError) else ""
    if package in EXTRA_PACKAGES:
        feature, extra = EXTRA_PACKAGES[package]
        return missing_package(package, feature, f'pip install -e ".[{extra}]"'), True
    return root, False


def describe_failure(source: str, error: BaseException) -> str:
    """``"<source>: <reason>"`` for a failed case.

    MONAI wraps a transform's error in RuntimeErrors ("applying transform ..."): the reason is the user
    error in the chain (``errors.reason_of``; a DataError names its file), else the innermost exception
    with its type.
    """
    reason, is_user_error = reason_of(error)
    text = str(reason).strip()
    if not is_user_error:
        text = f"{type(reason).__name__}: {text}"
    return text if source and text.startswith(str(source)) else f"{source}: {text}"


def report_uncaught(exc_type, error, tb) -> None:
    """``sys.excepthook``: the reason of an uncaught error is the last line printed."""
    if not isinstance(error, Exception):  # KeyboardInterrupt, SystemExit: Python's own way
        sys.__excepthook__(exc_type, error, tb)
        return
    reason, is_user_error = reason_of(error)
    _close_progress_bars()
    sys.stdout.flush()  # everything logged before goes first, also when stdout is a pipe
    if not is_user_error or os.environ.get(TRACEBACK_ENV, "").lower() in ("1", "true", "yes"):
        traceback.print_exception(exc_type, error, tb, file=sys.stderr)
    text = str(reason).strip() if is_user_error else "".join(traceback.format_exception_only(reason)).strip()
    text = f"error: {text or type(reason).__name__}"
    print(text, file=sys.stderr, flush=True)
    _tell_torchrun(text)


def _close_progress_bars() -> None:
    """Close the progress bars an interrupted run left open: else each prints its last state at exit, after
    the reason."""
    tqdm_module = sys.modules.get("tqdm.std")  # only when a run imported it
    if tqdm_module is not None:
        for bar in list(getattr(tqdm_module.tqdm, "_instances", ())):
            bar.close()


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


class _UserErrorLogFilter(logging.Filter):
    """Drops log records that carry a user error's traceback: `report_uncaught` prints its message."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return not (isinstance(error, Exception) and reason_of(error)[1])


# MONAI's StatsHandler logs "Exception: ..." with the traceback (logger.exception) before re-raising.
_ENGINE_EXCEPTION_LOGGERS = ("monai.handlers.StatsHandler",)


def install_excepthook() -> None:
    """Make `report_uncaught` the interpreter's hook for uncaught exceptions, and keep the tracebacks of
    user errors out of the engines' logs (idempotent)."""
    sys.excepthook = report_uncaught
    from monai.apps import get_logger  # MONAI's own way: a logger made here first must still print

    for name in _ENGINE_EXCEPTION_LOGGERS:
        engine_logger = get_logger(name)
        if not any(isinstance(f, _UserErrorLogFilter) for f in engine_logger.filters):
            engine_logger.addFilter(_UserErrorLogFilter())

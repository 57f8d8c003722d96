"""Atomic file writing: a reader (3D Slicer, MONAI Label, a watcher on the output folder) never sees a
half-written output.

Every writer in :mod:`mediclip_monai.io` writes to a hidden temporary file in the destination folder and
renames it onto the real name only once the write has finished. ``os.replace`` is atomic on POSIX and
Windows when source and destination share a filesystem, which the same folder guarantees.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

from ..errors import output_error

# Compression suffixes that only make sense together with the suffix before them (".nii.gz").
_COMPRESSION_SUFFIXES = {".gz", ".bz2", ".xz", ".zst"}


def _format_suffix(name: str) -> str:
    """The part of ``name`` that libraries read the file format from: ".nii.gz", ".nrrd", ".csv"."""
    suffixes = Path(name).suffixes
    if not suffixes:
        return ""
    if suffixes[-1].lower() in _COMPRESSION_SUFFIXES and len(suffixes) >= 2:
        return suffixes[-2] + suffixes[-1]
    return suffixes[-1]


def temporary_sibling(path: str | os.PathLike) -> Path:
    """A fresh hidden path beside ``path`` that ends with the same format suffix.

    ``out/case_anomaly_map.nii.gz`` -> ``out/.case_anomaly_map.tmp-1a2b3c4d.nii.gz``. The leading dot
    hides it from folder listings and from globs such as ``*_anomaly_map.nii.gz``.
    """
    path = Path(path)
    suffix = _format_suffix(path.name)
    stem = path.name[: len(path.name) - len(suffix)] if suffix else path.name
    return path.parent / f".{stem}.tmp-{secrets.token_hex(4)}{suffix}"


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write to; on success it is renamed onto ``path``.

    The parent folders of ``path`` are created. If the body raises (including KeyboardInterrupt), the
    temporary file is deleted and ``path`` is left exactly as it was: an existing file is not clobbered.

    Example::

        with atomic_write("out/case/case_anomaly_map.nii.gz") as tmp:
            nib.save(image, tmp)  # nibabel sees ".nii.gz" and compresses
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(path)
    # The temporary file is not pre-created (unlike mkstemp): the writer creates it with the usual
    # permissions (0666 minus umask) rather than mkstemp's 0600, which other users could not read.
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):  # never created (e.g. a read-only folder): nothing to clean
            tmp.unlink()
        raise


def require_writable(folder: str | os.PathLike, key: str) -> None:
    """Create ``folder`` (and its parents) and prove that a file can be written in it, before any work.

    Args:
        folder: the output folder.
        key: its config key, for the message (``"--output_dir"``).

    Raises:
        OutputError: ``"<key> <folder>: cannot write there (<reason>); <fix>"``.
    """
    try:
        os.makedirs(folder, exist_ok=True)
        probe = temporary_sibling(Path(folder) / "write-probe")
        probe.touch(exist_ok=False)
        probe.unlink()
    except OSError as error:
        raise output_error(f"{key} {folder}", error) from error

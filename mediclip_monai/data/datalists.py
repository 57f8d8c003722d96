"""Datalists: Decathlon-style JSON files that say which images train, validate and test the model.

Format (paths relative to the JSON file's folder, see docs ARCHITECTURE.md "Datalist")::

    {"training":   [{"image": "normal/0001.nii.gz"}, ...],
     "validation": [{"image": "...", "label": "mask.nii.gz", "abnormal": 1}, ...],
     "test":       [{"image": "...", "label": "mask.nii.gz" or absent, "abnormal": 0 or 1}, ...]}

This module reads such a file (`load_datalist`), draws the k normal shots of few-shot training
(`sample_k_shot`) and checks that every listed file is a readable image before a run starts
(`check_entries`). Every problem is reported through `DataError`, whose message lists all the bad
entries at once, one per line, so a user fixes a dataset in one pass instead of one error per run.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from mediclip_monai.data.loading import is_image_path, read_image
from mediclip_monai.errors import DataError, format_problems

__all__ = ["PATH_KEYS", "DataError", "check_entries", "format_problems", "load_datalist", "sample_k_shot"]

# Keys of a datalist entry that hold file paths (resolved against the datalist's folder).
PATH_KEYS = ("image", "label")


def _resolve(value, base: Path):
    """Make a relative path absolute against the datalist folder; leave other values alone."""
    if isinstance(value, (str, os.PathLike)) and str(value):
        p = Path(os.path.expanduser(str(value)))
        # normpath, not resolve(): keep the user's symlinks as they wrote them
        return str(p if p.is_absolute() else Path(os.path.normpath(base / p)))
    return value


def load_datalist(path: str | os.PathLike, section: str) -> list[dict]:
    """Read one section of a Decathlon-style datalist JSON.

    Relative paths under the keys ``"image"`` and ``"label"`` are resolved against the folder that
    holds the JSON file and returned absolute; other keys (``"abnormal"``, ...) are copied as they are.
    The files themselves are not opened here (see `check_entries`).

    Args:
        path: the datalist JSON file.
        section: the top-level key to read, e.g. ``"training"``, ``"validation"`` or ``"test"``.

    Returns:
        a new list of new dicts, one per entry, in file order.

    Raises:
        DataError: the file is missing or is not valid JSON, the section is missing or empty, or
            entries are not objects with an ``"image"`` key (all such entries listed in one message).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: datalist file not found")
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})") from e
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read the datalist ({e})") from e
    if not isinstance(content, dict):
        raise DataError(f"{path}: a datalist is a JSON object with sections such as 'training' and 'test'")
    if section not in content:
        have = ", ".join(repr(k) for k in content) or "none"
        raise DataError(f"{path}: no section {section!r} (sections present: {have})")
    entries = content[section]
    if not isinstance(entries, list):
        raise DataError(f"{path}: section {section!r} must be a list of entries")
    if not entries:
        raise DataError(f"{path}: section {section!r} is empty")

    base = path.absolute().parent
    items, problems = [], []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            problems.append(f"{path} [{section}][{i}]: entry is not an object ({entry!r:.60})")
            continue
        if not entry.get("image"):
            problems.append(f"{path} [{section}][{i}]: entry has no 'image' ({json.dumps(entry)[:80]})")
            continue
        item = dict(entry)
        for key in PATH_KEYS:
            if key in item:
                item[key] = _resolve(item[key], base)
        items.append(item)
    if problems:
        raise DataError(format_problems(problems, f"datalist {path}"))
    return items


def sample_k_shot(items: Sequence[dict], k_shot: int | None, seed: int | None = 0) -> list[dict]:
    """Draw the k normal shots of few-shot training, reproducibly.

    The draw is a seeded permutation (``np.random.default_rng(seed)``) cut to its first k entries,
    so the same seed gives the same subset, and for one seed the k=4 subset lies inside the k=8 one
    (comparisons across k change only the number of shots). The result keeps datalist order.

    Args:
        items: the candidate entries (normally the ``"training"`` section).
        k_shot: how many to keep; ``None`` or ``<= 0`` keeps them all.
        seed: seed of the draw; ``None`` draws from fresh entropy (not reproducible).

    Raises:
        DataError: ``k_shot`` is larger than the number of entries.
    """
    items = list(items)
    if k_shot is None or int(k_shot) <= 0:
        return items
    k_shot = int(k_shot)
    if k_shot > len(items):
        raise DataError(
            f"k_shot={k_shot} asks for more images than the {len(items)} available; "
            f"use k_shot <= {len(items)} or add normal images to the datalist"
        )
    order = np.random.default_rng(seed).permutation(len(items))[:k_shot]
    return [items[i] for i in sorted(order.tolist())]


def check_entries(items: Iterable[dict], keys: Sequence[str] = ("image",), exist_only: Iterable[dict] = ()) -> None:
    """Check that every listed file exists and reads as a 2D or 3D single-channel image.

    Every file is read with `mediclip_monai.data.loading.read_image` (a folder counts when it holds
    one DICOM series). All problems are collected first, then reported together. When both
    ``"image"`` and ``"label"`` are checked, a label whose spatial shape differs from its image's is
    a problem too.

    Args:
        items: datalist entries (e.g. from `load_datalist`).
        keys: the entry keys to check. ``"image"`` is required in every entry; another key that is
            absent or ``None`` in an entry is skipped (e.g. normal test images have no ``"label"``).
        exist_only: more entries whose ``"image"`` is only checked to exist and to look like an image
            (a folder, or a file with an image suffix or a DICOM preamble), without reading it: cheap
            enough for every entry of a large dataset.

    Raises:
        DataError: one message listing each bad entry with its reason (missing file, unreadable or
            not an image, unsupported dimensions such as 4D or 1D, label/image shape mismatch).
    """
    problems = []
    for i, item in enumerate(items):
        shapes = {}
        for key in keys:
            value = item.get(key) if isinstance(item, dict) else None
            if value is None or value == "":
                if key == "image":
                    problems.append(f"entry {i}: no 'image' ({item!r:.80})")
                continue
            try:
                shapes[key] = tuple(read_image(value).shape[1:])
            except DataError as e:
                problems.append(str(e))
        if "image" in shapes and "label" in shapes and shapes["image"] != shapes["label"]:
            problems.append(
                f"{item['label']}: label shape {shapes['label']} does not match image shape "
                f"{shapes['image']} of {item['image']}"
            )
    for item in exist_only:
        path = Path(os.path.expanduser(str(item["image"])))
        if not path.exists():
            problems.append(f"{path}: file not found")
        elif not path.is_dir() and not is_image_path(path):
            problems.append(f"{path}: not a supported image file (NIfTI, DICOM, PNG/JPEG/BMP/TIFF, NRRD/MHA)")
    if problems:
        raise DataError(format_problems(problems, "datalist entries"))

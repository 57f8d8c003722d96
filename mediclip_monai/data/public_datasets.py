"""Converters from the paper's public datasets to this project's datalist format.

The MediCLIP reference code keeps each dataset (BrainMRI, BUSI, CheXpert) as::

    <root>/samples/train.json   one JSON record per line: {"filename": "train/normal/x.jpg", ...}
    <root>/samples/test.json    {"filename": ..., "label": 0 or 1, "clsname": ..., "mask": ... (BUSI)}
    <root>/images/...           the pictures; ``filename`` and ``mask`` are relative to this folder

`convert_reference_split` turns that layout into a Decathlon-style datalist (see
`mediclip_monai.data.datalists`): reference ``label`` (image-level) becomes ``abnormal`` and
reference ``mask`` becomes ``label`` (MONAI's key for the pixel mask). Paths that already start
with ``images/`` (relative to ``<root>``) are accepted too.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from mediclip_monai.errors import DataError, format_problems

__all__ = ["convert_reference_split"]


def _read_split(path: Path, problems: list[str]) -> list[tuple[int, dict]]:
    """(line number, record) of a JSON-lines split file; bad lines go to ``problems``."""
    if not path.is_file():
        problems.append(f"{path}: split file not found")
        return []
    records = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            problems.append(f"{path} line {n}: not valid JSON ({e.msg})")
            continue
        if not isinstance(record, dict) or not record.get("filename"):
            problems.append(f"{path} line {n}: record has no 'filename'")
            continue
        records.append((n, record))
    if not records and path.is_file():
        problems.append(f"{path}: no records")
    return records


def _locate(root: Path, rel: str) -> Path | None:
    """The file a reference path names: under ``<root>/images/`` or, when it says so, ``<root>/``."""
    candidates = [root / "images" / rel, root / rel]
    if rel.startswith("images/"):
        candidates.reverse()
    return next((c for c in candidates if c.is_file()), None)


def _image_label(value) -> int | None:
    """Reference image-level label (0 normal, 1 abnormal) from an int, bool or digit string."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (int, float)) and value in (0, 1):
        return int(value)
    if isinstance(value, str) and value.strip() in ("0", "1"):
        return int(value.strip())
    return None


def _relative(path: Path, base: Path) -> str:
    try:
        return Path(os.path.relpath(path, base)).as_posix()
    except ValueError:  # another drive (Windows): keep it absolute
        return path.as_posix()


def convert_reference_split(
    src_root: str | os.PathLike,
    out_path: str | os.PathLike,
    val_fraction: float = 0.0,
    seed: int = 0,
) -> dict:
    """Convert a dataset in the reference layout into a datalist JSON file.

    Args:
        src_root: dataset folder holding ``samples/train.json``, ``samples/test.json`` and ``images/``.
        out_path: the datalist JSON to write (its folder is created); paths inside it are relative
            to its folder.
        val_fraction: share of the training (normal) images held out as the ``validation`` section,
            drawn with ``np.random.default_rng(seed)``; 0 writes no validation section.
        seed: seed of the validation draw.

    Returns:
        the datalist as written.

    Raises:
        DataError: one message listing missing split files, bad records and every listed image or
            mask that does not exist.
    """
    root = Path(src_root).absolute()
    out = Path(out_path).absolute()
    if not 0.0 <= float(val_fraction) < 1.0:
        raise DataError(f"val_fraction must be in [0, 1), got {val_fraction}")
    problems: list[str] = []
    train_file, test_file = root / "samples" / "train.json", root / "samples" / "test.json"
    train_records = _read_split(train_file, problems)
    test_records = _read_split(test_file, problems)

    def find(rel: str, split: Path, line: int) -> Path | None:
        rel = str(rel).replace("\\", "/").lstrip("/")
        found = _locate(root, rel)
        if found is None:
            expected = root / rel if rel.startswith("images/") else root / "images" / rel
            problems.append(f"{expected}: file not found (listed in {split.name} line {line})")
        return found

    base = out.parent
    training = []
    for line, rec in train_records:
        image = find(rec["filename"], train_file, line)
        if image is not None:
            training.append({"image": _relative(image, base)})
    test = []
    for line, rec in test_records:
        image = find(rec["filename"], test_file, line)
        abnormal = _image_label(rec.get("label"))
        if abnormal is None:
            problems.append(f"{test_file} line {line}: 'label' must be 0 or 1, got {rec.get('label')!r}")
        mask = find(rec["mask"], test_file, line) if rec.get("mask") else None
        if image is None or abnormal is None or (rec.get("mask") and mask is None):
            continue
        entry = {"image": _relative(image, base), "abnormal": abnormal}
        if mask is not None:
            entry["label"] = _relative(mask, base)
        if rec.get("clsname"):
            entry["clsname"] = str(rec["clsname"])
        test.append(entry)
    if problems:
        raise DataError(format_problems(problems, f"dataset {root}"))

    datalist: dict = {
        "name": root.name,
        "description": f"Converted from the MediCLIP reference split files in {root}",
        "training": training,
    }
    if val_fraction > 0:
        n_val = max(1, round(float(val_fraction) * len(training)))
        if n_val >= len(training):
            raise DataError(
                f"{train_file}: {len(training)} training images are too few to hold out {val_fraction:.0%}"
            )
        held_out = set(np.random.default_rng(seed).permutation(len(training))[:n_val].tolist())
        datalist["validation"] = [dict(e, abnormal=0) for i, e in enumerate(training) if i in held_out]
        datalist["training"] = [e for i, e in enumerate(training) if i not in held_out]
    datalist["test"] = test

    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(datalist, indent=1) + "\n", encoding="utf-8")
    return datalist

"""The cases of an inference or evaluation run, and the one rule that names them.

A case is one image to score: a NIfTI file, a DICOM series folder, a 2D picture. Its name is what its
outputs are called (``<name>/<name>_anomaly_map.nii.gz``, a row of scores.csv or of evaluation's
cases.csv). Names are unique within a run and depend only on the run's sources, never on their order:

1. the file name without its image suffix (``data.loading.case_name``: ``t1.nii.gz`` -> ``t1``; a DICOM
   series folder is named after the folder);
2. sources that share that name (case-insensitively, as on macOS and Windows file systems) are prefixed
   with their folders below the folder they have in common (``site1/t1.nii.gz`` -> ``site1_t1``,
   ``site2/t1.nii.gz`` -> ``site2_t1``);
3. sources that still share a name (``scan.nii.gz`` and ``scan.png`` in one folder) get their format as
   a suffix (``scan_nii_gz``, ``scan_png``; a series folder ``_dicom``);
4. any name still taken gets ``_2``, ``_3``, ... in the order of the sources' paths.

Where outputs already lie on disk, ``io.outputs.assign_output_names`` adds the last step: a name held
there by another source is never reused.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import DataError
from .datalists import load_datalist
from .loading import DICOM_SUFFIXES, ITK_SUFFIXES, NIFTI_SUFFIXES, PICTURE_SUFFIXES, case_name, is_image_path

__all__ = ["Case", "case_names", "datalist_cases", "find_cases"]

_IMAGE_SUFFIXES = NIFTI_SUFFIXES + DICOM_SUFFIXES + PICTURE_SUFFIXES + ITK_SUFFIXES


@dataclass(frozen=True)
class Case:
    """One case of a run: its output name and the image file or DICOM series folder it comes from."""

    name: str
    source: str


def _format_tag(source: str) -> str:
    """``scan.nii.gz`` -> ``nii_gz``, ``scan.png`` -> ``png``, a folder -> ``dicom``, no suffix -> ``""``."""
    if os.path.isdir(source):
        return "dicom"
    lower = os.path.basename(source).lower()
    for suffix in _IMAGE_SUFFIXES:
        if lower.endswith(suffix):
            return suffix.lstrip(".").replace(".", "_")
    return ""


def _with_folders(sources: Sequence[str]) -> dict[str, str]:
    """Each source's name prefixed with its folders below the folder all of ``sources`` share."""
    folders = [os.path.dirname(os.path.abspath(s)) for s in sources]
    common = os.path.commonpath(folders)
    named = {}
    for source, folder in zip(sources, folders):
        parts = Path(os.path.relpath(folder, common)).parts if folder != common else ()
        named[source] = "_".join([*(p for p in parts if p != "."), case_name(source)])
    return named


def _clashes(names: dict[str, str]) -> list[list[str]]:
    """Groups (of 2 or more) of sources whose names are equal, ignoring case."""
    groups = defaultdict(list)
    for source, name in names.items():
        groups[name.lower()].append(source)
    return [sorted(group) for group in groups.values() if len(group) > 1]


def case_names(sources: Sequence[str]) -> list[str]:
    """Unique case names for the sources of one run, in the order given (the rule of the module docstring).

    Args:
        sources: image files or DICOM series folders; the same path twice is one case given twice
            and gets two names.
    """
    keys = [f"{i}\0{s}" for i, s in enumerate(sources)]  # one key per entry, even for repeated paths
    source_of = dict(zip(keys, sources))
    names = {key: case_name(source_of[key]) for key in keys}
    for group in _clashes(names):
        prefixed = _with_folders([source_of[k] for k in group])
        names.update({k: prefixed[source_of[k]] for k in group})
    for group in _clashes(names):
        for key in group:
            tag = _format_tag(source_of[key])
            names[key] = f"{names[key]}_{tag}" if tag else names[key]
    taken = {name.lower() for name in names.values()}
    for group in _clashes(names):
        # the first by path keeps the name, the others take the next free number
        for key in sorted(group, key=lambda k: (source_of[k], k))[1:]:
            number = 2
            while f"{names[key]}_{number}".lower() in taken:
                number += 1
            names[key] = f"{names[key]}_{number}"
            taken.add(names[key].lower())
    return [names[key] for key in keys]


def _is_dicom_series_folder(path: str) -> bool:
    """A folder of DICOM files only (no sub-folders, no NIfTI or pictures): one series, one case."""
    if not os.path.isdir(path):
        return False
    entries = [os.path.join(path, name) for name in os.listdir(path) if not name.startswith(".")]
    other_images = NIFTI_SUFFIXES + PICTURE_SUFFIXES + ITK_SUFFIXES
    if not entries or any(os.path.isdir(e) or e.lower().endswith(other_images) for e in entries):
        return False
    return any(is_image_path(e) for e in entries)


def find_cases(input_path: str) -> list[Case]:
    """Cases of an inference input: a file, a DICOM series folder, a folder of inputs, or a datalist JSON.

    A folder of inputs gives one case per entry, each file or sub-folder tried (a corrupt or non-image
    file is reported when it is read, not silently skipped); hidden entries are left out. A datalist gives
    its ``test`` section, or its ``training`` section when it has no test section.

    Raises:
        DataError: no input given, the path does not exist, or the folder is empty.
    """
    if not input_path:
        raise DataError("no input given: add --input PATH (a file, a DICOM folder, a folder or a datalist)")
    input_path = os.path.abspath(input_path)
    if not os.path.exists(input_path):
        raise DataError(f"{input_path}: no such file or folder")
    if os.path.isfile(input_path) and input_path.lower().endswith(".json"):
        try:
            items = load_datalist(input_path, "test")
        except DataError:  # a datalist without a test section: its training images
            items = load_datalist(input_path, "training")
        sources = [item["image"] for item in items]
    elif os.path.isfile(input_path) or _is_dicom_series_folder(input_path):
        sources = [input_path]
    else:
        sources = [os.path.join(input_path, e) for e in sorted(os.listdir(input_path)) if not e.startswith(".")]
        if not sources:
            raise DataError(f"{input_path}: empty folder, no image, DICOM series or sub-folder to process")
    return [Case(name, source) for name, source in zip(case_names(sources), sources)]


def datalist_cases(datalist: str, section: str = "test") -> list[dict]:
    """The entries of one datalist section as evaluation cases: each entry plus its ``name`` and ``source``.

    Names follow the same rule as inference's, so a case has one name in scores.csv and cases.csv. An
    empty ``label`` (null or "") is dropped: the entry has no mask.
    """
    items = [{k: v for k, v in item.items() if k != "label" or v} for item in load_datalist(datalist, section)]
    names = case_names([item["image"] for item in items])
    return [{**item, "name": name, "source": item["image"]} for item, name in zip(items, names)]

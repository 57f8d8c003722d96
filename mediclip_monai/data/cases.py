"""The cases of an inference or evaluation run, and the one rule that names them.

A case is one image to score: a NIfTI file, a DICOM series folder, a 2D picture. Its name is what its
outputs are called (``<name>/<name>_anomaly_map.nii.gz``, a row of scores.csv or of evaluation's
cases.csv). Names are unique within a run and depend only on the run's sources, never on their order:

1. the file name without its image suffix (``data.loading.case_name``: ``t1.nii.gz`` -> ``t1``; a DICOM
   series folder is named after the folder), never hidden (``.t1.nii.gz`` -> ``t1``, ``..nii.gz`` ->
   ``unnamed``);
2. sources that share that name (case-insensitively, as on macOS and Windows file systems) are prefixed
   with their folders below the folder they have in common (``site1/t1.nii.gz`` -> ``site1_t1``,
   ``site2/t1.nii.gz`` -> ``site2_t1``; leading dots of a folder's name dropped);
3. sources that still share a name (``scan.nii.gz`` and ``scan.png`` in one folder) get their format as
   a suffix (``scan_nii_gz``, ``scan_png``; a series folder ``_dicom``);
4. any name still taken gets ``_2``, ``_3``, ... in the order of the sources' paths.

Where outputs already lie on disk, ``io.outputs.assign_output_names`` adds the last step: a name held
there by another source is never reused.
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import DataError
from .datalists import load_datalist
from .loading import DICOM_SUFFIXES, ITK_SUFFIXES, NIFTI_SUFFIXES, PICTURE_SUFFIXES, case_name, is_image_path

__all__ = ["Case", "case_names", "datalist_cases", "find_cases"]

logger = logging.getLogger(__name__)

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
        parts = [p.lstrip(".") for p in parts]  # a hidden folder does not make a hidden name
        named[source] = "_".join([*(p for p in parts if p), case_name(source)])
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


def _is_dicom_series(folder: str, files: Sequence[str]) -> bool:
    """Whether a folder's (visible) files are one DICOM series: DICOM files, no NIfTI or pictures."""
    other_images = NIFTI_SUFFIXES + PICTURE_SUFFIXES + ITK_SUFFIXES
    if any(f.lower().endswith(other_images) for f in files):
        return False
    return any(is_image_path(os.path.join(folder, f)) for f in files)


def _search(folder: str, found: list[str], hidden: list[str], searched: set[str]) -> None:
    """Add the inputs in ``folder`` and, recursively, in its sub-folders to ``found``, in path order.

    A folder of DICOM files is one input, a series (its sub-folders are searched too); any other file is
    one input; a sub-folder with nothing visible in it, or unreadable, is one input too, reported when it
    is read. Hidden entries are left out; hidden image files are added to ``hidden`` so that a user hears
    of them.
    """
    if os.path.realpath(folder) in searched:  # a link back up the tree
        return
    searched.add(os.path.realpath(folder))
    entries = sorted(os.listdir(folder))
    hidden += [os.path.join(folder, e) for e in entries if e.startswith(".") and e.lower().endswith(_IMAGE_SUFFIXES)]
    visible = [e for e in entries if not e.startswith(".")]
    files = [e for e in visible if not os.path.isdir(os.path.join(folder, e))]
    if _is_dicom_series(folder, files):
        found.append(folder)
    else:
        found += [os.path.join(folder, f) for f in files]
    for sub in (os.path.join(folder, e) for e in visible if os.path.isdir(os.path.join(folder, e))):
        try:
            empty = all(e.startswith(".") for e in os.listdir(sub))
        except OSError:  # unreadable: a case too, whose reading says why
            empty = True
        if empty:
            found.append(sub)
        else:
            _search(sub, found, hidden, searched)


def find_cases(input_path: str) -> list[Case]:
    """Cases of an inference input: a file, a DICOM series folder, a folder of inputs, or a datalist JSON.

    A folder is searched recursively: each DICOM series folder is one case, each other file one case
    (a corrupt or non-image file is reported when it is read, not silently skipped); hidden entries are
    left out, with a warning naming hidden image files. A datalist gives its ``test`` section, or its
    ``training`` section when it has no test section. Names follow the module docstring's rule.

    Raises:
        DataError: no input given, the path does not exist, or the folder holds nothing to process.
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
    elif os.path.isfile(input_path):
        sources = [input_path]
    else:
        sources, hidden = [], []
        try:
            _search(input_path, sources, hidden, set())
        except OSError as e:
            raise DataError(f"{e.filename or input_path}: cannot be read ({e.strerror})") from e
        if hidden:
            listed = ", ".join(os.path.relpath(h, input_path) for h in hidden[:3]) + ", ..." * (len(hidden) > 3)
            logger.warning(
                f"{input_path}: {len(hidden)} hidden image file(s) left out ({listed}); "
                "give a hidden file itself as --input to process it"
            )
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

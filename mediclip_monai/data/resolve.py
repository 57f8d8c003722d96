"""Where a run's data comes from: the datalist JSON that training and evaluation read.

Order: an explicit ``datalist``; else ``<dataset_dir>/datalist.json``; else the embedded demo set when
``dataset_dir`` is the demo folder (built on first use); else, for a folder of normal scans, a datalist
listing every image in it. Training and evaluation both resolve their datalist here, so evaluation
needs nothing from the training module.
"""

from __future__ import annotations

import json
import logging
import os

from ..errors import DataError
from ..io.atomic import atomic_write
from .demo import ensure_demo_data
from .loading import is_image_path

__all__ = ["DATALIST_NAME", "resolve_datalist", "write_folder_datalist"]

logger = logging.getLogger(__name__)

DATALIST_NAME = "datalist.json"


def resolve_datalist(datalist: str | None, dataset_dir: str, demo_dir: str, output_dir: str) -> str:
    """The datalist JSON of a run (see the module docstring for the order).

    Args:
        datalist: an explicit datalist file (the ``datalist`` key); empty or None to look further.
        dataset_dir: the data folder (``dataset_dir``): holds a ``datalist.json``, is the demo folder, or
            is a folder of normal scans.
        demo_dir: the demo set's folder.
        output_dir: where a datalist made for a folder of scans is written
            (``<output_dir>/datalist_<folder>.json``).
    """
    if datalist:
        return str(datalist)
    candidate = os.path.join(dataset_dir, DATALIST_NAME)
    if os.path.isfile(candidate):
        return candidate
    if os.path.abspath(dataset_dir) == os.path.abspath(demo_dir):
        return ensure_demo_data(dataset_dir)
    return write_folder_datalist(dataset_dir, output_dir)


def write_folder_datalist(folder: str, output_dir: str) -> str:
    """A datalist whose training section is every image (file or DICOM series folder) in ``folder``."""
    if not os.path.isdir(folder):
        raise DataError(f"{folder}: no such folder (dataset_dir); give --dataset_dir or --datalist FILE")
    entries = sorted(os.listdir(folder))
    images = [
        os.path.abspath(os.path.join(folder, name))
        for name in entries
        if not name.startswith(".")
        and (os.path.isdir(os.path.join(folder, name)) or is_image_path(os.path.join(folder, name)))
    ]
    if not images:
        raise DataError(
            f"{folder}: no {DATALIST_NAME} and no image in this folder. Give --datalist FILE, or a folder of "
            "normal scans (NIfTI, DICOM series folders, PNG/JPEG); scripts/prepare_dataset.py converts the "
            "paper's datasets."
        )
    path = os.path.join(output_dir, f"datalist_{os.path.basename(os.path.normpath(folder))}.json")
    with atomic_write(path) as tmp, open(tmp, "w") as f:
        json.dump({"training": [{"image": image} for image in images]}, f, indent=2)
    logger.info(f"{len(images)} images of {folder} listed as normal training data in {path}")
    return path

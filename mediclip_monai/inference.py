"""Inference runs of the bundle (bundle/configs/inference.json): trained model in, per-case outputs out.

For every case (a NIfTI file, a DICOM series folder, a 2D image, a folder of them, or a datalist) it
writes, in the input's own voxel grid and physical space:
``<name>/<name>_anomaly_map.nii.gz``, ``<name>/<name>_anomaly_mask.nii.gz``,
``<name>/<name>_anomaly.seg.nrrd`` and, for DICOM input, ``<name>/<name>_anomaly_seg.dcm``; then
``scores.csv`` and ``cases.json`` (case -> source, for scripts/slicer_review.py) for the run.
A bad case is reported with its file and reason and the others are still written.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from .data.datalists import DataError, load_datalist
from .data.loading import ITK_SUFFIXES, NIFTI_SUFFIXES, PICTURE_SUFFIXES, case_name, is_image_path, read_image
from .inferers import SliceWiseInferer
from .io import atomic
from .io.writers import (
    read_dicom_series,
    write_anomaly_map,
    write_anomaly_mask,
    write_dicom_seg,
    write_scores_csv,
    write_slicer_segmentation,
)
from .networks import MediCLIP, load_mediclip

logger = logging.getLogger(__name__)


class InferenceError(RuntimeError):
    """Some cases could not be processed; the message lists each with its file and reason."""


def load_trained_model(ckpt_path: str, device: str = "cpu", clip_checkpoint: str | None = None) -> MediCLIP:
    """Rebuild the network recorded in ``ckpt_path`` with its trained weights (see ``networks.load_mediclip``)."""
    return load_mediclip(ckpt_path, clip_checkpoint=clip_checkpoint, device=device)


def predict_volume(model: MediCLIP, image: torch.Tensor, batch_size: int = 8) -> dict:
    """Anomaly map of one (1, H, W) image or (1, H, W, D) volume on its own grid (see SliceWiseInferer)."""
    device = next(model.parameters()).device
    return SliceWiseInferer(model, batch_size=batch_size, device=device)(image)


@dataclass
class Case:
    """One inference case: its output name and the image file or DICOM series folder it comes from."""

    name: str
    source: str


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
    """Cases of an inference input: a file, a DICOM series folder, a folder of inputs, or a datalist JSON."""
    input_path = os.path.abspath(input_path)
    if not os.path.exists(input_path):
        raise DataError(f"{input_path}: no such file or folder")
    if os.path.isfile(input_path) and input_path.lower().endswith(".json"):
        try:
            items = load_datalist(input_path, "test")
        except DataError:  # a datalist without a test section: its training images
            items = load_datalist(input_path, "training")
        return [Case(case_name(item["image"]), item["image"]) for item in items]
    if os.path.isfile(input_path) or _is_dicom_series_folder(input_path):
        return [Case(case_name(input_path), input_path)]
    cases = []
    for entry in sorted(os.listdir(input_path)):
        path = os.path.join(input_path, entry)
        # Every file is tried: a corrupt or non-image file is reported, not silently skipped.
        if not entry.startswith("."):
            cases.append(Case(case_name(path), path))
    if not cases:
        raise DataError(f"{input_path}: empty folder, no image, DICOM series or sub-folder to process")
    return cases


def write_case_outputs(case: Case, image: torch.Tensor, result: dict, output_dir: str, threshold: float) -> dict:
    """Write map, mask, Slicer segmentation (and DICOM SEG for DICOM input) of one case; returns the paths."""
    folder = os.path.join(output_dir, case.name)
    affine = np.asarray(image.affine, dtype=np.float64)
    anomaly_map = result["anomaly_map"]
    mask = (anomaly_map >= threshold).astype(np.uint8)
    paths = {
        "anomaly_map": os.path.join(folder, f"{case.name}_anomaly_map.nii.gz"),
        "anomaly_mask": os.path.join(folder, f"{case.name}_anomaly_mask.nii.gz"),
        "segmentation": os.path.join(folder, f"{case.name}_anomaly.seg.nrrd"),
    }
    write_anomaly_map(paths["anomaly_map"], anomaly_map, affine)
    write_anomaly_mask(paths["anomaly_mask"], mask, affine)
    write_slicer_segmentation(paths["segmentation"], mask, affine)
    if os.path.isdir(case.source) and mask.ndim == 3:
        paths["dicom_seg"] = os.path.join(folder, f"{case.name}_anomaly_seg.dcm")
        write_dicom_seg(paths["dicom_seg"], mask, read_dicom_series(case.source), affine=affine)
    return paths


def run_inference(input_path: str, output_dir: str, inferer: SliceWiseInferer, threshold: float = 0.5) -> list[dict]:
    """Process every case of ``input_path`` into ``output_dir``; raise InferenceError listing bad cases.

    Good cases are all written before the error is raised, so one corrupt file does not cost a run.

    Args:
        input_path: a NIfTI/2D image file, a DICOM series folder, a folder of these, or a datalist JSON.
        output_dir: where the per-case folders, scores.csv and cases.json go.
        inferer: the slice-wise inferer holding the trained network.
        threshold: anomaly probability at and above which a voxel belongs to the mask.
    """
    if not input_path:
        raise DataError("no input given: add --input PATH (a file, a DICOM folder, a folder or a datalist)")
    cases = find_cases(input_path)
    os.makedirs(output_dir, exist_ok=True)
    rows, sources, failures = [], {}, []
    for case in tqdm(cases, desc="inference", unit="case"):
        try:
            image = read_image(case.source)
            result = inferer(image)
            write_case_outputs(case, image, result, output_dir, threshold)
        except Exception as error:  # one bad case must not stop the others
            logger.error(f"{case.source}: {error}")
            failures.append(f"{case.source}: {error}")
            continue
        rows.append({"name": case.name, "score": result["score"], "max_slice": result["max_slice"]})
        sources[case.name] = {"source": case.source}
    write_scores_csv(os.path.join(output_dir, "scores.csv"), rows)
    with atomic.atomic_write(os.path.join(output_dir, "cases.json")) as tmp:
        with open(tmp, "w") as f:
            json.dump(sources, f, indent=2)
    logger.info(f"wrote {len(rows)} case(s) to {output_dir}")
    if failures:
        raise InferenceError(f"{len(failures)} of {len(cases)} case(s) failed:\n" + "\n".join(failures))
    return rows

"""Evaluation runs of the bundle (bundle/configs/evaluate.json) on a labelled test datalist.

As in MediCLIP's protocol: maps are computed at the network's resolution (224 x 224), the image score is
the map's maximum, pixel metrics pool every test pixel (normal images count as all-normal masks) and
truth masks are resized nearest and binarised. Writes ``metrics.json``, ``cases.csv``, ``roc.png`` and
``montage.png`` (the highest- and lowest-scoring cases: image, truth outline, map).
"""

from __future__ import annotations

import csv
import json
import logging
import os

import numpy as np
import torch.nn.functional as F
from tqdm import tqdm

from .data.datalists import DataError, load_datalist
from .data.loading import read_image, scale_intensity
from .inferers import SliceWiseInferer, axial_views
from .io.atomic import atomic_write
from .metrics import image_auroc, max_f1, overlay_montage, pixel_aupro, pixel_auroc, plot_roc

logger = logging.getLogger(__name__)
MONTAGE_CASES = 4


def _case_maps(inferer: SliceWiseInferer, item: dict) -> dict:
    """Image slices in [0, 1], anomaly maps and truth masks of one test case, all at the model resolution."""
    size = inferer.image_size
    image = read_image(item["image"])
    _, slices = axial_views(scale_intensity(image))
    maps = inferer.slice_maps(slices, output_size=size).numpy()
    images = F.interpolate(slices[:, None], size=size, mode="bilinear", align_corners=False)[:, 0].numpy()
    masks = None
    if item.get("label"):
        _, label_slices = axial_views(read_image(item["label"]))
        if label_slices.shape != slices.shape:
            raise DataError(
                f"{item['label']}: mask shape {tuple(label_slices.shape)} differs from image {tuple(slices.shape)}"
            )
        masks = F.interpolate(label_slices[:, None], size=size, mode="nearest")[:, 0].numpy() > 0.5
    abnormal = item.get("abnormal")
    if abnormal is None:
        if masks is None:
            raise DataError(f"{item['image']}: test entry has neither 'abnormal' nor 'label'")
        abnormal = int(masks.any())
    if masks is None and int(abnormal) == 0:
        masks = np.zeros(maps.shape, dtype=bool)  # a normal image is an all-normal mask
    return {"images": images, "maps": maps, "masks": masks, "abnormal": int(abnormal)}


def evaluate(datalist: str, output_dir: str, inferer: SliceWiseInferer, section: str = "test") -> dict:
    """Score every case of ``section`` and write the metrics, the per-case CSV and the pictures.

    Returns the metrics: image_auroc, image_max_f1, and when masks exist pixel_auroc and pixel_aupro
    (per-region overlap up to 30% false-positive rate). Percent-free, in [0, 1].
    """
    items = load_datalist(datalist, section)
    cases = []
    for item in tqdm(items, desc="evaluation", unit="case"):
        result = _case_maps(inferer, item)
        flat_max = int(result["maps"].reshape(len(result["maps"]), -1).max(axis=1).argmax())
        cases.append(
            {"name": os.path.basename(item["image"]), "score": float(result["maps"].max()), "slice": flat_max, **result}
        )
    labels = np.array([c["abnormal"] for c in cases])
    scores = np.array([c["score"] for c in cases])
    metrics = {
        "n_cases": len(cases),
        "n_abnormal": int(labels.sum()),
        "image_auroc": image_auroc(labels, scores),
        "image_max_f1": max_f1(labels, scores),
    }
    with_masks = [c for c in cases if c["masks"] is not None]
    if any(c["abnormal"] and c["masks"] is not None for c in cases):
        masks = np.concatenate([c["masks"] for c in with_masks])
        maps = np.concatenate([c["maps"] for c in with_masks])
        metrics["pixel_auroc"] = pixel_auroc(masks, maps)
        metrics["pixel_aupro"] = pixel_aupro(masks, maps, max_fpr=0.3)
    metrics = {k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in metrics.items()}

    os.makedirs(output_dir, exist_ok=True)
    with atomic_write(os.path.join(output_dir, "metrics.json")) as tmp, open(tmp, "w") as f:
        json.dump(metrics, f, indent=2)
    with atomic_write(os.path.join(output_dir, "cases.csv")) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["name", "score", "abnormal", "has_mask", "max_slice"])
        for c in cases:
            writer.writerow([c["name"], f"{c['score']:.6f}", c["abnormal"], int(c["masks"] is not None), c["slice"]])
    plot_roc(os.path.join(output_dir, "roc.png"), labels, scores, title=f"Image AUROC {metrics['image_auroc']}")
    ranked = sorted(cases, key=lambda c: c["score"], reverse=True)
    shown = ranked[:MONTAGE_CASES] + ranked[MONTAGE_CASES:][-MONTAGE_CASES:]
    overlay_montage(
        os.path.join(output_dir, "montage.png"),
        [
            {
                "name": c["name"],
                "image": c["images"][c["slice"]],
                "anomaly_map": c["maps"][c["slice"]],
                "label": None if c["masks"] is None else c["masks"][c["slice"]],
                "score": c["score"],
            }
            for c in shown
        ],
    )
    logger.info(f"evaluation of {len(cases)} case(s): {json.dumps(metrics)}")
    return metrics

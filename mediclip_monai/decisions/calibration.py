"""Calibration from normals: fitting the model's decisions (fusion of the anomaly branches, the thresholds,
the image-score rule) on the validation set, and applying the fusion.

Pure functions: arrays in (numpy or torch), plain numbers and dicts out. `calibrate` runs at the end of
training (``workflows.calibrate``) on the calibration set (held-out normal slices, each also with anomalies of
kinds training never makes, ``data.unseen_anomalies``; called "validation" below and in the stored counts) and
returns a plain dict of floats and strings that model.pt keeps and `Decisions` reads; the
network applies `fused_map`. Never computed from test data.

The rules, each chosen by an experiment (tiny random backbone, k = 16, 50 epochs, 6 seeds, on the demo set
and on the held-out brain set of `mediclip_monai.data.heldout_brain`):

- Branch normalisation: per branch, the median and the interquartile range of its map over the
  foreground pixels of the NORMAL validation slices (robust statistics: the maps' upper tails are
  heavy; median/IQR did as well as or better than mean/std on both sets).
- Fusion: ``z = sum_b w_b (map_b - median_b) / IQR_b``, the memory bank's weight ``memory_bank_weight``
  (the MediCLIP branch's 1 minus it): given in the config, or chosen on the calibration set
  (``decisions.branch_choice``; training's own validation anomalies are of the kinds MediCLIP's branch was
  trained on, so they would favour that branch, while unseen lesions favour the memory bank).
- Back to [0, 1]: a logistic fitted on the validation pixels (Platt scaling), ``p = sigmoid(a z + b)``:
  the probability that a pixel is anomalous under the validation set's mix, monotone in ``z`` (AUROC
  unchanged). The ``mediclip`` branch is never touched: it stays the paper's softmax map.
- Mask threshold (stored as ``pixel_threshold``): the one of maximum F1 over all validation pixels, per
  branch, on the map that branch writes. (A high quantile of the normal pixels did about as well; max F1
  gave the higher Dice on the held-out brain set.)
- Image score: the mean of the top 1% of the map's foreground pixels (``scoring.image_score``). The map's
  plain maximum is one pixel and noisy.
- Image threshold: halfway between the median image score of the normal validation slices
  and that of the synthetic-anomaly ones (with 8-32 validation images a midpoint of medians is steadier
  than the threshold of best balanced accuracy).
- Map range: the minimum and maximum of each branch's map over the validation pixels (anomalib's min-max
  statistics), the span by which ``mediclip_monai.decisions.map_scale`` normalises a map around its threshold.
- Default branch: `calibrate` returns ``fused``; ``workflows.calibrate`` replaces it with the branch of best
  pixel AUROC on the calibration set (``decisions.branch_choice``). A calibrated network writes it unless told
  another branch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from monai.utils import convert_to_numpy

from .decisions import DEFAULT_BRANCH
from .scoring import FOREGROUND_LEVEL, IMAGE_TOP_FRACTION, foreground, image_score

__all__ = [
    "DEFAULT_MEMORY_BANK_WEIGHT",
    "calibrate",
    "fused_map",
    "fused_score",
    "fusion_parameters",
    "image_threshold",
    "normal_statistics",
    "pixel_threshold",
    "platt_scaling",
]

DEFAULT_MEMORY_BANK_WEIGHT = 0.5
# Pixels used to fit the logistic and the F1 curve: validation sets stay well below this; a larger one
# is subsampled evenly (deterministic).
_MAX_FIT_PIXELS = 4_000_000


def normal_statistics(maps, images, level: float = FOREGROUND_LEVEL) -> dict:
    """Median and interquartile range of a branch's maps over the foreground of normal images.

    Args:
        maps: N x H x W maps of normal images (held-out validation normals, never test data).
        images: the images, scaled to [0, 1], same shape.

    Returns:
        ``{"center": median, "scale": IQR}`` (scale floored at 1e-6 so a flat map cannot divide by zero).
    """
    maps, images = convert_to_numpy(maps, wrap_sequence=True), convert_to_numpy(images, wrap_sequence=True)
    values = maps[foreground(images, level)]
    if values.size == 0:
        values = maps.ravel()
    q25, q50, q75 = np.percentile(values.astype(np.float64), [25, 50, 75])
    return {"center": float(q50), "scale": float(max(q75 - q25, 1e-6))}


def fusion_parameters(
    mediclip_normal, memory_bank_normal, images, memory_bank_weight: float = DEFAULT_MEMORY_BANK_WEIGHT
) -> dict:
    """Normalisation of each branch on normal validation images, and the fixed fusion weights.

    Returns:
        ``{"mediclip": {"center", "scale", "weight"}, "memory_bank": {...}}``; the weights sum to 1.
    """
    if not 0.0 <= memory_bank_weight <= 1.0:
        raise ValueError(f"memory_bank_weight must lie in [0, 1], got {memory_bank_weight}")
    return {
        "mediclip": {**normal_statistics(mediclip_normal, images), "weight": 1.0 - float(memory_bank_weight)},
        "memory_bank": {**normal_statistics(memory_bank_normal, images), "weight": float(memory_bank_weight)},
    }


def fused_score(mediclip, memory_bank, fusion: Mapping):
    """The combined score ``z = sum_b w_b (map_b - center_b) / scale_b`` (same type and shape as the maps)."""
    total = 0.0
    for name, anomaly_map in (("mediclip", mediclip), ("memory_bank", memory_bank)):
        branch = fusion[name]
        total = total + branch["weight"] * (anomaly_map - branch["center"]) / branch["scale"]
    return total


def platt_scaling(scores, labels) -> dict:
    """Logistic regression of pixel labels on scores: ``{"slope": a, "offset": b}`` for ``sigmoid(a s + b)``.

    Unregularised maximum likelihood over the given pixels (evenly subsampled past 4 M pixels).
    """
    from sklearn.linear_model import LogisticRegression  # here: the network imports this module, fitting is rare

    x, y = _fit_pixels(scores, labels)
    if y.all() or not y.any():
        raise ValueError("Platt scaling needs both normal and anomalous validation pixels")
    model = LogisticRegression(C=np.inf, max_iter=1000).fit(x[:, None], y)
    return {"slope": float(model.coef_[0, 0]), "offset": float(model.intercept_[0])}


def fused_map(mediclip, memory_bank, fusion: Mapping):
    """The fused anomaly map in [0, 1]: ``sigmoid(slope * fused_score + offset)`` (numpy or torch, as given)."""
    logit = fusion["slope"] * fused_score(mediclip, memory_bank, fusion) + fusion["offset"]
    if isinstance(logit, torch.Tensor):
        return torch.sigmoid(logit)
    return 1.0 / (1.0 + np.exp(-np.clip(logit, -60.0, 60.0)))


def pixel_threshold(maps, masks) -> float:
    """The map value of maximum F1 over the given pixels (mask 1 = anomalous); pixels at or above it are anomalous."""
    from sklearn.metrics import precision_recall_curve

    scores, labels = _fit_pixels(maps, masks)
    if not labels.any():
        raise ValueError("the pixel threshold needs anomalous validation pixels")
    precision, recall, thresholds = precision_recall_curve(labels, scores)
    f1 = 2 * precision[:-1] * recall[:-1] / np.maximum(precision[:-1] + recall[:-1], 1e-12)
    return float(thresholds[int(np.argmax(f1))])


def image_threshold(scores: Sequence[float], labels: Sequence[int]) -> float:
    """Image decision threshold: midway between the median score of normal (0) and of abnormal (1) images."""
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels).astype(bool)
    if labels.all() or not labels.any():
        raise ValueError("the image threshold needs both normal and abnormal validation images")
    return float((np.median(scores[~labels]) + np.median(scores[labels])) / 2)


def calibrate(
    mediclip,
    memory_bank,
    images,
    masks,
    memory_bank_weight: float = DEFAULT_MEMORY_BANK_WEIGHT,
) -> dict:
    """Every stored calibration value from the validation set's maps.

    Args:
        mediclip: N x H x W MediCLIP maps of the validation slices (the paper's map).
        memory_bank: N x H x W memory-bank maps of the same slices.
        images: the slices, scaled to [0, 1].
        masks: N x H x W truth (0 everywhere on normal slices; the synthetic anomaly's mask otherwise).
            A slice is normal when its mask is empty.
        memory_bank_weight: fusion weight of the memory bank (the MediCLIP branch gets 1 minus it).

    Returns:
        A plain dict (floats and strings only): ``fusion`` (per-branch center/scale/weight, Platt
        ``slope``/``offset``), ``pixel_threshold``, ``image_threshold`` and ``map_range`` (the ``min`` and
        ``max`` of the branch's validation maps, the span of ``map_scale``'s normalisation) per branch, the
        ``image_score`` rule, the ``default_branch``, and counts of the validation set.
    """
    mediclip, memory_bank, images = (convert_to_numpy(x, wrap_sequence=True) for x in (mediclip, memory_bank, images))
    masks = convert_to_numpy(masks, wrap_sequence=True) > 0.5
    abnormal = masks.reshape(len(masks), -1).any(axis=1)
    if abnormal.all() or not abnormal.any():
        raise ValueError("calibration needs normal and anomalous validation slices")
    normal = ~abnormal
    fusion = fusion_parameters(mediclip[normal], memory_bank[normal], images[normal], memory_bank_weight)
    fusion.update(platt_scaling(fused_score(mediclip, memory_bank, fusion), masks))
    maps = {"mediclip": mediclip, "memory_bank": memory_bank, "fused": fused_map(mediclip, memory_bank, fusion)}
    pixel, decision, value_range = {}, {}, {}
    for name, branch_maps in maps.items():
        pixel[name] = pixel_threshold(branch_maps, masks)
        decision[name] = image_threshold([image_score(m, i) for m, i in zip(branch_maps, images)], abnormal)
        value_range[name] = {"min": float(branch_maps.min()), "max": float(branch_maps.max())}
    return {
        "fusion": fusion,
        "pixel_threshold": pixel,
        "pixel_threshold_rule": "max F1 over the validation pixels",
        "image_threshold": decision,
        "image_threshold_rule": "midway between the medians of normal and synthetic-anomaly validation scores",
        "map_range": value_range,
        "image_score": {
            "rule": "mean of the top fraction of foreground pixels; a volume: max over its slices",
            "top_fraction": IMAGE_TOP_FRACTION,
            "foreground_level": FOREGROUND_LEVEL,
        },
        "default_branch": DEFAULT_BRANCH,
        "validation": {"n_images": int(len(masks)), "n_abnormal": int(abnormal.sum())},
    }


def _fit_pixels(scores, labels) -> tuple[np.ndarray, np.ndarray]:
    """Flattened scores (float64) and boolean labels, evenly subsampled past `_MAX_FIT_PIXELS`."""
    scores = convert_to_numpy(scores, wrap_sequence=True).reshape(-1).astype(np.float64)
    labels = (convert_to_numpy(labels, wrap_sequence=True) > 0.5).reshape(-1)
    if scores.shape != labels.shape:
        raise ValueError(f"scores and labels differ in size: {scores.size} vs {labels.size}")
    step = max(1, math.ceil(scores.size / _MAX_FIT_PIXELS))
    return scores[::step], labels[::step]

"""The rules that turn an anomaly map into the outputs a reader sees: the image score, the slice holding it,
the mask and the verdict. Pure functions of arrays and numbers; which numbers a run uses (thresholds, the
score rule of its model) is `Decisions`'s to say.

- Image score: the map's maximum (MediCLIP's protocol, arXiv 2405.11315; an uncalibrated model and training
  validation), or the calibrated rule: the mean of the top ``top_fraction`` (1%) of a slice's foreground
  pixels, foreground being where the image, scaled to [0, 1], exceeds ``foreground_level`` (0.1, the level
  that ``data.loading`` uses); a slice without foreground uses all its pixels. A volume scores its best slice.
  The map's plain maximum is one pixel and noisy.
- Slice of the score: the index, along the volume's axial axis, of the slice that holds it.
- Mask: voxels whose anomaly value is at or above the mask threshold.
- Verdict (``decision``): "abnormal" when the score is at or above the image threshold.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import torch
from monai.utils import convert_to_numpy

__all__ = [
    "FOREGROUND_LEVEL",
    "IMAGE_TOP_FRACTION",
    "anomaly_mask",
    "case_score",
    "decision",
    "foreground",
    "image_score",
    "maximum_scores",
    "slice_scores",
]

FOREGROUND_LEVEL = 0.1
IMAGE_TOP_FRACTION = 0.01


def maximum_scores(anomaly_maps: torch.Tensor) -> torch.Tensor:
    """The uncalibrated image scores of a batch of maps: B x ... (any spatial shape) -> B, the maximum of each."""
    return anomaly_maps.flatten(1).amax(dim=1)


def foreground(image, level: float = FOREGROUND_LEVEL) -> np.ndarray:
    """Boolean foreground of an image scaled to [0, 1]: pixels brighter than ``level`` (air and background are dark)."""
    return convert_to_numpy(image, wrap_sequence=True) > level


def slice_scores(maps, images, top_fraction: float = IMAGE_TOP_FRACTION, level: float = FOREGROUND_LEVEL) -> np.ndarray:
    """Per-slice image scores by the calibrated rule: for each slice, the mean of the top ``top_fraction`` of its
    foreground pixels.

    Args:
        maps: N x H x W maps of N slices (first axis the slices), numpy or torch.
        images: the slices, scaled to [0, 1], same shape as ``maps``.
        top_fraction: share of the foreground pixels averaged (at least one pixel).
        level: foreground level of `foreground`; a slice without foreground uses all its pixels.

    Returns:
        N float64 scores.
    """
    maps, images = convert_to_numpy(maps, wrap_sequence=True), convert_to_numpy(images, wrap_sequence=True)
    if maps.shape != images.shape or maps.ndim != 3:
        raise ValueError(f"map and image must share one N x H x W shape, got {maps.shape} and {images.shape}")
    scores = np.empty(len(maps))
    for i, (slice_map, slice_image) in enumerate(zip(maps, images)):
        values = slice_map[foreground(slice_image, level)]
        if values.size == 0:
            values = slice_map.ravel()
        count = max(1, math.ceil(top_fraction * values.size))
        scores[i] = np.partition(values, values.size - count)[-count:].astype(np.float64).mean()
    return scores


def image_score(anomaly_map, image, top_fraction: float = IMAGE_TOP_FRACTION, level: float = FOREGROUND_LEVEL) -> float:
    """The image score by the calibrated rule: mean of the top ``top_fraction`` of the map's foreground pixels.

    Args:
        anomaly_map: H x W map of one slice, or N x H x W maps of a volume's slices (first axis the slices).
        image: the slice(s) the map belongs to, scaled to [0, 1], same shape as ``anomaly_map``.
        top_fraction: share of the foreground pixels averaged (at least one pixel).
        level: foreground level of `foreground`.

    Returns:
        The score; for a stack of slices the maximum of the slices' scores (`slice_scores`).
    """
    maps, images = convert_to_numpy(anomaly_map, wrap_sequence=True), convert_to_numpy(image, wrap_sequence=True)
    if maps.shape != images.shape or maps.ndim not in (2, 3):
        raise ValueError(f"map and image must share one 2D or N x H x W shape, got {maps.shape} and {images.shape}")
    stack = (maps[None], images[None]) if maps.ndim == 2 else (maps, images)
    return float(slice_scores(*stack, top_fraction, level).max())


def case_score(
    anomaly_map, image=None, rule: Mapping | None = None, axis: int | None = None
) -> tuple[float, int | None]:
    """The image score of one case and, for a volume, the axial slice that holds it.

    Args:
        anomaly_map: spatial ``(H, W)`` or ``(H, W, D)`` map, no channel axis.
        image: the case's image scaled to [0, 1], same shape (used by a calibrated rule's foreground).
        rule: the calibrated rule (``top_fraction``, ``foreground_level``); None: the map's maximum.
        axis: the axial axis of a volume (``data.loading.axial_axis`` of its affine); None for 2D.

    Returns:
        ``(score, slice index or None)``; ties go to the first slice.
    """
    maps = torch.as_tensor(anomaly_map).detach().float().cpu()
    maps = maps[None] if axis is None else maps.movedim(axis, 0)
    if rule is None:
        per_slice = maximum_scores(maps)
    else:
        if image is None:
            raise ValueError("a calibrated image-score rule needs the image (its foreground)")
        images = torch.as_tensor(image).detach().float().cpu()
        images = images[None] if axis is None else images.movedim(axis, 0)
        per_slice = torch.as_tensor(slice_scores(maps, images, rule["top_fraction"], rule["foreground_level"]))
    index = int(per_slice.argmax())
    return float(per_slice[index]), (None if axis is None else index)


def anomaly_mask(anomaly_map: torch.Tensor, threshold: float) -> torch.Tensor:
    """uint8 mask of the map, 1 where the anomaly probability is at or above ``threshold``."""
    return (anomaly_map >= threshold).to(torch.uint8)


def decision(score: float, threshold: float) -> str:
    """Image-level verdict of a score: ``"abnormal"`` at or above ``threshold``, else ``"normal"``."""
    return "abnormal" if score >= threshold else "normal"

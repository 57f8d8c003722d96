"""The decision rules of MediCLIP outputs: the image score, the slice holding it, the mask and the verdict.

One home for each rule, called by training validation (``metrics.ImageAUROC``), inference and evaluation
(``transforms.AnomalyScored``) and the MONAI Label app:

- image score: the model's rule. A calibrated model.pt carries it (``image_score_rule``: the mean of
  the top 1% of the foreground pixels of each slice, a volume taking its best slice; see
  ``mediclip_monai.decisions.calibration``); an uncalibrated model (and training validation, which runs before
  calibration) uses MediCLIP's protocol, the maximum of the anomaly map (arXiv 2405.11315);
- slice of the score: the index, along the volume's axial axis, of the slice that holds it;
- mask: voxels whose anomaly value is at or above the pixel threshold;
- image decision: "abnormal" when the score is at or above the image threshold.

``decision_threshold`` and ``image_decision_threshold`` turn the config's ``threshold`` and
``image_threshold`` into the numbers these rules use: ``null`` (the default) means the thresholds
calibrated into model.pt for the network's ``anomaly_branch``; a number overrides. Without calibration,
the image threshold is the pixel threshold, so that with the maximum as score "abnormal" means "the mask
is not empty".
"""

from __future__ import annotations

import math

import torch

from ..errors import ConfigValueError
from . import calibration

__all__ = [
    "anomaly_mask",
    "case_score",
    "decision",
    "decision_threshold",
    "image_decision_threshold",
    "image_score",
    "image_score_rule",
    "image_scores",
    "max_slice",
]


def image_scores(anomaly_maps: torch.Tensor) -> torch.Tensor:
    """Image scores of a batch of anomaly maps: B x ... (any spatial shape) -> B, the maximum of each."""
    return anomaly_maps.flatten(1).amax(dim=1)


def image_score(anomaly_map) -> float:
    """The image score of one anomaly map (any shape, channel axis included or not): its maximum."""
    return float(image_scores(torch.as_tensor(anomaly_map).reshape(1, -1))[0])


def max_slice(anomaly_map, axis: int) -> int:
    """Index along spatial ``axis`` of the slice holding the map's maximum (first one on ties).

    Args:
        anomaly_map: spatial ``(H, W, D)`` map, no channel axis.
        axis: the axial axis (``data.loading.axial_axis`` of the map's affine).
    """
    per_slice = torch.as_tensor(anomaly_map).movedim(axis, 0)
    return int(image_scores(per_slice).argmax())


def image_score_rule(network=None) -> dict | None:
    """The image-score rule a network carries: its calibration's ``image_score`` entry, None (the map's
    maximum) for an uncalibrated network."""
    stored = _calibration(network)
    return None if stored is None else dict(stored["image_score"])


def case_score(anomaly_map, image=None, rule: dict | None = None, axis: int | None = None) -> tuple[float, int | None]:
    """The image score of one case and, for a volume, the axial slice that holds it.

    Args:
        anomaly_map: spatial ``(H, W)`` or ``(H, W, D)`` map, no channel axis.
        image: the case's image scaled to [0, 1], same shape (used by a calibrated rule's foreground).
        rule: ``image_score_rule`` of the network; None: the map's maximum.
        axis: the axial axis of a volume (``data.loading.axial_axis`` of its affine); None for 2D.

    Returns:
        ``(score, slice index or None)``; ties go to the first slice.
    """
    maps = torch.as_tensor(anomaly_map).detach().float().cpu()
    maps = maps[None] if axis is None else maps.movedim(axis, 0)
    if rule is None:
        per_slice = image_scores(maps)
    else:
        if image is None:
            raise ValueError("a calibrated image-score rule needs the image (its foreground)")
        images = torch.as_tensor(image).detach().float().cpu()
        images = images[None] if axis is None else images.movedim(axis, 0)
        per_slice = torch.as_tensor(
            calibration.slice_scores(maps, images, rule["top_fraction"], rule["foreground_level"])
        )
    index = int(per_slice.argmax())
    return float(per_slice[index]), (None if axis is None else index)


def anomaly_mask(anomaly_map: torch.Tensor, threshold: float) -> torch.Tensor:
    """uint8 mask of the map, 1 where the anomaly probability is at or above ``threshold``."""
    return (anomaly_map >= threshold).to(torch.uint8)


def decision(score: float, threshold: float) -> str:
    """Image-level verdict of a score: ``"abnormal"`` at or above ``threshold``, else ``"normal"``."""
    return "abnormal" if score >= threshold else "normal"


def decision_threshold(threshold: float | None, network=None) -> float:
    """The pixel threshold of masks, from the config's ``threshold``.

    Args:
        threshold: an anomaly probability in [0, 1]; ``None`` (or the text ``null``): the threshold
            calibrated into model.pt for the network's ``anomaly_branch`` (max F1 on the validation pixels).
        network: the trained network (where a calibrated threshold is read from).

    Raises:
        ConfigValueError: ``threshold`` is not a number in [0, 1], or it is ``None`` while the model carries
            no calibration.
    """
    value = _config_number(threshold, "threshold", "an anomaly probability between 0 and 1")
    if value is None:
        return float(_calibrated(network, "pixel_threshold", "threshold"))
    if not 0.0 <= value <= 1.0:
        raise ConfigValueError(
            f"--threshold {threshold!r}: must be an anomaly probability between 0 and 1, or null (the model's "
            "calibrated threshold)"
        )
    return value


def image_decision_threshold(image_threshold: float | None, network=None, pixel_threshold: float = 0.5) -> float:
    """The image-score threshold of the abnormal/normal decision, from the config's ``image_threshold``.

    Args:
        image_threshold: a score; ``None`` (or the text ``null``): the one calibrated into model.pt for the
            network's branch (midway between the median scores of normal and synthetic-anomaly validation
            images), or, for an uncalibrated network, ``pixel_threshold``.
        network: the trained network.
        pixel_threshold: the mask threshold in use (``decision_threshold``).

    Raises:
        ConfigValueError: ``image_threshold`` is not a number.
    """
    value = _config_number(image_threshold, "image_threshold", "an image score")
    if value is not None:
        return value
    if _calibration(network) is None:
        return float(pixel_threshold)
    return float(_calibrated(network, "image_threshold", "image_threshold"))


def _config_number(value, key: str, meaning: str) -> float | None:
    """A threshold of the config as a float; None for null. The command line may give text ('abc', 'null')."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("null", "none")):
        return None
    try:
        number = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number):
        raise ConfigValueError(f"--{key} {value!r}: must be {meaning}, or null (the model's calibrated threshold)")
    return number


def _calibration(network) -> dict | None:
    return getattr(getattr(network, "module", network), "calibration", None)


def _calibrated(network, entry: str, key: str) -> float:
    stored = _calibration(network)
    if stored is None:
        raise ConfigValueError(
            f"{key} null asks for the model's calibrated threshold, and this model.pt carries none; give one "
            f"(e.g. --{key} 0.5) or calibrate the model: {calibration.CALIBRATE_COMMAND}"
        )
    return stored[entry][getattr(network, "module", network).anomaly_branch]

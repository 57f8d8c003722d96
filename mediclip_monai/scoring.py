"""The decision rules of MediCLIP outputs: the image score, the slice holding it, the mask and the verdict.

One home for each rule, called by training validation (``metrics.ImageAUROC``), inference and evaluation
(``transforms.AnomalyScored``) and the MONAI Label app:

- image score: the maximum of the anomaly map (MediCLIP's protocol, arXiv 2405.11315);
- slice of the maximum: the index, along the volume's axial axis, of the slice that holds it;
- mask: voxels whose anomaly probability is at or above the threshold;
- image decision: "abnormal" when the score is at or above the threshold, which with the maximum as
  score means "the mask is not empty".

``decision_threshold`` turns the config's ``threshold`` into the number these rules use; ``null`` is
reserved for the threshold calibrated into model.pt.
"""

from __future__ import annotations

import torch

__all__ = ["anomaly_mask", "decision", "decision_threshold", "image_score", "image_scores", "max_slice"]


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


def anomaly_mask(anomaly_map: torch.Tensor, threshold: float) -> torch.Tensor:
    """uint8 mask of the map, 1 where the anomaly probability is at or above ``threshold``."""
    return (anomaly_map >= threshold).to(torch.uint8)


def decision(score: float, threshold: float) -> str:
    """Image-level verdict of a score: ``"abnormal"`` at or above ``threshold``, else ``"normal"``."""
    return "abnormal" if score >= threshold else "normal"


def decision_threshold(threshold: float | None, network=None) -> float:
    """The anomaly-probability threshold of masks and decisions, from the config's ``threshold``.

    Args:
        threshold: a probability in [0, 1]; ``None`` means "the threshold calibrated into model.pt".
        network: the trained network (where a calibrated threshold will be read from).

    Raises:
        ValueError: ``threshold`` is outside [0, 1], or ``None`` while the model carries no calibration.
    """
    if threshold is None:
        raise ValueError(
            "threshold null asks for the model's calibrated threshold, and this model.pt carries none; "
            "give one, e.g. --threshold 0.5"
        )
    threshold = float(threshold)
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold {threshold} is not an anomaly probability in [0, 1]")
    return threshold

"""The parts of evaluate.json that evaluate every anomaly branch side by side.

The top-level metrics are those of the network's ``anomaly_branch`` at the thresholds in use. A model with
a memory bank and calibration is also scored on every branch from the same backbone pass
(``SliceWiseInferer(branches=...)``, `branch_scoring`, ``handlers.metrics.branch_metrics``): metrics.json's
``branches`` holds, per branch, image AUROC and max F1, pixel AUROC and AUPRO, and at that branch's
calibrated thresholds the pooled pixel Dice and the image accuracy.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..decisions import scoring
from ..transforms.postprocessing import AnomalyScored, SplitBranchesd

__all__ = ["branch_scoring", "evaluation_branches"]


def evaluation_branches(network) -> tuple[str, ...] | None:
    """The branches evaluated side by side: every one the network can compute; None when it has fewer than
    two (an uncalibrated model, or a network without branches: then only its own map is evaluated)."""
    branches = getattr(getattr(network, "module", network), "available_branches", None)
    return None if branches is None or len(branches) < 2 else tuple(branches)


def branch_scoring(
    network, branches: Sequence[str] | None, key: str = "pred", source_image_key: str | None = None
) -> list:
    """Postprocessing of a multi-branch map: one key per branch (``SplitBranchesd``), each scored at its
    own calibrated thresholds and with the model's image-score rule (keys ``<branch>_mask``,
    ``<branch>_score``, ``<branch>_abnormal_decision``, ...), the score on the case's own grid when
    ``source_image_key`` names its image there (see ``AnomalyScored``). Nothing for ``branches`` None."""
    if not branches:
        return []
    model = getattr(network, "module", network)
    calibration = model.calibration or {}
    transforms: list = [SplitBranchesd(key, branches, model.anomaly_branch)]
    for branch in branches:
        pixel = calibration.get("pixel_threshold", {}).get(branch, 0.5)
        transforms.append(
            AnomalyScored(
                f"{key}_{branch}",
                threshold=pixel,
                image_threshold=calibration.get("image_threshold", {}).get(branch, pixel),
                score_rule=scoring.image_score_rule(model),
                source_image_key=source_image_key,
                prefix=f"{branch}_",
            )
        )
    return transforms

"""The parts of evaluate.json that evaluate every anomaly branch side by side.

The top-level metrics are those of the network's ``anomaly_branch`` at the thresholds in use. A model with
a memory bank and calibration is also scored on every branch from the same backbone pass
(``SliceWiseInferer(branches=...)``, `branch_scoring`, ``handlers.metrics.branch_metrics``): metrics.json's
``branches`` holds, per branch, image AUROC and max F1, pixel AUROC and AUPRO, and at that branch's
calibrated thresholds the pooled pixel Dice and the image accuracy.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..decisions import Decisions
from ..transforms.postprocessing import AnomalyScored, SplitBranchesd

__all__ = ["branch_scoring", "evaluation_branches"]


def evaluation_branches(network) -> tuple[str, ...] | None:
    """The branches evaluated side by side: every one a calibrated network can compute; None for an
    uncalibrated network or one without branches (then only its own map is evaluated)."""
    model = getattr(network, "module", network)
    branches = getattr(model, "available_branches", None)
    if not branches or len(branches) < 2 or not Decisions.of(model).calibrated:
        return None
    return tuple(branches)


def branch_scoring(
    network, branches: Sequence[str] | None, key: str = "pred", source_image_key: str | None = None
) -> list:
    """Postprocessing of a multi-branch map: one key per branch (``SplitBranchesd``), each scored by the
    model's own decisions on that branch (its fitted thresholds and image-score rule; keys ``<branch>_mask``,
    ``<branch>_score``, ``<branch>_abnormal_decision``, ...), the score on the case's own grid when
    ``source_image_key`` names its image there (see ``AnomalyScored``). Nothing for ``branches`` None."""
    if not branches:
        return []
    model = getattr(network, "module", network)
    decisions = Decisions.of(model)
    transforms: list = [SplitBranchesd(key, branches, model.anomaly_branch)]
    for branch in branches:
        transforms.append(
            AnomalyScored(
                f"{key}_{branch}",
                decisions.for_branch(branch),
                source_image_key=source_image_key,
                prefix=f"{branch}_",
            )
        )
    return transforms

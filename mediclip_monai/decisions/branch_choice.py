"""What the calibration set chooses for the maps: the fusion weight of the memory bank and the default branch.

The calibration set (`mediclip_monai.data.unseen_anomalies`) holds anomalies of kinds training never makes,
so, unlike training's validation, it does not favour the branch that fitted the training tasks. Both choices
maximise the pooled pixel AUROC over its slices (normal and anomalous), the measure of a map:

- the fusion weight (config ``memory_bank_weight`` null, the default): among `FUSION_WEIGHTS`, on the fused
  score before its logistic (monotone, so the same AUROC); a number given in the config is used as it is;
- the default branch: the best of ``mediclip``, ``memory_bank`` and ``fused`` (with the chosen weight), ties to
  the first in that order. Inference, evaluation and MONAI Label write it unless told another.

Pure functions: maps in, plain numbers out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from ..metrics import pixel_auroc
from .calibration import fused_score, fusion_parameters
from .decisions import BRANCHES

__all__ = ["FUSION_WEIGHTS", "choose_default_branch", "choose_memory_bank_weight"]

# Candidate weights of the memory bank in the fused map; 0 and 1 would be the single branches.
FUSION_WEIGHTS = (0.25, 0.5, 0.75)


def choose_memory_bank_weight(mediclip, memory_bank, images, masks, weights: Sequence[float] = FUSION_WEIGHTS):
    """The fusion weight of best pixel AUROC on the calibration slices, and the AUROC of every candidate.

    Args:
        mediclip, memory_bank: N x H x W maps of the calibration slices.
        images: the slices in [0, 1] (the normal ones give the normalisation).
        masks: N x H x W truth; a slice is normal when its mask is empty.

    Returns:
        ``(weight, {str(weight): pixel AUROC})``; ties go to the first candidate.
    """
    mediclip, memory_bank, images = (np.asarray(a, dtype=np.float32) for a in (mediclip, memory_bank, images))
    masks = np.asarray(masks) > 0.5
    normal = ~masks.reshape(len(masks), -1).any(axis=1)
    auroc = {}
    for weight in weights:
        fusion = fusion_parameters(mediclip[normal], memory_bank[normal], images[normal], weight)
        auroc[str(float(weight))] = pixel_auroc(masks, fused_score(mediclip, memory_bank, fusion))
    best = max(weights, key=lambda w: auroc[str(float(w))])
    return float(best), auroc


def choose_default_branch(maps: Mapping[str, np.ndarray], masks) -> tuple[str, dict[str, float]]:
    """The branch of best pixel AUROC on the calibration slices, and every branch's AUROC there.

    Args:
        maps: ``{branch: N x H x W map}`` of the branches of `BRANCHES` (fused: the calibrated one).
        masks: N x H x W truth.
    """
    auroc = {branch: pixel_auroc(masks, maps[branch]) for branch in BRANCHES if branch in maps}
    return max(auroc, key=auroc.get), auroc

"""Map transforms of the inference and evaluation recipes after the network.

- ``AnomalyScored``: one case's anomaly map -> mask at the threshold, image score, the slice holding it
  and image-level decision, as the model's decisions say (``mediclip_monai.decisions``).
- ``SplitBranchesd``: the maps of several anomaly branches (``SliceWiseInferer(branches=...)``, one
  channel each) into one key per branch, the network's own branch staying under the map key.
- ``AnomalyTruthd``: evaluation's truth of a case: the image label (``abnormal``, else whether the
  mask has an anomalous voxel) and the mask (all normal for a normal image given without one).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform
from monai.utils import convert_to_dst_type

from ..data.loading import axial_axis
from ..decisions import BranchDecisions
from ..decisions.image_level import SLICE_FOREGROUND_KEY, SLICE_SCORES_KEY
from ..errors import DataError
from .preprocessing import to_source_grid

__all__ = ["AnomalyScored", "AnomalyTruthd", "SplitBranchesd"]


class AnomalyScored(MapTransform):
    """Score one case's anomaly map and threshold it.

    Args:
        keys: the anomaly map, ``(1, H, W)`` or ``(1, H, W, D)`` values in [0, 1] (a MetaTensor: its affine
            gives a volume's axial axis).
        decisions: the run's decisions on this map's branch (``Decisions.for_branch``): the mask threshold,
            the image threshold and the image-score rule (an image-level rule reads the slices' image-level
            scores that ``SliceWiseInferer`` put in the map's metadata).
        image_key: the case's image scaled to [0, 1] on the map's grid (a calibrated rule's foreground).
        source_image_key: for a map on the model grid (evaluation, ``ModelGridd``): the case's image on its
            own grid. The score (and its slice) is then taken on the map brought back onto that grid
            (``to_source_grid``), as inference writes it, so that a case scores the same in evaluation as in
            inference; the mask stays on the map's grid.
        mask_key: where the uint8 mask goes (same shape and metadata as the map).
        prefix: put before every key written (``"fused_"``: ``fused_mask``, ``fused_score``, ...), so several
            maps of one case can be scored side by side.
        allow_missing_keys: skip a missing map.

    Adds ``score``, ``max_slice`` (for volumes the axial slice index holding the score, else None),
    ``threshold``, ``image_threshold``, ``abnormal_decision`` (1 or 0; not ``abnormal``, a datalist's truth)
    and ``decision`` (``"abnormal"`` or ``"normal"``).
    """

    def __init__(
        self,
        keys: KeysCollection,
        decisions: BranchDecisions,
        image_key: str = "image",
        source_image_key: str | None = None,
        mask_key: str = "mask",
        prefix: str = "",
        allow_missing_keys=False,
    ):
        super().__init__(keys, allow_missing_keys)
        if len(self.keys) != 1:
            raise ValueError(f"AnomalyScored scores one anomaly map, got keys {self.keys}")
        self.decisions = decisions
        self.image_key, self.source_image_key = image_key, source_image_key
        self.mask_key, self.prefix = mask_key, prefix

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            anomaly_map, image = d[key], d.get(self.image_key)
            scored = anomaly_map
            if self.source_image_key is not None:
                image = d[self.source_image_key]
                scored = to_source_grid(anomaly_map, image)
            axis = None
            if scored.ndim == 4:
                axis = axial_axis(scored.affine if isinstance(scored, MetaTensor) else torch.eye(4))
            meta = anomaly_map.meta if isinstance(anomaly_map, MetaTensor) else {}
            levels = None
            if SLICE_SCORES_KEY in meta:
                levels = tuple(torch.as_tensor(meta[k]).reshape(-1) for k in (SLICE_SCORES_KEY, SLICE_FOREGROUND_KEY))
            score, index = self.decisions.score(scored[0], None if image is None else image[0], axis, levels)
            verdict = self.decisions.verdict(score)
            d[self.prefix + self.mask_key] = self.decisions.mask(anomaly_map)
            d.update(
                {
                    self.prefix + "score": score,
                    self.prefix + "max_slice": index,
                    self.prefix + "threshold": self.decisions.threshold,
                    self.prefix + "image_threshold": self.decisions.image_threshold,
                    self.prefix + "abnormal_decision": int(verdict == "abnormal"),
                    self.prefix + "decision": verdict,
                }
            )
        return d


class SplitBranchesd(MapTransform):
    """One key per anomaly branch from a map with one channel per branch.

    Args:
        keys: the multi-branch map, ``(len(branches), H, W[, D])``.
        branches: the branch of each channel, in order.
        main_branch: the branch left under ``keys`` (one channel), the one the network writes.

    Adds ``<key>_<branch>`` (one channel, same metadata) for every branch.
    """

    def __init__(self, keys: KeysCollection, branches, main_branch: str):
        super().__init__(keys)
        self.branches = tuple(branches)
        if main_branch not in self.branches:
            raise ValueError(f"main branch {main_branch!r} is not among {self.branches}")
        self.main_branch = main_branch

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            maps = d[key]
            if maps.shape[0] != len(self.branches):
                raise ValueError(f"{key}: {maps.shape[0]} channels for the branches {self.branches}")
            for index, branch in enumerate(self.branches):
                d[f"{key}_{branch}"] = maps[index : index + 1]
            d[key] = d[f"{key}_{self.main_branch}"]
        return d


class AnomalyTruthd(MapTransform):
    """The truth of an evaluation case, beside its anomaly map.

    Args:
        keys: the mask key (``label``, binary, on the map's grid; absent when the datalist gives none).
        abnormal_key: the datalist's image label (0 normal, 1 abnormal; optional when a mask is given).
        map_key: the anomaly map, whose shape an all-normal mask takes.
        image_truth_key: where the image label goes (0 or 1).
        mask_given_key: where whether the case came with a mask goes (1 or 0).

    A normal image without a mask gets an all-normal mask (it counts in the pixel metrics; ``mask_given_key``
    still says 0); an abnormal image without a mask keeps none (it counts in the image metrics only).

    Raises:
        DataError: the case has neither ``abnormal`` nor a mask.
    """

    def __init__(
        self,
        keys: KeysCollection = "label",
        abnormal_key: str = "abnormal",
        map_key: str = "pred",
        image_truth_key: str = "image_truth",
        mask_given_key: str = "has_mask",
    ):
        super().__init__(keys, allow_missing_keys=True)
        self.abnormal_key, self.map_key, self.image_truth_key = abnormal_key, map_key, image_truth_key
        self.mask_given_key = mask_given_key

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.keys:
            mask = d.get(key)
            abnormal = d.get(self.abnormal_key)
            if abnormal is None:
                if mask is None:
                    raise DataError(f"{d.get('source', '?')}: test entry has neither 'abnormal' nor 'label'")
                abnormal = bool(torch.as_tensor(mask).any())
            abnormal = int(bool(torch.as_tensor(abnormal).reshape(-1)[0]))
            d[self.mask_given_key] = int(mask is not None)
            if mask is None and abnormal == 0:
                mask = convert_to_dst_type(torch.zeros_like(torch.as_tensor(d[self.map_key])), d[self.map_key])[0]
            d[key] = mask
            d[self.image_truth_key] = torch.tensor(abnormal)
        return d

"""Map transforms of the inference and evaluation recipes after the network.

- ``AnomalyScored``: one case's anomaly map -> mask at the threshold, image score, slice of the
  maximum and image-level decision, by the rules of ``mediclip_monai.scoring``.
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
from ..errors import DataError
from ..scoring import anomaly_mask, decision, image_score, max_slice

__all__ = ["AnomalyScored", "AnomalyTruthd"]


class AnomalyScored(MapTransform):
    """Score one case's anomaly map and threshold it.

    Args:
        keys: the anomaly map, ``(1, H, W)`` or ``(1, H, W, D)`` probabilities in [0, 1] (a MetaTensor: its
            affine gives a volume's axial axis).
        threshold: anomaly probability at and above which a voxel is in the mask and a case is abnormal
            (``scoring.decision_threshold`` turns the config's ``threshold`` into it).
        mask_key: where the uint8 mask goes (same shape and metadata as the map).
        allow_missing_keys: skip a missing map.

    Adds ``score`` (the map's maximum), ``max_slice`` (for volumes the axial slice index holding it,
    else None), ``threshold`` and ``decision`` (``"abnormal"`` or ``"normal"``).
    """

    def __init__(
        self, keys: KeysCollection = "pred", threshold: float = 0.5, mask_key: str = "mask", allow_missing_keys=False
    ):
        super().__init__(keys, allow_missing_keys)
        if len(self.keys) != 1:
            raise ValueError(f"AnomalyScored scores one anomaly map, got keys {self.keys}")
        self.threshold = float(threshold)
        self.mask_key = mask_key

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            anomaly_map = d[key]
            score = image_score(anomaly_map)
            d[self.mask_key] = anomaly_mask(anomaly_map, self.threshold)
            d["score"] = score
            d["max_slice"] = None
            if anomaly_map.ndim == 4:
                affine = anomaly_map.affine if isinstance(anomaly_map, MetaTensor) else torch.eye(4)
                d["max_slice"] = max_slice(anomaly_map[0], axial_axis(affine))
            d["threshold"] = self.threshold
            d["decision"] = decision(score, self.threshold)
        return d


class AnomalyTruthd(MapTransform):
    """The truth of an evaluation case, beside its anomaly map.

    Args:
        keys: the mask key (``label``, binary, on the map's grid; absent when the datalist gives none).
        abnormal_key: the datalist's image label (0 normal, 1 abnormal; optional when a mask is given).
        map_key: the anomaly map, whose shape an all-normal mask takes.
        image_truth_key: where the image label goes (0 or 1).

    A normal image without a mask gets an all-normal mask (it counts in the pixel metrics); an abnormal
    image without a mask keeps none (it counts in the image metrics only).

    Raises:
        DataError: the case has neither ``abnormal`` nor a mask.
    """

    def __init__(
        self,
        keys: KeysCollection = "label",
        abnormal_key: str = "abnormal",
        map_key: str = "pred",
        image_truth_key: str = "image_truth",
    ):
        super().__init__(keys, allow_missing_keys=True)
        self.abnormal_key, self.map_key, self.image_truth_key = abnormal_key, map_key, image_truth_key

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
            if mask is None and abnormal == 0:
                mask = convert_to_dst_type(torch.zeros_like(torch.as_tensor(d[self.map_key])), d[self.map_key])[0]
            d[key] = mask
            d[self.image_truth_key] = torch.tensor(abnormal)
        return d

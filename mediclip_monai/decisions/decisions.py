"""The decisions of a MediCLIP model: what its anomaly maps mean. One object, owned by the model and saved in
model.pt (as anomalib's PostProcessor), that everything asking for a threshold, an image score or a verdict
asks.

What it holds, fitted on held-out normals and their synthetic anomalies (``decisions.calibration``):

- per anomaly branch, the mask threshold (``threshold``: the anomaly probability at and above which a voxel
  is in the mask) and the image threshold (``image_threshold``: the image score at and above which a case is
  abnormal);
- the image-score rule of the maps (``decisions.scoring``: the mean of the top 1% of each slice's foreground
  pixels), which each branch's own figures use;
- the image-level rule (``decisions.image_level``: global signals and the default branch's map, combined by a
  rule fitted on anomalies of kinds training never makes), the score a run's verdict uses when the model
  carries it (a model calibrated before it existed keeps the map rule);
- the default branch and the fusion of the branches, chosen on those anomalies (``decisions.branch_choice``).

An uncalibrated model has none of these: its branch is ``mediclip``, its score the map's maximum, its mask
threshold must be given, and its image threshold is the mask threshold (with the maximum as score,
"abnormal" then means "the mask is not empty"). A run may override either threshold (``--threshold``,
``--image_threshold``): `Decisions.for_branch` gives the numbers a run uses, as `BranchDecisions`.

model.pt keeps the fitted values as the plain dict ``calibration`` of the network's extra state (floats and
strings only; the extra state is stored as JSON text in a tensor, `mediclip_monai.networks.extra_state`), in
the format of every model.pt made so far; an old file without one loads as uncalibrated.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace

import torch

from ..errors import ConfigValueError
from .image_level import aggregate_slices
from .scoring import anomaly_mask, case_score, decision

__all__ = [
    "BRANCHES",
    "CALIBRATE_COMMAND",
    "DEFAULT_BRANCH",
    "UNCALIBRATED_BRANCH",
    "BranchDecisions",
    "Decisions",
    "image_level_rule",
    "run_decisions",
]

BRANCHES = ("mediclip", "memory_bank", "fused")
# The branch a model calibrated without a choice writes unless told otherwise (see decisions.calibration).
DEFAULT_BRANCH = "fused"
# The branch of a model without calibration: the paper's map.
UNCALIBRATED_BRANCH = "mediclip"
# How to add what a branch or a threshold needs to an existing model.pt, for the errors that say it is missing.
CALIBRATE_COMMAND = (
    "python -m monai.bundle run calibrate "
    "--config_file bundle/configs/train.json [the training overrides]"
)
# Where model.pt's calibration keeps each branch's thresholds (the names of its format).
_STORED = {"threshold": "pixel_threshold", "image_threshold": "image_threshold"}


@dataclass(frozen=True)
class BranchDecisions:
    """The decisions a run makes on one branch's map: the numbers in use and the rules that apply them.

    Attributes:
        branch: the anomaly branch whose map they apply to.
        threshold: the mask threshold (anomaly probability in [0, 1]).
        image_threshold: the image threshold of the verdict.
        score_rule: the calibrated image-score rule (``top_fraction``, ``foreground_level``); None: the maximum.
        image_level: the image-level rule (``decisions.image_level``); when set, the score comes from the slices'
            image-level probabilities (``SliceWiseInferer`` computes them) rather than from the map.
    """

    branch: str
    threshold: float
    image_threshold: float
    score_rule: Mapping | None = None
    image_level: Mapping | None = None

    def with_threshold(self, threshold: float) -> BranchDecisions:
        """The same decisions with the mask cut at ``threshold`` (a run's ``sensitivity``, see ``map_scale``)."""
        return replace(self, threshold=float(threshold))

    def mask(self, anomaly_map: torch.Tensor) -> torch.Tensor:
        """uint8 mask: 1 where the map is at or above the threshold."""
        return anomaly_mask(anomaly_map, self.threshold)

    def score(
        self, anomaly_map, image=None, axis: int | None = None, slice_levels=None
    ) -> tuple[float, int | None]:
        """The case's image score by the model's rule, and for a volume the axial slice that holds it.

        Args:
            anomaly_map, image, axis: see ``scoring.case_score`` (``image``: the case scaled to [0, 1], for a
                calibrated rule's foreground).
            slice_levels: ``(probabilities, foreground shares)`` of the case's slices in axial order, what
                ``SliceWiseInferer`` computes for the image-level rule (needed when it is set).
        """
        if self.image_level is None:
            return case_score(anomaly_map, image if self.score_rule is not None else None, self.score_rule, axis)
        if slice_levels is None:
            raise ValueError("the image-level rule needs the slices' image-level scores (made by SliceWiseInferer)")
        score, index = aggregate_slices(*slice_levels, self.image_level)
        return score, (None if axis is None else index)

    def verdict(self, score: float) -> str:
        """``"abnormal"`` when the score reaches the image threshold, else ``"normal"``."""
        return decision(score, self.image_threshold)


class Decisions:
    """The decisions of a model: its fitted thresholds per branch, score rule, default branch and fusion.

    Args:
        calibration: what ``decisions.calibration.calibrate`` fitted (the dict model.pt keeps); None:
            uncalibrated.
    """

    def __init__(self, calibration: Mapping | None = None) -> None:
        self.calibration = None if calibration is None else dict(calibration)

    @classmethod
    def of(cls, network) -> Decisions:
        """The decisions of a network (of the module inside DistributedDataParallel); uncalibrated for a network
        that carries none."""
        return getattr(getattr(network, "module", network), "decisions", None) or cls()

    @property
    def calibrated(self) -> bool:
        return self.calibration is not None

    @property
    def default_branch(self) -> str:
        """The branch the model writes unless told another: ``fused`` once calibrated, else ``mediclip``."""
        return (self.calibration or {}).get("default_branch", UNCALIBRATED_BRANCH)

    @property
    def fusion(self) -> dict | None:
        """How the ``fused`` branch combines the others (``calibration.fused_map``); None while uncalibrated."""
        return None if self.calibration is None else self.calibration["fusion"]

    @property
    def image_level(self) -> dict | None:
        """The image-level rule (``image_level.fit_image_level``); None for a model calibrated before it."""
        rule = (self.calibration or {}).get("image_level")
        return None if rule is None else dict(rule)

    @property
    def score_rule(self) -> dict | None:
        """The image-score rule (``scoring.case_score``); None, the map's maximum, while uncalibrated."""
        return None if self.calibration is None else dict(self.calibration["image_score"])

    def map_span(self, branch: str | None) -> float:
        """The range (``max - min``) of ``branch``'s map over the calibration pixels, the span by which
        ``map_scale`` normalises it; 1 for a model without it (calibrated before it was stored, or uncalibrated)."""
        stored = (self.calibration or {}).get("map_range") or {}
        if branch not in stored:
            return 1.0
        return max(float(stored[branch]["max"]) - float(stored[branch]["min"]), 1e-6)

    def fitted_thresholds(self, branch: str) -> dict[str, float | None]:
        """``{"threshold", "image_threshold"}`` fitted for ``branch`` (None for what was not fitted)."""
        stored = self.calibration or {}
        return {name: stored.get(key, {}).get(branch) for name, key in _STORED.items()}

    def for_branch(
        self, branch: str, threshold=None, image_threshold=None, image_level: bool = False
    ) -> BranchDecisions:
        """The decisions a run makes on ``branch``'s map, with the run's overrides.

        Args:
            branch: the anomaly branch of the map.
            threshold: the config's ``threshold``: an anomaly probability in [0, 1] overriding the fitted one;
                None (or the text ``null``): the fitted one, which an uncalibrated model does not have.
            image_threshold: the config's ``image_threshold``: a score overriding the fitted one; None: the
                fitted one, or for an uncalibrated model the mask threshold.
            image_level: score by the image-level rule (and its threshold) when the model carries one, instead
                of by the map's rule (the verdict of a run; each branch's own figures use the map's).

        Raises:
            ConfigValueError: a threshold that is not a number (in [0, 1] for ``threshold``), or ``threshold``
                None for an uncalibrated model (naming how to give one or to calibrate).
        """
        given = _config_number(threshold, "threshold", "an anomaly probability between 0 and 1")
        if given is not None and not 0.0 <= given <= 1.0:
            raise ConfigValueError(
                f"--threshold {threshold!r}: must be an anomaly probability between 0 and 1, or null (the model's "
                "calibrated threshold)"
            )
        given_image = _config_number(image_threshold, "image_threshold", "an image score")
        fitted = self.fitted_thresholds(branch)
        mask_threshold = given if given is not None else self._fitted(fitted, "threshold")
        rule = self.image_level if image_level else None
        if given_image is None and rule is not None:
            given_image = rule["threshold"]
        if given_image is None:
            given_image = mask_threshold if not self.calibrated else self._fitted(fitted, "image_threshold")
        return BranchDecisions(branch, float(mask_threshold), float(given_image), self.score_rule, rule)

    def _fitted(self, fitted: Mapping, key: str) -> float:
        if fitted[key] is None:
            raise ConfigValueError(
                f"{key} null asks for the model's calibrated threshold, and this model.pt carries none; give one "
                f"(e.g. --{key} 0.5) or calibrate the model: {CALIBRATE_COMMAND}"
            )
        return fitted[key]


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


def image_level_rule(network) -> dict | None:
    """The image-level rule ``network`` can apply: its decisions' (``Decisions.image_level``), None when they
    have none or the network lacks the shots' global descriptors the rule compares with."""
    model = getattr(network, "module", network)
    shots = getattr(model, "shot_embeddings", None)
    return Decisions.of(model).image_level if shots is not None and shots.is_built else None


def run_decisions(network, threshold=None, image_threshold=None) -> BranchDecisions:
    """The decisions a run makes on the map ``network`` writes (its ``anomaly_branch``), with the run's overrides
    (``Decisions.for_branch``), scored by the image-level rule when the network can apply it; a network without
    decisions or branches is an uncalibrated ``mediclip`` model."""
    model = getattr(network, "module", network)
    branch = getattr(model, "anomaly_branch", UNCALIBRATED_BRANCH)
    image_level = image_level_rule(model) is not None
    return Decisions.of(model).for_branch(branch, threshold, image_threshold, image_level)

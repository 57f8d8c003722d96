"""The scale an anomaly map is written in, and the sensitivity that moves its mask threshold.

A branch's map values are probabilities (or, for ``memory_bank``, distances) whose useful range depends on the
model: its calibrated mask threshold may be 0.1 on one model and 0.5 on another, so no fixed colour window fits
every map. The ``normalised`` scale follows anomalib's convention (its min-max normalisation):

    normalised = clamp((value - threshold) / span + 0.5, 0, 1)

where ``threshold`` is the branch's mask threshold (calibrated into model.pt, or ``--threshold``) and ``span``
the range of the branch's map over the validation pixels (``max - min``, stored by calibration; 1, the range
of a probability, for a model calibrated before it was stored or not calibrated at all). So 0.5 is the
threshold on every model, a window of 0 to 1 centred on 0.5 means the same on all of them, and the map's 0.5
iso-line is the mask exactly (values at or above the threshold never fall below 0.5, values under it never
reach it, whatever the float rounding). ``probability`` writes the branch's own values.

``sensitivity`` (0 to 1, default 0.5) moves the mask threshold in the normalised scale: the mask is where the
normalised map reaches ``1 - sensitivity``. 0.5 is the calibrated mask; higher finds more, lower less, and the
mask grows monotonically with it. It moves the mask only: the normalisation, the image score and the decision
stay the model's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import ConfigValueError
from .decisions import Decisions

__all__ = ["DEFAULT_SENSITIVITY", "SCALES", "MapScale", "map_span"]

SCALES = ("probability", "normalised")
DEFAULT_SENSITIVITY = 0.5
_SPELLINGS = {"probability": "probability", "normalised": "normalised", "normalized": "normalised"}


def map_span(network) -> float:
    """The range of the network's branch over its validation pixels (`Decisions.map_span`); 1 without it."""
    module = getattr(network, "module", network)
    return Decisions.of(module).map_span(getattr(module, "anomaly_branch", None))


@dataclass(frozen=True)
class MapScale:
    """How an anomaly map is written and where its mask is cut.

    Attributes:
        name: ``"probability"`` (the branch's own values) or ``"normalised"`` (see the module docstring).
        threshold: the branch's mask threshold in its own values; the normalised scale's 0.5.
        span: the normalisation's range of values (``map_span``).
        sensitivity: where the mask is cut, 0 to 1; 0.5: at ``threshold``.
    """

    name: str = "probability"
    threshold: float = 0.5
    span: float = 1.0
    sensitivity: float = DEFAULT_SENSITIVITY

    @classmethod
    def for_network(cls, name: str, threshold: float, sensitivity=DEFAULT_SENSITIVITY, network=None) -> MapScale:
        """The scale of the config's ``map_scale`` and ``sensitivity`` for a network's branch.

        Args:
            name: ``probability`` or ``normalised`` (``normalized`` is read as the same).
            threshold: the mask threshold in the branch's values (``BranchDecisions.threshold``).
            sensitivity: a number from 0 to 1.
            network: the trained network (its calibration's ``map_range`` gives the span).

        Raises:
            ConfigValueError: an unknown scale or a sensitivity outside [0, 1], named with its key.
        """
        scale = _SPELLINGS.get(str(name).strip().lower())
        if scale is None:
            raise ConfigValueError(f"--map_scale {name!r}: must be one of {', '.join(SCALES)}")
        try:
            value = float(sensitivity) if not isinstance(sensitivity, bool) else math.nan
        except (TypeError, ValueError):
            value = math.nan
        if not 0.0 <= value <= 1.0:
            raise ConfigValueError(
                f"--sensitivity {sensitivity!r}: must be a number from 0 to 1 (0.5: the calibrated mask; "
                "higher finds more, lower less)"
            )
        return cls(scale, float(threshold), map_span(network), value)

    @property
    def mask_threshold(self) -> float:
        """The mask threshold in the branch's own values: where the normalised map reaches ``1 - sensitivity``."""
        return self.threshold + (DEFAULT_SENSITIVITY - self.sensitivity) * self.span

    @property
    def mask_level(self) -> float:
        """The mask threshold in the values of the map as written."""
        return 1.0 - self.sensitivity if self.name == "normalised" else self.mask_threshold

    def normalise(self, values) -> np.ndarray:
        """The normalised map (float32, in [0, 1]) of values in the branch's own scale; its 0.5 iso-line is
        ``values >= threshold`` exactly."""
        values = np.asarray(values, dtype=np.float32)
        threshold = np.float32(self.threshold)
        normalised = np.clip((values - threshold) / np.float32(self.span) + np.float32(0.5), 0.0, 1.0)
        # rounding may put a value just under the threshold at 0.5, or one at it just under 0.5
        below_half = np.nextafter(np.float32(0.5), np.float32(0.0))
        above = values >= threshold
        return np.where(above, np.maximum(normalised, 0.5), np.minimum(normalised, below_half)).astype(np.float32)

    def written(self, values) -> np.ndarray:
        """The map in this scale (float32)."""
        return self.normalise(values) if self.name == "normalised" else np.asarray(values, dtype=np.float32)

    def describe(self) -> dict:
        """What a manifest records: the scale, the mask threshold in it, and the normalisation."""
        return {
            "map_scale": self.name,
            "map_mask_level": self.mask_level,
            "sensitivity": self.sensitivity,
            "normalisation": {"threshold": self.threshold, "span": self.span},
        }

    def label(self) -> str:
        """One line that says what the written map's values are (file headers, DICOM, viewers)."""
        if self.name == "normalised":
            return f"MediCLIP anomaly, normalised: 0.5 = threshold {self.threshold:.4g}"
        return "MediCLIP anomaly probability"

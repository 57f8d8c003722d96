"""The normalised map scale: 0.5 is the threshold exactly, values keep their order, sensitivity moves the mask
monotonically, and the span comes from the model's calibration."""

import numpy as np
import pytest
import torch

from mediclip_monai.decisions import BRANCHES, Decisions, calibration
from mediclip_monai.decisions.map_scale import MapScale, map_span
from mediclip_monai.decisions.scoring import anomaly_mask
from mediclip_monai.errors import ConfigValueError


def values_around(threshold: float, n: int = 2000) -> np.ndarray:
    """float32 map values over [0, 1], with the threshold and its float32 neighbours included."""
    t = np.float32(threshold)
    near = [t, np.nextafter(t, np.float32(0)), np.nextafter(t, np.float32(1)), np.float32(0), np.float32(1)]
    spread = np.random.default_rng(0).random(n).astype(np.float32)
    tiny = t - np.float32(1e-9) * np.arange(1, 50, dtype=np.float32)  # a hair under: 0.5 + x rounds to 0.5
    return np.concatenate([spread, np.asarray(near, np.float32), tiny.astype(np.float32)])


@pytest.mark.parametrize("threshold", [0.1, 0.431, 0.5, 0.87])
@pytest.mark.parametrize("span", [1.0, 0.37])
def test_the_half_iso_line_is_the_mask_at_the_threshold_exactly(threshold, span):
    values = values_around(threshold)
    scale = MapScale("normalised", threshold, span)
    normalised = scale.normalise(values)

    mask = anomaly_mask(torch.from_numpy(values), scale.mask_threshold).numpy().astype(bool)
    np.testing.assert_array_equal(normalised >= 0.5, mask)
    np.testing.assert_array_equal(normalised >= 0.5, values >= np.float32(threshold))
    assert normalised.dtype == np.float32 and normalised.min() >= 0.0 and normalised.max() <= 1.0
    order = np.argsort(values, kind="stable")
    assert np.all(np.diff(normalised[order]) >= 0)  # monotone: the map's ranking is kept


def test_normalisation_is_anomalibs_formula_clamped():
    scale = MapScale("normalised", threshold=0.2, span=0.8)
    values = np.array([0.0, 0.2, 0.4, 0.6, 0.9], np.float32)
    np.testing.assert_allclose(scale.normalise(values), [0.25, 0.5, 0.75, 1.0, 1.0], atol=1e-6)
    assert scale.written(values) is not values and np.allclose(scale.written(values), scale.normalise(values))
    np.testing.assert_array_equal(MapScale("probability", 0.2, 0.8).written(values), values)


def test_sensitivity_moves_the_mask_monotonically():
    values = values_around(0.3)
    masks = []
    for sensitivity in (0.0, 0.2, 0.5, 0.8, 1.0):
        scale = MapScale("normalised", threshold=0.3, span=0.6, sensitivity=sensitivity)
        assert scale.mask_level == pytest.approx(1 - sensitivity)
        masks.append(values >= scale.mask_threshold)
        # the mask is where the normalised map reaches the level (float rounding aside)
        inside = np.abs(scale.normalise(values) - scale.mask_level) > 1e-5
        np.testing.assert_array_equal((scale.normalise(values) >= scale.mask_level)[inside], masks[-1][inside])
    for smaller, larger in zip(masks, masks[1:]):
        assert np.all(larger[smaller]) and larger.sum() > smaller.sum()  # each contains the one before
    assert MapScale("normalised", 0.3, 0.6, 0.5).mask_threshold == np.float64(0.3)  # 0.5: the threshold itself


def test_config_values_are_checked_with_their_key():
    assert MapScale.for_network("normalized", 0.4).name == "normalised"
    assert MapScale.for_network("probability", 0.4, "0.7").sensitivity == 0.7
    with pytest.raises(ConfigValueError, match="--map_scale 'percent': must be one of probability, normalised"):
        MapScale.for_network("percent", 0.4)
    for bad in (1.5, -0.1, "abc", True, None):
        with pytest.raises(ConfigValueError, match="--sensitivity .*: must be a number from 0 to 1"):
            MapScale.for_network("normalised", 0.4, bad)


class _Network(torch.nn.Module):
    def __init__(self, calibration_values, branch):
        super().__init__()
        self.decisions, self.anomaly_branch = Decisions(calibration_values), branch


def test_the_span_is_the_range_of_the_branchs_validation_maps():
    rng = np.random.default_rng(1)
    images = rng.uniform(0.2, 1.0, (8, 16, 16)).astype(np.float32)
    masks = np.zeros((8, 16, 16), np.float32)
    masks[4:, 4:9, 4:9] = 1
    mediclip = np.clip(0.3 + 0.4 * masks + rng.normal(0, 0.05, masks.shape), 0, 1).astype(np.float32)
    bank = np.clip(0.2 + 0.3 * masks + rng.normal(0, 0.05, masks.shape), 0, 1).astype(np.float32)
    stored = calibration.calibrate(mediclip, bank, images, masks)

    assert stored["map_range"]["mediclip"] == {"min": float(mediclip.min()), "max": float(mediclip.max())}
    for branch in BRANCHES:
        expected = stored["map_range"][branch]["max"] - stored["map_range"][branch]["min"]
        assert map_span(_Network(stored, branch)) == pytest.approx(expected)
        scale = MapScale.for_network("normalised", stored["pixel_threshold"][branch], 0.5, _Network(stored, branch))
        assert scale.span == pytest.approx(expected)
    assert map_span(_Network(None, "mediclip")) == 1.0  # uncalibrated: the range of a probability
    older = {key: value for key, value in stored.items() if key != "map_range"}
    assert map_span(_Network(older, "fused")) == 1.0  # calibrated before the range was stored

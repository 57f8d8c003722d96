"""The decision rules: image score, slice of the maximum, mask, verdict, threshold."""

import pytest
import torch

from mediclip_monai.decisions.scoring import (
    anomaly_mask,
    case_score,
    decision,
    decision_threshold,
    image_decision_threshold,
    image_score,
    image_score_rule,
    image_scores,
    max_slice,
)
from mediclip_monai.errors import ConfigValueError


def test_image_score_is_the_maximum_of_the_map():
    maps = torch.zeros(3, 1, 4, 5)
    maps[0, 0, 1, 2], maps[1, 0, 3, 4], maps[2, 0, 0, 0] = 0.9, 0.25, 0.5
    assert image_scores(maps).tolist() == pytest.approx([0.9, 0.25, 0.5])
    assert image_score(maps[0]) == pytest.approx(0.9)


def test_max_slice_follows_the_given_axis():
    volume = torch.zeros(4, 5, 6)
    volume[1, 3, 4] = 0.8
    assert [max_slice(volume, axis) for axis in range(3)] == [1, 3, 4]


def test_mask_and_decision_use_the_threshold_inclusively():
    anomaly_map = torch.tensor([[0.2, 0.5], [0.49, 0.7]])
    assert anomaly_mask(anomaly_map, 0.5).tolist() == [[0, 1], [0, 1]]
    assert anomaly_mask(anomaly_map, 0.5).dtype == torch.uint8
    assert decision(0.5, 0.5) == "abnormal" and decision(0.49, 0.5) == "normal"


def test_decision_threshold_checks_the_config_value():
    assert decision_threshold(0.3) == 0.3 and decision_threshold("0.3") == 0.3
    with pytest.raises(ConfigValueError, match="calibrated threshold"):
        decision_threshold(None)
    with pytest.raises(ConfigValueError, match="--threshold 1.5: must be an anomaly probability between 0 and 1"):
        decision_threshold(1.5)
    # The command line passes what it cannot read as a number as text: named by its key, not a float() error.
    with pytest.raises(ConfigValueError, match="--threshold 'abc': must be an anomaly probability between 0 and 1"):
        decision_threshold("abc")
    with pytest.raises(ConfigValueError, match="--image_threshold 'abc': must be an image score, or null"):
        image_decision_threshold("abc")
    with pytest.raises(ConfigValueError, match="--image_threshold True: must be an image score"):
        image_decision_threshold(True)
    # "null" as typed after the README is the default, the calibrated threshold.
    with pytest.raises(ConfigValueError, match="calibrated threshold"):
        decision_threshold("null")


class Calibrated:
    """What the rules read of a network: its calibration and its branch."""

    anomaly_branch = "fused"
    calibration = {
        "pixel_threshold": {"mediclip": 0.6, "memory_bank": 0.2, "fused": 0.3},
        "image_threshold": {"mediclip": 0.7, "memory_bank": 0.25, "fused": 0.4},
        "image_score": {"rule": "top fraction of foreground", "top_fraction": 0.25, "foreground_level": 0.1},
    }


def test_null_thresholds_are_the_calibrated_ones_of_the_branch_and_numbers_override():
    network = Calibrated()
    assert decision_threshold(None, network) == 0.3
    assert image_decision_threshold(None, network, 0.3) == 0.4
    assert decision_threshold(0.5, network) == 0.5 and image_decision_threshold(0.9, network, 0.5) == 0.9
    network.anomaly_branch = "mediclip"
    assert decision_threshold(None, network) == 0.6 and image_decision_threshold(None, network, 0.6) == 0.7
    assert image_score_rule(network)["top_fraction"] == 0.25
    # an uncalibrated network: no rule (the maximum), and the image threshold is the mask's
    assert image_score_rule(object()) is None and image_decision_threshold(None, object(), 0.45) == 0.45
    with pytest.raises(ValueError, match="monai.bundle run calibrate"):
        decision_threshold(None, object())


def test_case_score_follows_the_rule_per_axial_slice():
    anomaly_map = torch.zeros(4, 4, 3)
    anomaly_map[:, :, 1] = 0.5
    anomaly_map[0, 0, 2] = 0.9  # one bright pixel: the maximum, but a quarter of slice 2 averages lower
    image = torch.ones(4, 4, 3)
    assert case_score(anomaly_map, axis=2) == (pytest.approx(0.9), 2)
    rule = Calibrated.calibration["image_score"]
    assert case_score(anomaly_map, image, rule, axis=2) == (pytest.approx(0.5), 1)  # top 4 of 16: all 0.5
    image[:, :, 1] = 0.0  # slice 1 without foreground: all its pixels count, still 0.5
    assert case_score(anomaly_map, image, rule, axis=2)[0] == pytest.approx(0.5)
    assert case_score(anomaly_map[:, :, 2], image[:, :, 2], rule) == (pytest.approx(0.9 / 4), None)
    background = image[:, :, 2].clone()
    background[0, 0] = 0.0  # the bright pixel on background: not counted
    assert case_score(anomaly_map[:, :, 2], background, rule) == (pytest.approx(0.0), None)

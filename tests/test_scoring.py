"""The decision rules: image score, slice of the maximum, mask, verdict, threshold."""

import pytest
import torch

from mediclip_monai.scoring import anomaly_mask, decision, decision_threshold, image_score, image_scores, max_slice


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
    assert decision_threshold(0.3) == 0.3
    with pytest.raises(ValueError, match="calibrated threshold"):
        decision_threshold(None)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        decision_threshold(1.5)

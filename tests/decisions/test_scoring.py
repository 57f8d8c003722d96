"""The rules: image score (maximum or the calibrated rule), slice of the score, mask, verdict."""

import numpy as np
import pytest
import torch

from mediclip_monai.decisions.scoring import (
    anomaly_mask,
    case_score,
    decision,
    foreground,
    image_score,
    maximum_scores,
)

RULE = {"rule": "top fraction of foreground", "top_fraction": 0.25, "foreground_level": 0.1}


def test_the_uncalibrated_image_score_is_the_maximum_of_the_map():
    maps = torch.zeros(3, 1, 4, 5)
    maps[0, 0, 1, 2], maps[1, 0, 3, 4], maps[2, 0, 0, 0] = 0.9, 0.25, 0.5
    assert maximum_scores(maps).tolist() == pytest.approx([0.9, 0.25, 0.5])


def test_the_slice_of_the_maximum_follows_the_given_axis():
    volume = torch.zeros(4, 5, 6)
    volume[1, 3, 4] = 0.8
    assert [case_score(volume, axis=axis)[1] for axis in range(3)] == [1, 3, 4]


def test_mask_and_decision_use_the_threshold_inclusively():
    anomaly_map = torch.tensor([[0.2, 0.5], [0.49, 0.7]])
    assert anomaly_mask(anomaly_map, 0.5).tolist() == [[0, 1], [0, 1]]
    assert anomaly_mask(anomaly_map, 0.5).dtype == torch.uint8
    assert decision(0.5, 0.5) == "abnormal" and decision(0.49, 0.5) == "normal"


def test_foreground_is_brighter_than_the_level():
    image = np.array([[0.0, 0.05], [0.2, 1.0]])
    assert foreground(image).tolist() == [[False, False], [True, True]]
    assert foreground(image, level=0.5).tolist() == [[False, False], [False, True]]


def test_image_score_is_the_mean_of_the_top_foreground_pixels():
    anomaly_map = np.arange(100, dtype=float).reshape(10, 10) / 100
    image = np.ones((10, 10))
    assert image_score(anomaly_map, image) == pytest.approx(0.99)  # 1% of 100 pixels: the maximum
    assert image_score(anomaly_map, image, top_fraction=0.05) == pytest.approx(0.97)  # mean of .95 .. .99
    image[9] = 0.0  # the bottom row (the highest scores) is background
    assert image_score(anomaly_map, image, top_fraction=0.05) == pytest.approx(0.87)  # 5 of 90: .85 .. .89
    # no foreground at all: every pixel counts
    assert image_score(anomaly_map, np.zeros((10, 10))) == pytest.approx(0.99)
    # torch input gives the same number
    assert image_score(torch.as_tensor(anomaly_map), torch.as_tensor(image), 0.05) == pytest.approx(0.87)


def test_image_score_of_a_volume_is_its_best_slice():
    maps = np.stack([np.full((4, 4), 0.2), np.full((4, 4), 0.7), np.full((4, 4), 0.4)])
    assert image_score(maps, np.ones_like(maps)) == pytest.approx(0.7)
    with pytest.raises(ValueError, match="share one"):
        image_score(maps, np.ones((4, 4)))


def test_case_score_follows_the_rule_per_axial_slice():
    anomaly_map = torch.zeros(4, 4, 3)
    anomaly_map[:, :, 1] = 0.5
    anomaly_map[0, 0, 2] = 0.9  # one bright pixel: the maximum, but a quarter of slice 2 averages lower
    image = torch.ones(4, 4, 3)
    assert case_score(anomaly_map, axis=2) == (pytest.approx(0.9), 2)
    assert case_score(anomaly_map, image, RULE, axis=2) == (pytest.approx(0.5), 1)  # top 4 of 16: all 0.5
    image[:, :, 1] = 0.0  # slice 1 without foreground: all its pixels count, still 0.5
    assert case_score(anomaly_map, image, RULE, axis=2)[0] == pytest.approx(0.5)
    assert case_score(anomaly_map[:, :, 2], image[:, :, 2], RULE) == (pytest.approx(0.9 / 4), None)
    background = image[:, :, 2].clone()
    background[0, 0] = 0.0  # the bright pixel on background: not counted
    assert case_score(anomaly_map[:, :, 2], background, RULE) == (pytest.approx(0.0), None)

"""Calibration (mediclip_monai.decisions.calibration) on small cases worked out by hand."""

import numpy as np
import pytest
import torch

from mediclip_monai.decisions import BRANCHES
from mediclip_monai.decisions import calibration as cal
from mediclip_monai.decisions.scoring import image_score


def test_normal_statistics_are_median_and_iqr_of_the_foreground():
    maps = np.array([[1.0, 2.0, 3.0, 4.0, 5.0, 100.0]])
    images = np.array([[1.0, 1.0, 1.0, 1.0, 1.0, 0.0]])  # the 100 lies on background
    assert cal.normal_statistics(maps, images) == {"center": 3.0, "scale": 2.0}
    assert cal.normal_statistics(np.ones((2, 3)), np.ones((2, 3)))["scale"] == 1e-6  # a flat map cannot divide by 0


def test_fused_score_and_map_follow_the_stored_parameters():
    normal_images = np.ones((1, 5))
    fusion = cal.fusion_parameters(
        np.array([[1.0, 2.0, 3.0, 4.0, 5.0]]), np.array([[0.0, 0.05, 0.1, 0.15, 0.2]]), normal_images, 0.5
    )
    assert fusion == {
        "mediclip": {"center": 3.0, "scale": 2.0, "weight": 0.5},
        "memory_bank": {"center": 0.1, "scale": pytest.approx(0.1), "weight": 0.5},
    }
    mediclip, bank = np.array([3.0, 7.0]), np.array([0.1, 0.3])
    z = cal.fused_score(mediclip, bank, fusion)
    np.testing.assert_allclose(z, [0.0, 0.5 * 2.0 + 0.5 * 2.0])
    fusion.update(slope=2.0, offset=-1.0)
    np.testing.assert_allclose(cal.fused_map(mediclip, bank, fusion), 1 / (1 + np.exp(-(2.0 * z - 1.0))))
    as_torch = cal.fused_map(torch.tensor(mediclip), torch.tensor(bank), fusion)
    assert isinstance(as_torch, torch.Tensor)
    np.testing.assert_allclose(as_torch.numpy(), cal.fused_map(mediclip, bank, fusion))
    with pytest.raises(ValueError, match="memory_bank_weight"):
        cal.fusion_parameters(mediclip, bank, np.ones(2), 1.5)


def test_platt_scaling_recovers_a_known_logistic():
    rng = np.random.default_rng(0)
    scores = rng.uniform(-3.0, 3.0, 200_000)
    labels = rng.random(scores.size) < 1 / (1 + np.exp(-(2.0 * scores - 1.0)))
    fit = cal.platt_scaling(scores, labels)
    assert fit["slope"] == pytest.approx(2.0, abs=0.05) and fit["offset"] == pytest.approx(-1.0, abs=0.05)
    with pytest.raises(ValueError, match="both normal and anomalous"):
        cal.platt_scaling(scores, np.zeros(scores.size))


def test_pixel_threshold_is_the_max_f1_cut():
    # cuts: >=0.9 F1 .67, >=0.4 F1 .5, >=0.3 F1 .8 (P 2/3, R 1), >=0.2 F1 .67, >=0.1 F1 .57
    scores = np.array([0.1, 0.2, 0.3, 0.4, 0.9])
    labels = np.array([0, 0, 1, 0, 1])
    assert cal.pixel_threshold(scores, labels) == pytest.approx(0.3)
    with pytest.raises(ValueError, match="anomalous"):
        cal.pixel_threshold(scores, np.zeros(5))


def test_image_threshold_is_midway_between_the_class_medians():
    assert cal.image_threshold([1.0, 2.0, 3.0, 5.0, 7.0], [0, 0, 0, 1, 1]) == pytest.approx(4.0)
    with pytest.raises(ValueError, match="both normal and abnormal"):
        cal.image_threshold([1.0, 2.0], [1, 1])


def _plain(value) -> bool:
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    return isinstance(value, (float, int, str)) and not isinstance(value, bool)


def test_calibrate_gives_plain_values_that_separate_the_validation_anomalies(tmp_path):
    rng = np.random.default_rng(1)
    n, side = 8, 16
    images = np.ones((n, side, side))
    masks = np.zeros((n, side, side))
    masks[1::2, 4:8, 4:8] = 1.0  # every second slice holds an anomaly
    mediclip = 0.3 + 0.05 * rng.random(masks.shape) + 0.4 * masks
    bank = 0.1 + 0.02 * rng.random(masks.shape) + 0.1 * masks
    result = cal.calibrate(mediclip, bank, images, masks)
    assert _plain(result)
    assert set(result["pixel_threshold"]) == set(result["image_threshold"]) == set(BRANCHES)
    assert result["validation"] == {"n_images": 8, "n_abnormal": 4}
    assert result["default_branch"] == "fused" and result["default_branch"] in BRANCHES
    fused = cal.fused_map(mediclip, bank, result["fusion"])
    assert fused.min() >= 0 and fused.max() <= 1
    # separable pixels: each branch's threshold cuts exactly the anomalies out (max F1 = 1)
    for name, branch in (("mediclip", mediclip), ("memory_bank", bank), ("fused", fused)):
        assert np.array_equal(branch >= result["pixel_threshold"][name], masks > 0), name
    # image decisions: the anomalous slices score above the threshold, the normal ones below
    scores = [image_score(m, i) for m, i in zip(fused, images)]
    assert [s >= result["image_threshold"]["fused"] for s in scores] == [False, True] * 4
    # the dict is what model.pt keeps: it loads with weights_only=True
    torch.save({"calibration": result}, tmp_path / "c.pt")
    assert torch.load(tmp_path / "c.pt", weights_only=True)["calibration"] == result


def test_calibrate_needs_normal_and_anomalous_slices():
    maps = np.random.default_rng(0).random((2, 4, 4))
    with pytest.raises(ValueError, match="normal and anomalous"):
        cal.calibrate(maps, maps, np.ones_like(maps), np.zeros_like(maps))

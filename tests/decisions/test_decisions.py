"""The model's decisions: fitted thresholds per branch, the score rule, the default branch, the uncalibrated
fallback and a run's overrides; where a network keeps them and model.pt stores them."""

import pytest
import torch

from mediclip_monai.decisions import BranchDecisions, Decisions, run_decisions
from mediclip_monai.errors import ConfigValueError

CALIBRATION = {
    "pixel_threshold": {"mediclip": 0.6, "memory_bank": 0.2, "fused": 0.3},
    "image_threshold": {"mediclip": 0.7, "memory_bank": 0.25, "fused": 0.4},
    "image_score": {"rule": "top fraction of foreground", "top_fraction": 0.25, "foreground_level": 0.1},
    "default_branch": "fused",
    "fusion": {"slope": 1.0, "offset": 0.0},
}


def test_overrides_from_the_command_line_are_checked():
    uncalibrated = Decisions()
    assert uncalibrated.for_branch("mediclip", 0.3).threshold == 0.3
    assert uncalibrated.for_branch("mediclip", "0.3").threshold == 0.3
    with pytest.raises(ConfigValueError, match="calibrated threshold"):
        uncalibrated.for_branch("mediclip", None)
    with pytest.raises(ConfigValueError, match="--threshold 1.5: must be an anomaly probability between 0 and 1"):
        uncalibrated.for_branch("mediclip", 1.5)
    # The command line passes what it cannot read as a number as text: named by its key, not a float() error.
    with pytest.raises(ConfigValueError, match="--threshold 'abc': must be an anomaly probability between 0 and 1"):
        uncalibrated.for_branch("mediclip", "abc")
    with pytest.raises(ConfigValueError, match="--image_threshold 'abc': must be an image score, or null"):
        uncalibrated.for_branch("mediclip", 0.5, "abc")
    with pytest.raises(ConfigValueError, match="--image_threshold True: must be an image score"):
        uncalibrated.for_branch("mediclip", 0.5, True)
    # "null" as typed after the README is the default, the calibrated threshold.
    with pytest.raises(ConfigValueError, match="calibrated threshold"):
        uncalibrated.for_branch("mediclip", "null")


def test_null_thresholds_are_the_fitted_ones_of_the_branch_and_numbers_override():
    decisions = Decisions(CALIBRATION)
    fused = decisions.for_branch("fused")
    assert (fused.threshold, fused.image_threshold) == (0.3, 0.4)
    assert fused.score_rule["top_fraction"] == 0.25
    overridden = decisions.for_branch("fused", 0.5, 0.9)
    assert (overridden.threshold, overridden.image_threshold) == (0.5, 0.9)
    mediclip = decisions.for_branch("mediclip")
    assert (mediclip.threshold, mediclip.image_threshold) == (0.6, 0.7)
    assert decisions.fitted_thresholds("memory_bank") == {"threshold": 0.2, "image_threshold": 0.25}
    assert decisions.default_branch == "fused" and decisions.calibrated


def test_an_uncalibrated_model_scores_the_maximum_and_its_image_threshold_is_the_mask_threshold():
    decisions = Decisions()
    assert decisions.default_branch == "mediclip" and not decisions.calibrated and decisions.fusion is None
    run = decisions.for_branch("mediclip", 0.45)
    assert run == BranchDecisions("mediclip", 0.45, 0.45, None)
    assert decisions.fitted_thresholds("mediclip") == {"threshold": None, "image_threshold": None}
    with pytest.raises(ValueError, match="monai.bundle run calibrate"):
        decisions.for_branch("mediclip")


def test_branch_decisions_apply_the_rules_with_their_numbers():
    anomaly_map = torch.zeros(4, 4)
    anomaly_map[0, 0] = 0.9
    image = torch.ones(4, 4)
    calibrated = Decisions(CALIBRATION).for_branch("fused")
    assert calibrated.score(anomaly_map, image) == (pytest.approx(0.9 / 4), None)  # top quarter of 16 pixels
    assert calibrated.mask(anomaly_map).sum() == 1 and calibrated.verdict(0.4) == "abnormal"
    assert calibrated.verdict(0.39) == "normal"
    uncalibrated = Decisions().for_branch("mediclip", 0.5)
    assert uncalibrated.score(anomaly_map, image) == (pytest.approx(0.9), None)  # the maximum, image unused


def test_a_network_keeps_its_decisions_and_one_without_any_is_uncalibrated():
    class Network(torch.nn.Module):
        anomaly_branch = "mediclip"

    network = Network()
    assert not Decisions.of(network).calibrated
    assert run_decisions(network, 0.2) == BranchDecisions("mediclip", 0.2, 0.2, None)
    network.decisions = Decisions(CALIBRATION)
    network.anomaly_branch = "memory_bank"
    wrapped = torch.nn.Module()
    wrapped.module = network  # as DistributedDataParallel holds it
    assert run_decisions(wrapped).threshold == 0.2 and Decisions.of(wrapped) is network.decisions

"""The image-level score: its rule fitted on calibration slices, the aggregation of a volume's slices, and the
run's decisions that score by it; the choice of fusion weight and default branch."""

import io

import numpy as np
import pytest
import torch

from mediclip_monai.decisions import Decisions, image_level_rule, run_decisions
from mediclip_monai.decisions.branch_choice import choose_default_branch, choose_memory_bank_weight
from mediclip_monai.decisions.image_level import SIGNALS, aggregate_slices, fit_image_level, slice_probabilities

from .test_decisions import CALIBRATION


def calibration_signals(n=40, seed=0):
    """``n`` normal 2D slices and one anomalous copy of each: ``map`` separates them, the others are noise."""
    rng = np.random.default_rng(seed)
    copies = np.repeat([0, 1], n)
    signals = {name: rng.normal(size=2 * n) for name in SIGNALS}
    signals["map"] = rng.normal(size=2 * n) + 3.0 * copies
    entries = np.concatenate([np.arange(n), np.arange(n)])
    return signals, copies, entries, np.ones(2 * n)


def test_a_signal_votes_by_how_well_it_separates_the_calibration_anomalies():
    signals, copies, entries, foreground = calibration_signals()
    rule = fit_image_level(signals, copies, entries, foreground, "fused")
    assert rule["map_branch"] == "fused" and rule["slice_fraction"] == 0.0  # 2D images: nothing to aggregate
    assert rule["weights"]["map"] > 0.7 and sum(rule["weights"].values()) == pytest.approx(1.0)
    assert rule["signal_auroc"]["map"] > 0.95 and rule["calibration_auroc"] > 0.95
    probabilities = slice_probabilities(signals, rule)
    assert ((probabilities > 0) & (probabilities < 1)).all()
    # the threshold sits between the medians of the normal and the anomalous cases
    assert np.median(probabilities[copies == 0]) < rule["threshold"] < np.median(probabilities[copies == 1])
    # a rule is plain numbers and strings (model.pt is read with weights_only=True)
    buffer = io.BytesIO()
    torch.save(rule, buffer)
    buffer.seek(0)
    assert torch.load(buffer, weights_only=True) == rule
    # no signal better than chance (each anomalous copy scores as its normal slice): the map alone
    noise = {name: np.tile(values[: copies.size // 2], 2) for name, values in signals.items()}
    assert fit_image_level(noise, copies, entries, foreground, "fused")["weights"]["map"] == 1.0
    with pytest.raises(ValueError, match="normal and anomalous"):
        fit_image_level(signals, np.zeros_like(copies), entries, foreground, "fused")


def test_a_volume_scores_the_top_share_of_its_slices_with_foreground():
    scores = [0.9, 0.1, 0.8, 0.2, 0.7]
    foreground = [0.0, 0.5, 0.5, 0.5, 0.5]  # the first slice is air: it does not vote
    assert aggregate_slices(scores, foreground, {"slice_fraction": 0.0}) == (0.8, 2)
    score, index = aggregate_slices(scores, foreground, {"slice_fraction": 0.5})
    assert score == pytest.approx(0.75) and index == 2
    assert aggregate_slices(scores, [0.0] * 5, {"slice_fraction": 0.0}) == (0.9, 0)  # none votes: all do
    assert aggregate_slices(scores, None, {"slice_fraction": 0.0}) == (0.9, 0)


def test_calibration_volumes_choose_the_slice_share():
    # 6 held-out volumes of 8 slices, each with one anomalous copy whose slices all score higher on "map"
    rng = np.random.default_rng(0)
    entries = np.repeat(np.arange(6), 16)
    copies = np.tile(np.repeat([0, 1], 8), 6)
    signals = {name: rng.normal(size=entries.size) for name in SIGNALS}
    signals["map"] = rng.normal(size=entries.size) + 2.0 * copies
    rule = fit_image_level(signals, copies, entries, np.ones(entries.size), "memory_bank", seed=3)
    assert set(rule["slice_fraction_auroc"]) == {"0.0", "0.05", "0.1", "0.25", "0.5"}
    best = max(rule["slice_fraction_auroc"].values())
    assert rule["slice_fraction_auroc"][str(rule["slice_fraction"])] == best


def test_a_run_scores_by_the_image_level_rule_when_the_model_carries_one():
    signals, copies, entries, foreground = calibration_signals()
    rule = fit_image_level(signals, copies, entries, foreground, "fused")
    decisions = Decisions({**CALIBRATION, "image_level": rule})
    run = decisions.for_branch("fused", image_level=True)
    assert run.image_level == rule and run.image_threshold == rule["threshold"]
    assert run.threshold == 0.3  # the mask stays the branch's
    levels = (torch.tensor([0.2, 0.9, 0.4]), torch.tensor([0.5, 0.5, 0.5]))
    anomaly_map = torch.zeros(8, 8, 3)
    assert run.score(anomaly_map, axis=2, slice_levels=levels) == (pytest.approx(0.9), 1)
    assert run.score(anomaly_map[..., 0], slice_levels=(levels[0][:1], levels[1][:1]))[1] is None
    with pytest.raises(ValueError, match="SliceWiseInferer"):
        run.score(anomaly_map, axis=2)
    # a number given for the image threshold overrides the rule's; each branch's own figures use the map rule
    assert decisions.for_branch("fused", image_threshold=0.55, image_level=True).image_threshold == 0.55
    assert decisions.for_branch("fused").image_level is None
    # a model calibrated before the rule existed keeps the map's score and threshold
    assert Decisions(CALIBRATION).for_branch("fused", image_level=True).image_threshold == 0.4


def test_the_run_applies_the_rule_only_with_the_shot_embeddings_built():
    class Model(torch.nn.Module):
        def __init__(self, built):
            super().__init__()
            self.decisions = Decisions({**CALIBRATION, "image_level": {"threshold": 0.6}})
            self.shot_embeddings = type("Shots", (), {"is_built": built})()
            self.anomaly_branch = "fused"

    assert image_level_rule(Model(True)) == {"threshold": 0.6}
    assert run_decisions(Model(True)).image_threshold == 0.6
    assert image_level_rule(Model(False)) is None and run_decisions(Model(False)).image_threshold == 0.4


def test_branch_and_fusion_weight_are_the_best_on_the_calibration_set():
    rng = np.random.default_rng(0)
    masks = np.zeros((8, 16, 16))
    masks[1::2, 4:9, 4:9] = 1
    images = np.full((8, 16, 16), 0.5)
    good = masks + 0.3 * rng.random(masks.shape)  # separates the anomalous pixels
    noise = rng.random(masks.shape)
    weight, auroc = choose_memory_bank_weight(noise, good, images, masks)
    assert set(auroc) == {"0.25", "0.5", "0.75"} and auroc["0.75"] > auroc["0.25"]
    assert weight == min(float(w) for w, value in auroc.items() if value == max(auroc.values()))  # ties: the first
    branch, auroc = choose_default_branch({"mediclip": noise, "memory_bank": good, "fused": noise}, masks)
    assert branch == "memory_bank" and auroc["memory_bank"] == 1.0

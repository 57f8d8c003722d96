"""What train.json does not compute twice: validation rounds skip the frozen image tower (bit-identical
metrics), training reuses the tokens of unchanged shots and validation's text-tower forward, without
changing what it learns."""

import torch
from monai.bundle import ConfigParser
from monai.utils import set_determinism

from mediclip_monai.handlers import NextStepTextFeatures
from mediclip_monai.networks import PromptLearner
from mediclip_monai.networks.extra_state import extra_state
from mediclip_monai.workflows.calibrate import bank_slice_indices

from .conftest import TRAIN, layers, run_workflow, small_training
from .test_training import assert_same_weights, trained_state


def validation_rounds(demo_dir, tmp_path, **overrides):
    """The metrics of two validation rounds of train.json's evaluator, the heads changed in between as a
    training epoch would; and the run's token cache."""
    parser = ConfigParser()
    parser.read_config(layers(TRAIN))
    parser.update(small_training(demo_dir, tmp_path, **overrides))
    set_determinism(0)
    evaluator = parser.get_parsed_content("validate::evaluator")
    network = parser.get_parsed_content("network_def")
    rounds = []
    for epoch in (1, 2):
        evaluator.run(global_epoch=epoch)
        rounds.append(dict(evaluator.state.metrics))
        with torch.no_grad():
            for i, parameter in enumerate(network.trainable_parameters()):
                parameter.add_(0.05 * torch.randn(parameter.shape, generator=torch.Generator().manual_seed(i)))
    return rounds, parser.get_parsed_content("token_cache"), len(parser.get_parsed_content("data").validation)


def test_validation_metrics_are_bit_identical_with_and_without_the_cache(demo_dir, tmp_path):
    cached, cache, n_validation = validation_rounds(demo_dir, tmp_path / "cached")
    uncached, no_cache, _ = validation_rounds(demo_dir, tmp_path / "uncached", feature_cache_gb=0)
    assert cached == uncached
    assert cached[0] != cached[1]  # the heads did change between the rounds
    # The second round took every validation image's tokens from the cache.
    assert len(cache) == n_validation and cache.hits == n_validation
    assert len(no_cache) == 0


def test_reusing_unchanged_shots_keeps_the_trained_weights_and_calibration(demo_dir, tmp_path, monkeypatch):
    runs = {}
    for name, gigabytes in (("reused", 2.0), ("recomputed", 0)):
        workflow = run_workflow(
            TRAIN, **small_training(demo_dir, tmp_path / name, epochs=3, feature_cache_gb=gigabytes)
        )
        runs[name] = (workflow.parser.get_parsed_content("token_cache"), str(tmp_path / name / "models"), workflow)
    cache = runs["reused"][0]
    assert any(key.startswith("train/") for key in cache.keys()), "no unchanged shot was reused"
    reused, recomputed = (trained_state(runs[name][1]) for name in ("reused", "recomputed"))
    for key in reused:
        if key != "_extra_state":
            torch.testing.assert_close(reused[key], recomputed[key], rtol=0, atol=1e-5, msg=key)
    # Calibration took what the cache holds from there: run again, only the bank's uncached shots pass the backbone.
    parser = runs["reused"][2].parser
    backbone, data = parser.get_parsed_content("network_def").backbone, parser.get_parsed_content("data")
    passed, patch_tokens = [], backbone.patch_tokens
    monkeypatch.setattr(backbone, "patch_tokens", lambda images: passed.append(len(images)) or patch_tokens(images))
    parser.get_parsed_content("calibration")()
    bank_keys = [data.train[i]["cache_key"] for i in bank_slice_indices(data.shot_slices)]
    assert sum(passed) == sum(key not in cache.keys() for key in bank_keys)
    calibrations = [
        extra_state(torch.load(f"{runs[name][1]}/model.pt", weights_only=True))["calibration"]
        for name in ("reused", "recomputed")
    ]
    for branch, threshold in calibrations[1]["pixel_threshold"].items():
        assert abs(calibrations[0]["pixel_threshold"][branch] - threshold) <= 1e-4 * max(1.0, abs(threshold)), branch


def test_validation_and_the_next_step_share_one_text_forward_with_identical_weights(demo_dir, tmp_path, monkeypatch):
    encodes = []
    encode = PromptLearner._encode

    def counted(self):
        encodes.append(torch.is_grad_enabled())
        return encode(self)

    monkeypatch.setattr(PromptLearner, "_encode", counted)
    counts, states = {}, {}
    for name in ("shared", "twice"):
        encodes.clear()
        with monkeypatch.context() as patch:
            if name == "twice":
                patch.setattr(NextStepTextFeatures, "__call__", lambda self, engine: None)
            run_workflow(TRAIN, **small_training(demo_dir, tmp_path / name, epochs=3))
        counts[name], states[name] = len(encodes), trained_state(str(tmp_path / name / "models"))
    # After epochs 1 and 2, one forward serves the validation round and the next step instead of two.
    assert counts["twice"] - counts["shared"] == 2
    assert_same_weights(states["shared"], states["twice"])

"""The network's anomaly branches: the paper's map unchanged, memory bank and fused maps, their state in model.pt."""

import pytest
import torch
import torch.nn.functional as F

from mediclip_monai.decisions import CALIBRATE_COMMAND, Decisions
from mediclip_monai.decisions import calibration as cal
from mediclip_monai.networks import (
    BranchUnavailableError,
    CheckpointError,
    MediCLIP,
    PatchMemoryBank,
    load_mediclip,
)
from mediclip_monai.networks.extra_state import extra_state


def paper_map(network, images):
    """MediCLIP's map as METHOD.md states it: per layer adapter -> L2 norm -> dot with the two text vectors,
    mean over layers, bilinear upsampling (align_corners=True), softmax without temperature."""
    tokens = network.backbone.patch_tokens(images)
    text = network.text_features()
    logits = 0
    for adapter, layer_tokens in zip(network.adapters, tokens):
        logits = logits + F.normalize(adapter(layer_tokens).permute(0, 2, 3, 1), dim=-1) @ text
    logits = (logits / len(tokens)).permute(0, 3, 1, 2)
    logits = F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=True)
    return logits.softmax(dim=1)


def calibrate_on_random_cases(network, seed=0):
    """A bank from random "shots" and a calibration from random "validation" images with square anomalies."""
    generator = torch.Generator().manual_seed(seed)
    shots = torch.randn(4, 3, 224, 224, generator=generator)
    with torch.no_grad():
        network.memory_bank = PatchMemoryBank(max_patches=500).build(network.patch_tokens(shots))
        images = torch.randn(6, 3, 224, 224, generator=generator)
        masks = torch.zeros(6, 224, 224)
        masks[1::2, 60:120, 80:140] = 1.0
        images[1::2, :, 60:120, 80:140] += 2.0
        maps = network.anomaly_maps_from_tokens(network.patch_tokens(images), (224, 224))
    network.decisions = Decisions(cal.calibrate(maps["mediclip"], maps["memory_bank"], images[:, 0].sigmoid(), masks))
    return network


@pytest.fixture(scope="module")
def uncalibrated():
    torch.manual_seed(0)
    network = MediCLIP("mediclip-tiny", "none").eval()
    with torch.no_grad():  # "trained" heads, so a wrong branch could not pass for the untrained map
        for p in network.trainable_parameters():
            p.add_(0.1 * torch.randn_like(p))
    return network


@pytest.fixture(scope="module")
def calibrated(uncalibrated):
    torch.manual_seed(0)
    network = MediCLIP("mediclip-tiny", "none").eval()
    network.load_state_dict(uncalibrated.state_dict())
    return calibrate_on_random_cases(network)


@pytest.fixture(scope="module")
def images():
    return torch.randn(3, 3, 224, 224, generator=torch.Generator().manual_seed(7))


def test_mediclip_branch_is_bit_identical_to_the_paper_map(uncalibrated, calibrated, images):
    with torch.no_grad():
        expected = paper_map(uncalibrated, images)
        assert uncalibrated.anomaly_branch == "mediclip"
        assert torch.equal(uncalibrated(images), expected)
        # a calibrated model asked for the paper's map gives exactly that map, bank and calibration unused
        calibrated.anomaly_branch = "mediclip"
        try:
            assert torch.equal(calibrated(images), expected)
        finally:
            calibrated.anomaly_branch = None
        maps = calibrated.anomaly_maps_from_tokens(calibrated.patch_tokens(images), (224, 224))
    assert torch.equal(maps["mediclip"], expected[:, 1])
    # the pass that also gives the global descriptors (the image-level score) leaves the paper's map as it is
    with torch.no_grad():
        tokens = calibrated.image_tokens(images)
        maps = calibrated.anomaly_maps_from_tokens(tokens.patch_tokens, (224, 224), ("mediclip",))
    assert all(torch.equal(a, b) for a, b in zip(tokens.patch_tokens, calibrated.patch_tokens(images)))
    assert torch.equal(maps["mediclip"], expected[:, 1])


def test_calibrated_model_defaults_to_the_stored_branch_and_a_choice_overrides_it(calibrated, images):
    assert calibrated.decisions.default_branch == "fused"
    assert calibrated.anomaly_branch == "fused" and calibrated.default_branch == "fused"
    assert calibrated.available_branches == ("mediclip", "memory_bank", "fused")
    with torch.no_grad():
        tokens = calibrated.patch_tokens(images)
        maps = calibrated.anomaly_maps_from_tokens(tokens, (224, 224))
        fused = calibrated(images)
        calibrated.anomaly_branch = "memory_bank"
        try:
            bank = calibrated(images)
        finally:
            calibrated.anomaly_branch = None
    assert set(maps) == {"mediclip", "memory_bank", "fused"}
    # channel 1 the branch's map, channel 0 its complement
    assert torch.equal(fused[:, 1], maps["fused"]) and torch.equal(fused[:, 0], 1.0 - maps["fused"])
    assert torch.equal(bank[:, 1], maps["memory_bank"]) and torch.equal(bank[:, 0], 1.0 - maps["memory_bank"])
    torch.testing.assert_close(maps["memory_bank"], calibrated.memory_bank.anomaly_map(tokens, (224, 224)))
    expected = cal.fused_map(maps["mediclip"], maps["memory_bank"], calibrated.decisions.fusion)
    torch.testing.assert_close(maps["fused"], expected, rtol=0, atol=0)
    assert 0.0 <= float(maps["fused"].min()) and float(maps["fused"].max()) <= 1.0
    # only the branches asked for are computed
    assert set(calibrated.anomaly_maps_from_tokens(tokens, (224, 224), ("memory_bank",))) == {"memory_bank"}


def test_a_branch_without_its_parts_is_refused_naming_the_command(uncalibrated, images):
    assert uncalibrated.available_branches == ("mediclip",)
    for branch, missing in (("memory_bank", "memory bank"), ("fused", "memory bank and calibration")):
        uncalibrated.anomaly_branch = branch
        try:
            with pytest.raises(BranchUnavailableError, match=f"needs a {missing}") as error:
                uncalibrated(images)
        finally:
            uncalibrated.anomaly_branch = None
        assert CALIBRATE_COMMAND in str(error.value)
        assert "--config_file bundle/configs/train.json" in CALIBRATE_COMMAND
    with pytest.raises(ValueError, match="one of mediclip, memory_bank, fused"):
        uncalibrated.anomaly_branch = "patchcore"


def test_traced_network_with_the_bank_inside_holds_for_other_batch_sizes(calibrated, images):
    calibrated.memory_bank.bank_chunk = 128  # several bank chunks: the traced loop runs over the bank
    try:
        with torch.no_grad():
            traced = torch.jit.trace(calibrated, images[:1], check_trace=False)
            torch.testing.assert_close(traced(images), calibrated(images), rtol=0, atol=1e-6)
    finally:
        calibrated.memory_bank.bank_chunk = 1024


def test_model_pt_with_bank_and_calibration_loads_with_weights_only(calibrated, images, tmp_path):
    path = tmp_path / "model.pt"
    torch.save(calibrated.state_dict(), path)
    state = torch.load(path, weights_only=True)
    assert {key.split(".")[0] for key in state} == {
        "adapters", "prompts", "memory_bank", "shot_embeddings", "_extra_state"
    }  # fmt: skip
    assert state["memory_bank.patches"].shape == (3, 500, 96)
    assert extra_state(state)["calibration"] == calibrated.decisions.calibration
    print(f"\ntiny model.pt with a {calibrated.memory_bank.size}-patch bank: {path.stat().st_size / 1e6:.2f} MB")
    loaded = load_mediclip(str(path))
    assert loaded.anomaly_branch == "fused" and loaded.memory_bank.size == 500
    with torch.no_grad():
        assert torch.equal(loaded(images), calibrated(images))
    assert load_mediclip(str(path), anomaly_branch="mediclip").anomaly_branch == "mediclip"


def test_model_pt_without_bank_loads_as_the_paper_model_and_refuses_other_branches(uncalibrated, images, tmp_path):
    state = uncalibrated.state_dict()
    assert state["memory_bank.patches"].numel() == 0 and extra_state(state)["calibration"] is None
    # a model.pt written before the bank existed: no bank entry, no calibration
    old = {key: value for key, value in state.items() if not key.startswith("memory_bank.")}
    old["_extra_state"] = {k: v for k, v in extra_state(state).items() if k != "calibration"} | {"format": 2}
    path = tmp_path / "model.pt"
    torch.save(old, path)
    loaded = load_mediclip(str(path))
    assert loaded.anomaly_branch == "mediclip" and not loaded.memory_bank.is_built
    with torch.no_grad():
        assert torch.equal(loaded(images), uncalibrated(images))
    with pytest.raises(CheckpointError, match="model.pt: anomaly_branch 'fused' needs a memory bank"):
        load_mediclip(str(path), anomaly_branch="fused")

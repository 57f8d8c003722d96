"""model.pt as the network's own state dict: what it holds, and the one-line reasons it is refused."""

import pytest
import torch
from monai.networks.utils import copy_model_state

from mediclip_monai.decisions import Decisions
from mediclip_monai.networks import CheckpointError, MediCLIP, load_mediclip
from mediclip_monai.networks.extra_state import extra_state


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    network = MediCLIP("mediclip-tiny", "none").eval()
    with torch.no_grad():  # "trained" weights, so a load that silently did nothing would show
        for p in network.trainable_parameters():
            p.add_(torch.randn_like(p))
    return network


@pytest.fixture(scope="module")
def model_pt(tiny, tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "model.pt"
    torch.save(tiny.state_dict(), path)
    return path


def test_state_dict_is_the_trained_parts_and_the_identity_never_the_backbone(tiny):
    state = tiny.state_dict()
    assert {key.split(".")[0] for key in state} == {
        "adapters", "prompts", "memory_bank", "shot_embeddings", "_extra_state"
    }  # fmt: skip
    # empty until built after training
    assert state["memory_bank.patches"].numel() == 0 and state["shot_embeddings.embeddings"].numel() == 0
    identity = extra_state(state)
    assert identity["clip_model"] == "mediclip-tiny" and identity["clip_pretrained"] == "none"
    assert len(identity["backbone_fingerprint"]) == 64
    # and a strict load of exactly that state is accepted
    other = MediCLIP("mediclip-tiny", "none")
    other.load_state_dict(state)
    torch.testing.assert_close(other.prompts.context, tiny.prompts.context, rtol=0, atol=0)


def test_load_mediclip_rebuilds_the_recorded_network_with_identical_maps(tiny, model_pt):
    loaded = load_mediclip(str(model_pt))
    images = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(loaded(images), tiny(images), rtol=0, atol=0)
    assert not loaded.training


def test_input_contract_comes_from_the_backbone(tiny):
    contract = tiny.input_contract
    assert contract.image_size == (224, 224)
    assert contract.mean == pytest.approx(tiny.backbone.clip.visual.preprocess_cfg["mean"])
    assert contract.std == pytest.approx(tiny.backbone.clip.visual.preprocess_cfg["std"])


def test_fingerprint_follows_the_weights(tiny):
    backbone = MediCLIP("mediclip-tiny", "none").backbone
    before = backbone.fingerprint
    assert before == tiny.backbone.fingerprint  # the same seeded random weights
    with torch.no_grad():
        next(backbone.clip.parameters()).add_(1e-3)
    assert backbone.fingerprint != before


@pytest.mark.parametrize(
    "content, reason",
    [
        (b"", "unreadable or truncated"),
        (b"not a checkpoint at all, just text", "not a PyTorch checkpoint"),
    ],
)
def test_garbage_model_pt_is_one_clear_line(tmp_path, content, reason):
    path = tmp_path / "model.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError) as error:
        load_mediclip(str(path))
    message = str(error.value)
    assert str(path) in message and reason in message and "\n" not in message
    assert "weights_only" not in message


def test_truncated_model_pt_is_refused_naming_the_file(model_pt, tmp_path):
    truncated = tmp_path / "model.pt"
    truncated.write_bytes(model_pt.read_bytes()[: model_pt.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="unreadable or truncated") as error:
        load_mediclip(str(truncated))
    assert str(truncated) in str(error.value) and "weights_only" not in str(error.value)


def test_pickled_objects_are_refused_without_advising_unsafe_loading(tmp_path):
    path = tmp_path / "model.pt"
    torch.save({"_extra_state": {"clip_model": "mediclip-tiny"}, "oops": object()}, path)
    with pytest.raises(CheckpointError, match="Python objects") as error:
        load_mediclip(str(path))
    assert "weights_only" not in str(error.value)


def test_missing_and_foreign_files(tmp_path):
    with pytest.raises(CheckpointError, match="train first"):
        load_mediclip(str(tmp_path / "absent.pt"))
    path = tmp_path / "other.pt"
    torch.save({"weight": torch.zeros(3)}, path)
    with pytest.raises(CheckpointError, match="not a MediCLIP model"):
        load_mediclip(str(path))


def test_changed_tensor_shapes_are_summarised_not_listed(tiny, tmp_path):
    state = tiny.state_dict()
    state["adapters.0.weight"] = torch.zeros(5, 5, 1, 1)
    path = tmp_path / "model.pt"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"adapters\.0\.weight \(5, 5, 1, 1\)") as error:
        load_mediclip(str(path))
    assert "size mismatch" not in str(error.value) and "\n" not in str(error.value)


def test_a_model_trained_from_a_weights_file_refuses_to_run_without_it(tmp_path):
    # Trained from a local CLIP file (clip_pretrained none + clip_checkpoint): rebuilt without that file the
    # backbone would be random, and its maps would come from the wrong network.
    torch.manual_seed(1)
    donor = MediCLIP("mediclip-tiny", "none")
    with torch.no_grad():
        for p in donor.backbone.clip.parameters():
            p.add_(0.01 * torch.randn_like(p))
    weights = tmp_path / "clip_weights.pt"
    torch.save(donor.backbone.clip.state_dict(), weights)
    trained = MediCLIP("mediclip-tiny", "none", clip_checkpoint=str(weights))
    model = tmp_path / "model.pt"
    torch.save(trained.state_dict(), model)
    assert extra_state(torch.load(model, weights_only=True))["clip_checkpoint"] == "clip_weights.pt"

    with pytest.raises(CheckpointError, match="clip_weights.pt") as error:
        load_mediclip(str(model))
    assert "--clip_checkpoint" in str(error.value)
    loaded = load_mediclip(str(model), clip_checkpoint=str(weights))  # with the file it loads
    assert loaded.identity["backbone_fingerprint"] == trained.identity["backbone_fingerprint"]


def test_ddp_is_told_to_leave_the_frozen_backbone_alone(tiny):
    ignored = set(tiny._ddp_params_and_buffers_to_ignore)
    assert {name for name, _ in tiny.named_parameters() if name.startswith("backbone.")} <= ignored
    assert not any(name.startswith(("adapters.", "prompts.")) for name in ignored)


def test_monai_copy_model_state_carries_the_identity_and_calibration(tmp_path):
    # MONAI's copy_model_state (monai.bundle.load) compares the shape of every entry: the extra state is a tensor.
    saved = MediCLIP("mediclip-tiny", "none")
    saved.decisions = Decisions({"default_branch": "mediclip", "pixel_threshold": {"mediclip": 0.25}})
    path = tmp_path / "model.pt"
    torch.save(saved.state_dict(), path)
    state = torch.load(path, weights_only=True)
    assert isinstance(state["_extra_state"], torch.Tensor)
    assert extra_state(state)["calibration"] == saved.decisions.calibration
    other = MediCLIP("mediclip-tiny", "none")
    other.decisions = Decisions({"default_branch": "mediclip", "pixel_threshold": {"mediclip": 0.75}})
    _, updated, _ = copy_model_state(dst=other, src=state)
    assert "_extra_state" in updated and "prompts.context" in updated
    assert other.decisions.calibration == saved.decisions.calibration

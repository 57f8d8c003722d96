"""A clip_checkpoint that cannot give the backbone its weights fails with one line naming the file and why."""

import json
from pathlib import Path

import open_clip
import pytest
import torch

from mediclip_monai.errors import ConfigValueError, MediclipError
from mediclip_monai.networks.clip_backbone import create_clip_model
from mediclip_monai.networks.weights import ClipCheckpointError

TINY_CONFIG = Path(__file__).resolve().parents[2] / "mediclip_monai" / "model_configs" / "mediclip-tiny.json"


class NotATensor:
    pass


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Weights files as users get them wrong, plus a good one."""
    root = tmp_path_factory.mktemp("weights")
    good = create_clip_model("mediclip-tiny", "none").state_dict()
    torch.save(good, root / "good.pt")
    data = (root / "good.pt").read_bytes()
    (root / "truncated.pt").write_bytes(data[: len(data) // 2])
    (root / "garbage.pt").write_text("<html>404 Not Found</html>\n" * 20)
    (root / "empty.pt").write_bytes(b"")
    torch.save({"model": NotATensor()}, root / "pickled.pt")
    torch.save(
        {"adapters.0.weight": torch.zeros(2, 2), "_extra_state": {"clip_model": "mediclip-tiny"}}, root / "model.pt"
    )
    # weights of another architecture: a wider, shallower ViT registered as its own open_clip model
    config = json.loads(TINY_CONFIG.read_text())
    config["vision_cfg"].update(width=128, layers=4)
    (root / "configs").mkdir()
    (root / "configs" / "test-wide-vit.json").write_text(json.dumps(config))
    open_clip.add_model_config(root / "configs")
    torch.save(create_clip_model("test-wide-vit", "none").state_dict(), root / "wide.pt")
    return root


def refusal(path) -> str:
    with pytest.raises(ClipCheckpointError) as error:
        create_clip_model("mediclip-tiny", "none", str(path))
    message = str(error.value)
    assert "\n" not in message and str(path) in message
    assert "weights_only=False" not in message and "size mismatch" not in message
    return message


def test_a_good_file_loads_its_weights(files):
    model = create_clip_model("mediclip-tiny", "none", str(files / "good.pt"))
    saved = torch.load(files / "good.pt", weights_only=True)
    assert all(torch.equal(value, saved[key]) for key, value in model.state_dict().items())


@pytest.mark.parametrize(
    "name, reason",
    [
        ("truncated.pt", "truncated or damaged"),
        ("garbage.pt", "not a readable PyTorch or safetensors weights file"),
        ("empty.pt", "the file is empty"),
        ("pickled.pt", "pickled Python objects"),
        ("model.pt", "this is a MediCLIP model (model.pt"),
    ],
)
def test_unreadable_or_wrong_kind_of_file_is_named_with_the_reason_and_the_fix(files, name, reason):
    message = refusal(files / name)
    assert reason in message
    assert "download_clip_weights.py --clip_model mediclip-tiny" in message


def test_weights_of_another_architecture_say_which_model_they_fit(files):
    message = refusal(files / "wide.pt")
    assert "not weights of CLIP model 'mediclip-tiny'" in message
    assert "visual.class_embedding is 128 in the file and 96 in mediclip-tiny" in message
    assert "It fits --clip_model test-wide-vit" in message


def test_unknown_model_name_and_pretrained_tag_are_config_errors():
    with pytest.raises(ConfigValueError, match="clip_model 'ViT-Q-99' is not an open_clip model name"):
        create_clip_model("ViT-Q-99", "none")
    with pytest.raises(ConfigValueError, match="clip_pretrained 'opena1' is not a pretrained tag.*'openai'"):
        create_clip_model("ViT-B-16", "opena1")


def test_a_missing_file_is_a_user_error_too(tmp_path):
    with pytest.raises(MediclipError, match="is not a file"):
        create_clip_model("mediclip-tiny", "none", str(tmp_path / "nope.pt"))

import os
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from mediclip_monai.networks import MediCLIP, PromptLearner
from mediclip_monai.networks.clip_backbone import ClipBackbone, default_feature_layers


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return MediCLIP("mediclip-tiny", "none").eval()


def test_vit_l14_trainable_parameters_are_adapters_and_prompts_only():
    torch.manual_seed(0)
    model = MediCLIP("ViT-L-14", "none")
    assert model.backbone.feature_layers == [12, 18, 24]
    trainable = {n: p.numel() for n, p in model.named_parameters() if p.requires_grad}
    adapters = sum(v for n, v in trainable.items() if n.startswith("adapters."))
    prompts = sum(v for n, v in trainable.items() if n.startswith("prompts."))
    assert adapters == 3 * (1024 * 768 + 768) == 2_361_600
    assert prompts == (10 + 11) * 8 * 768 == 129_024
    assert sum(trainable.values()) == adapters + prompts

    model.train()
    probabilities = model(torch.randn(1, 3, 224, 224))
    (probabilities[:, 1].mean()).backward()
    assert all(p.grad is None for p in model.backbone.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.trainable_parameters())


def test_map_shape_and_range(tiny_model):
    images = torch.randn(3, 3, 224, 224)
    with torch.no_grad():
        probabilities = tiny_model(images)
    assert probabilities.shape == (3, 2, 224, 224)
    assert probabilities.min() >= 0 and probabilities.max() <= 1
    torch.testing.assert_close(probabilities.sum(dim=1), torch.ones(3, 224, 224))


def test_outputs_deterministic_under_seed():
    images = torch.randn(2, 3, 224, 224)
    outputs = []
    for _ in range(2):
        torch.manual_seed(123)
        with torch.no_grad():
            outputs.append(MediCLIP("mediclip-tiny", "none").eval()(images))
    torch.testing.assert_close(outputs[0], outputs[1], rtol=0, atol=0)
    torch.manual_seed(124)
    with torch.no_grad():
        other = MediCLIP("mediclip-tiny", "none").eval()(images)
    assert not torch.equal(other, outputs[0])


def test_weights_through_clip_checkpoint_give_identical_outputs(tmp_path, tiny_model):
    path = tmp_path / "clip.pt"
    # Perturb the random backbone so the file's weights differ from what "none" would build.
    with torch.no_grad():
        for p in tiny_model.backbone.clip.parameters():
            p.add_(0.01 * torch.randn_like(p))
    torch.save(tiny_model.backbone.clip.state_dict(), path)
    torch.manual_seed(0)
    loaded = MediCLIP("mediclip-tiny", "none", clip_checkpoint=str(path)).eval()
    loaded.load_state_dict(tiny_model.state_dict())
    images = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(loaded(images), tiny_model(images), rtol=0, atol=0)


def test_causal_mask_switch_changes_text_features():
    backbone = ClipBackbone("mediclip-tiny", "none")
    torch.manual_seed(0)
    bidirectional = PromptLearner(backbone, causal_text_mask=False)
    torch.manual_seed(0)
    causal = PromptLearner(backbone, causal_text_mask=True)
    torch.testing.assert_close(bidirectional.context, causal.context)
    with torch.no_grad():
        a, b = bidirectional.text_features(), causal.text_features()
    assert a.shape == (64, 2)
    torch.testing.assert_close(a.norm(dim=0), torch.ones(2))
    assert (a - b).abs().max() > 1e-3


def test_text_features_cached_until_contexts_change(tiny_model):
    prompts = tiny_model.prompts
    with torch.no_grad():
        first = prompts.text_features()
        assert prompts.text_features() is first
        prompts.context.add_(0.1)
        changed = prompts.text_features()
    assert changed is not first and not torch.equal(changed, first)


def test_checkpoint_refuses_other_backbone(tiny_model):
    state = tiny_model.state_dict()
    other = MediCLIP("mediclip-tiny", "none", feature_layers=[2, 4, 6])
    with pytest.raises(ValueError, match="feature_layers"):
        other.load_state_dict(state)


def test_feature_layers_follow_depth_proportions():
    assert default_feature_layers(24) == [12, 18, 24]
    assert default_feature_layers(12) == [6, 9, 12]
    assert default_feature_layers(6) == [3, 4, 6]


def test_missing_weights_offline_fail_fast_with_instructions(tmp_path):
    # The network is made unreachable for the child process: every HTTPS connection goes through a
    # proxy on a closed loopback port, and the caches are empty folders.
    env = dict(os.environ)
    env.update(
        HTTPS_PROXY="http://127.0.0.1:9",
        https_proxy="http://127.0.0.1:9",
        HTTP_PROXY="http://127.0.0.1:9",
        NO_PROXY="",
        no_proxy="",
        HOME=str(tmp_path),
        HF_HOME=str(tmp_path / "hf"),
        XDG_CACHE_HOME=str(tmp_path / "cache"),
    )
    code = textwrap.dedent(
        """
        from mediclip_monai.networks import MediCLIP, ClipWeightsUnavailableError
        try:
            MediCLIP("ViT-L-14", "openai")
        except ClipWeightsUnavailableError as error:
            print("ERROR:", error)
        """
    )
    start = time.monotonic()
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    elapsed = time.monotonic() - start
    assert "ERROR:" in result.stdout, result.stderr
    message = result.stdout
    assert "ViT-L-14" in message and "openai" in message
    assert "--clip_checkpoint" in message and "download_clip_weights.py" in message
    assert elapsed < 15, f"took {elapsed:.1f} s"

"""The shots' global descriptors: nearest-neighbour distances, the image-text signal, their place in model.pt."""

import pytest
import torch

from mediclip_monai.decisions import image_level_rule
from mediclip_monai.networks import MediCLIP, ShotEmbeddings, load_mediclip
from mediclip_monai.networks.mediclip import SHOT_EMBEDDINGS_KEYS


@pytest.fixture(scope="module")
def network():
    torch.manual_seed(0)
    return MediCLIP("mediclip-tiny", "none").eval()


@pytest.fixture(scope="module")
def shots():
    return torch.randn(3, 3, 224, 224, generator=torch.Generator().manual_seed(1))


def test_image_tokens_give_the_tapped_class_tokens_and_clips_own_embedding(network, shots):
    with torch.no_grad():
        tokens = network.image_tokens(shots)
        embedding = network.backbone.clip.encode_image(shots)
    width = network.backbone.vision_width
    assert len(tokens.class_tokens) == len(network.backbone.feature_layers)
    assert all(t.shape == (3, width) for t in tokens.class_tokens)
    torch.testing.assert_close(tokens.embedding, embedding, rtol=0, atol=1e-5)


def test_a_shot_lies_at_distance_zero_and_another_image_further(network, shots):
    with torch.no_grad():
        tokens = network.image_tokens(shots)
        embeddings = ShotEmbeddings().build(tokens.class_tokens[:], tokens.embedding)
        assert embeddings.is_built and embeddings.size == 3
        same = embeddings.distances(tokens.class_tokens, tokens.embedding)
        other = network.image_tokens(shots.flip(-1) * 0.5 + 1.0)
        farther = embeddings.distances(other.class_tokens, other.embedding)
    for name in ("embedding_knn", "class_token_knn"):
        torch.testing.assert_close(same[name], torch.zeros(3), rtol=0, atol=1e-5)
        assert (farther[name] > 1e-3).all(), name
    with pytest.raises(ValueError, match="class tokens of 3 blocks"):
        embeddings.distances(tokens.class_tokens[:1], tokens.embedding)
    with pytest.raises(RuntimeError, match="no shot embeddings"):
        ShotEmbeddings().distances(tokens.class_tokens, tokens.embedding)


def test_global_signals_score_the_image_against_the_shots_and_the_learned_prompts(network, shots):
    with torch.no_grad():
        tokens = network.image_tokens(shots)
        network.shot_embeddings.build(tokens.class_tokens, tokens.embedding)
        try:
            signals = network.global_signals(tokens)
        finally:
            network.shot_embeddings = ShotEmbeddings()
        text = network.text_features()
    assert set(signals) == {"embedding_knn", "class_token_knn", "image_text"}
    embedding = torch.nn.functional.normalize(tokens.embedding, dim=-1)
    torch.testing.assert_close(signals["image_text"], embedding @ text[:, 1] - embedding @ text[:, 0])


def test_model_pt_keeps_the_shot_embeddings_and_an_older_one_loads_without(network, shots, tmp_path):
    with torch.no_grad():
        tokens = network.image_tokens(shots)
    network.shot_embeddings.build(tokens.class_tokens, tokens.embedding)
    try:
        state = network.state_dict()
    finally:
        network.shot_embeddings = ShotEmbeddings()
    torch.save(state, tmp_path / "model.pt")
    loaded = load_mediclip(str(tmp_path / "model.pt"))
    assert loaded.shot_embeddings.size == 3
    torch.testing.assert_close(loaded.shot_embeddings.embeddings, state["shot_embeddings.embeddings"], rtol=0, atol=0)
    # a model.pt written before the shot embeddings existed: it loads, and has no image-level rule to apply
    for key in SHOT_EMBEDDINGS_KEYS:
        del state[key]
    torch.save(state, tmp_path / "old.pt")
    old = load_mediclip(str(tmp_path / "old.pt"))
    assert not old.shot_embeddings.is_built and image_level_rule(old) is None

"""MediCLIP on a backbone that is not open_clip's: the `Backbone` interface is the whole seam."""

import torch
from torch import nn

from mediclip_monai.networks import Backbone, ImageTokens, InputContract, MediCLIP

END_OF_TEXT = 49  # the largest id, where the text is read (as CLIP's end-of-text token)


class ConvBackbone(Backbone):
    """A small frozen tower of its own: convolutions for patch tokens (their means for the global descriptors),
    an embedding table for the text."""

    feature_layers = [1, 2]  # noqa: RUF012 (the interface's attribute)

    def __init__(self):
        super().__init__()
        self.vision_width, self.embed_dim, self.text_width = 8, 6, 5
        self.patchify = nn.Conv2d(3, 8, kernel_size=4, stride=4)
        self.deeper = nn.Conv2d(8, 8, kernel_size=1)
        self.embedding = nn.Embedding(END_OF_TEXT + 1, self.text_width)
        self.projection = nn.Linear(self.text_width, self.embed_dim)
        self.image_projection = nn.Linear(self.vision_width, self.embed_dim)
        self.requires_grad_(False)

    @property
    def input_contract(self) -> InputContract:
        return InputContract(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), image_size=(32, 32))

    @property
    def fingerprint(self) -> str:
        return "conv-backbone"

    def patch_tokens(self, images):
        with torch.no_grad():
            first = self.patchify(images)
            return [first, self.deeper(first)]

    def image_tokens(self, images):
        patches = self.patch_tokens(images)
        pooled = [layer.mean(dim=(2, 3)) for layer in patches]
        with torch.no_grad():
            return ImageTokens(patches, pooled, self.image_projection(pooled[-1]))

    def tokenize(self, texts):
        ids = torch.zeros(len(texts), 16, dtype=torch.long)
        for row, text in enumerate(texts):
            words = [1 + sum(map(ord, word)) % (END_OF_TEXT - 1) for word in text.split()][:14]
            ids[row, : len(words) + 1] = torch.tensor([*words, END_OF_TEXT])
        return ids

    def token_embeddings(self, tokens):
        return self.embedding(tokens)

    def encode_text(self, embeddings, tokens, causal=False):
        end = tokens.argmax(dim=-1)
        pooled = embeddings.cumsum(dim=1) if causal else embeddings.mean(dim=1, keepdim=True).expand_as(embeddings)
        return self.projection(pooled[torch.arange(len(tokens)), end])

    def text_parameters(self):
        return [*self.embedding.parameters(), *self.projection.parameters()]


def test_mediclip_trains_on_another_backbone():
    torch.manual_seed(0)
    backbone = ConvBackbone()
    network = MediCLIP("conv-backbone", "none", backbone=backbone)
    assert network.input_contract.image_size == (32, 32)
    images = torch.randn(2, 3, 32, 32)
    maps = network(images)
    assert maps.shape == (2, 2, 32, 32)
    torch.testing.assert_close(maps.sum(dim=1), torch.ones(2, 32, 32))
    maps[:, 1].mean().backward()
    assert network.prompts.context.grad.abs().sum() > 0
    assert all(adapter.weight.grad.abs().sum() > 0 for adapter in network.adapters)
    assert all(p.grad is None for p in backbone.parameters())
    assert not any(key.startswith("backbone.") for key in network.state_dict())
    assert network.identity["backbone_fingerprint"] == "conv-backbone"


def test_text_features_follow_the_backbones_text_weights():
    network = MediCLIP("conv-backbone", "none", backbone=ConvBackbone())
    with torch.no_grad():
        before = network.prompts.text_features().clone()
        network.backbone.projection.weight.mul_(2)
        after = network.prompts.text_features()
    assert not torch.allclose(before, after)


def test_image_level_signals_come_from_the_backbones_global_descriptors():
    torch.manual_seed(0)
    network = MediCLIP("conv-backbone", "none", backbone=ConvBackbone()).eval()
    shots, other = torch.randn(3, 3, 32, 32), torch.randn(2, 3, 32, 32) * 3
    with torch.no_grad():
        tokens = network.image_tokens(shots)
        for tapped, patches in zip(tokens.patch_tokens, network.patch_tokens(shots)):
            torch.testing.assert_close(tapped, patches, rtol=0, atol=0)
        network.shot_embeddings.build(tokens.class_tokens, tokens.embedding)
        same = network.global_signals(tokens)
        farther = network.global_signals(network.image_tokens(other))
    assert set(same) == {"embedding_knn", "class_token_knn", "image_text"}
    for name in ("embedding_knn", "class_token_knn"):
        torch.testing.assert_close(same[name], torch.zeros(3), rtol=0, atol=1e-5)
        assert (farther[name] > 1e-3).all(), name
    assert farther["image_text"].shape == (2,)

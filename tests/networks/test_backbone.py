"""MediCLIP on a backbone that is not open_clip's: the `Backbone` interface is the whole seam."""

import torch
from torch import nn

from mediclip_monai.networks import Backbone, InputContract, MediCLIP

END_OF_TEXT = 49  # the largest id, where the text is read (as CLIP's end-of-text token)


class ConvBackbone(Backbone):
    """A small frozen tower of its own: convolutions for patch tokens, an embedding table for the text."""

    feature_layers = [1, 2]  # noqa: RUF012 (the interface's attribute)

    def __init__(self):
        super().__init__()
        self.vision_width, self.embed_dim, self.text_width = 8, 6, 5
        self.patchify = nn.Conv2d(3, 8, kernel_size=4, stride=4)
        self.deeper = nn.Conv2d(8, 8, kernel_size=1)
        self.embedding = nn.Embedding(END_OF_TEXT + 1, self.text_width)
        self.projection = nn.Linear(self.text_width, self.embed_dim)
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

"""What MediCLIP needs from a frozen vision-language backbone, as one interface.

MediCLIP (MICCAI 2024, arXiv 2405.11315) asks five things of its backbone, and the image-level score (beyond the
paper) a sixth:

1. its input contract: the image size, the per-channel mean and std, the interpolation of resizing
   (`InputContract`);
2. patch tokens of the images, tapped at chosen blocks of the image tower (`Backbone.patch_tokens`, with
   ``feature_layers`` and ``vision_width`` their shape);
3. the width of the joint image-text space (``embed_dim``), the adapters' output;
4. the text tower, from token embeddings to the joint space: `Backbone.tokenize`, `Backbone.token_embeddings`
   (the prompt learner puts its learnable contexts among them) and `Backbone.encode_text`, with
   ``text_width`` and the frozen `Backbone.text_parameters` (whose versions tell when cached text features
   are stale);
5. which weights it runs (``fingerprint``), so a checkpoint can prove the backbone it was trained on;
6. for the image-level score, the same pass with the image's global descriptors (`Backbone.image_tokens`,
   `ImageTokens`): the class token of each tapped block and the image embedding in the joint space.

``clip_backbone.ClipBackbone`` implements it with open_clip's ViTs; another tower (timm, Hugging Face, e.g.
BiomedCLIP) is another implementation of the same members.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn

__all__ = ["Backbone", "ImageTokens", "InputContract"]


@dataclass(frozen=True)
class InputContract:
    """What the network expects as input: RGB images of ``image_size`` normalised with ``mean``/``std``.

    ``image_size`` is (height, width) in pixels; mean and std are per channel, for intensities in [0, 1];
    ``interpolation`` is how images are resized to ``image_size`` (``transforms.model_input``).
    """

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    image_size: tuple[int, int]
    interpolation: str = "bilinear"


class ImageTokens(NamedTuple):
    """What one pass of the image tower gives: the tapped patch tokens and the image's global descriptors.

    Attributes:
        patch_tokens: per tapped block, B x vision_width x h x w (as `Backbone.patch_tokens`).
        class_tokens: per tapped block, B x vision_width: the class token of the residual stream there.
        embedding: B x embed_dim: the image embedding in the joint image-text space (for CLIP: ln_post,
            class-token pooling, projection), not normalised.
    """

    patch_tokens: list[torch.Tensor]
    class_tokens: list[torch.Tensor]
    embedding: torch.Tensor


class Backbone(nn.Module):
    """A frozen vision-language backbone as MediCLIP uses it (see the module docstring).

    Attributes:
        feature_layers: the 1-indexed image-tower blocks whose patch tokens are tapped.
        vision_width: the channels of a tapped patch token.
        embed_dim: the width of the joint image-text space.
        text_width: the width of a text token embedding.
    """

    feature_layers: list[int]
    vision_width: int
    embed_dim: int
    text_width: int

    @property
    def input_contract(self) -> InputContract:
        raise NotImplementedError

    @property
    def fingerprint(self) -> str:
        """A digest of the weights: equal iff the weights are."""
        raise NotImplementedError

    def patch_tokens(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Patch tokens of the tapped blocks for ``images`` (B x 3 x S x S, see `input_contract`), each
        B x vision_width x h x w, computed without gradient."""
        raise NotImplementedError

    def image_tokens(self, images: torch.Tensor) -> ImageTokens:
        """The patch tokens of `patch_tokens` (the same values) with the tapped blocks' class tokens and the
        image embedding, from one pass without gradient."""
        raise NotImplementedError

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        """P x L token ids of ``texts``, padded to the text tower's context length."""
        raise NotImplementedError

    def token_embeddings(self, tokens: torch.Tensor) -> torch.Tensor:
        """P x L x text_width embeddings of token ids."""
        raise NotImplementedError

    def encode_text(self, embeddings: torch.Tensor, tokens: torch.Tensor, causal: bool = False) -> torch.Tensor:
        """P x embed_dim features of token embeddings (the prompt learner's, with its contexts in place) through
        the text tower, read at each text's end token; ``tokens`` are the ids they stand for. ``causal``: with
        the tower's causal attention mask (False: every position attends to every other)."""
        raise NotImplementedError

    def text_parameters(self) -> list[nn.Parameter]:
        """The frozen weights `encode_text` and `token_embeddings` use."""
        raise NotImplementedError

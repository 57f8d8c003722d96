"""The frozen open_clip backbone of MediCLIP: model loading and patch-token taps.

MediCLIP (MICCAI 2024, arXiv 2405.11315) reads patch tokens from the residual stream of a frozen CLIP
ViT at 1/2, 3/4 and all of its depth (blocks 12, 18, 24 of ViT-L-14) and encodes learnable prompts
with the frozen text tower. This module only builds and taps the CLIP model; the trainable parts live
in ``prompts.py`` and ``mediclip.py``.

Three ways to get weights, all through open_clip's public API (``weights.py`` decides which, probes the
network and explains a weights file that does not fit):
- a pretrained tag (``clip_pretrained="openai"``), downloaded or taken from the local cache;
- a local weights file (``clip_checkpoint``), which never touches the network;
- ``clip_pretrained="none"``: random weights, e.g. with the tiny ``mediclip-tiny`` config shipped here.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import NamedTuple

import open_clip
import torch
from torch import nn

from ..errors import ConfigValueError
from ..quiet_logs import quiet_open_clip
from .weights import (
    TINY_MODEL_NAME,
    ClipCheckpointError,
    ClipWeightsUnavailableError,
    download_command,
    explain_checkpoint_failure,
    resolve_weights,
)

__all__ = [
    "TINY_MODEL_NAME",
    "ClipBackbone",
    "ImageTokens",
    "ClipCheckpointError",
    "ClipWeightsUnavailableError",
    "create_clip_model",
    "default_feature_layers",
    "download_command",
]

logger = logging.getLogger(__name__)

_MODEL_CONFIG_DIR = Path(__file__).resolve().parent.parent / "model_configs"
RANDOM_BACKBONE_SEED = 0

# Registering at import makes "mediclip-tiny" a model name like any other for open_clip.
if TINY_MODEL_NAME not in open_clip.list_models():
    open_clip.add_model_config(_MODEL_CONFIG_DIR)


def create_clip_model(
    clip_model: str = "ViT-L-14", clip_pretrained: str | None = "openai", clip_checkpoint: str | None = None
) -> nn.Module:
    """Build the open_clip model, fp32, in eval mode with every parameter frozen.

    Args:
        clip_model: an open_clip model name (``ViT-L-14``, ``ViT-B-16``, ``mediclip-tiny``...).
        clip_pretrained: an open_clip pretrained tag (``openai``) or ``none`` for random weights.
        clip_checkpoint: a local weights file; when given, nothing is downloaded.
    """
    if not clip_model.startswith("hf-hub:") and clip_model not in open_clip.list_models():
        raise ConfigValueError(
            f"clip_model '{clip_model}' is not an open_clip model name (e.g. ViT-L-14, ViT-B-16, {TINY_MODEL_NAME})"
        )
    pretrained, quick_gelu = resolve_weights(clip_model, clip_pretrained, clip_checkpoint)
    # Random weights come from a fixed seed: a model trained on a random backbone (tests, benchmarks)
    # must find the very same backbone when inference rebuilds it from the checkpoint.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_BACKBONE_SEED)
        try:
            with quiet_open_clip():
                model = open_clip.create_model(clip_model, pretrained=pretrained, force_quick_gelu=quick_gelu)
        except Exception as error:
            if not clip_checkpoint:
                raise
            with quiet_open_clip():
                reference = open_clip.create_model(clip_model, pretrained=None, force_quick_gelu=quick_gelu)
            explained = explain_checkpoint_failure(clip_checkpoint, clip_model, clip_pretrained, reference.state_dict())
            if explained is None:
                raise
            raise explained from error
    model.eval()
    model.requires_grad_(False)
    return model


def default_feature_layers(depth: int) -> list[int]:
    """1-indexed blocks at 1/2, 3/4 and all of the depth (12, 18, 24 for a 24-block ViT)."""
    return [max(1, depth // 2), max(1, (3 * depth) // 4), depth]


def weights_fingerprint(module: nn.Module) -> str:
    """SHA-256 over every tensor of ``module``'s state dict (names and bytes): equal iff the weights are.

    About 2 s for ViT-L-14 on one CPU core; it lets a checkpoint prove which backbone it was trained on.
    """
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype};".encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


class ImageTokens(NamedTuple):
    """What one pass of the image tower gives: the tapped patch tokens and the image's global descriptors.

    Attributes:
        patch_tokens: per tapped block, B x vision_width x h x w (as `ClipBackbone.patch_tokens`).
        class_tokens: per tapped block, B x vision_width: the class token of the residual stream there.
        embedding: B x embed_dim: CLIP's image embedding (ln_post, class-token pooling, projection), not
            normalised; the space of the text embeddings.
    """

    patch_tokens: list[torch.Tensor]
    class_tokens: list[torch.Tensor]
    embedding: torch.Tensor


class ClipBackbone(nn.Module):
    """Frozen CLIP with taps on the residual stream of chosen ViT blocks.

    Args:
        clip_model, clip_pretrained, clip_checkpoint: see :func:`create_clip_model`.
        feature_layers: 1-indexed ViT blocks to tap; None taps 1/2, 3/4 and all of the depth.
    """

    def __init__(
        self,
        clip_model: str = "ViT-L-14",
        clip_pretrained: str | None = "openai",
        clip_checkpoint: str | None = None,
        feature_layers: list[int] | None = None,
    ) -> None:
        super().__init__()
        self.clip = create_clip_model(clip_model, clip_pretrained, clip_checkpoint)
        visual = self.clip.visual
        if not hasattr(visual, "forward_intermediates") or not hasattr(visual, "transformer"):
            raise ValueError(f"CLIP model '{clip_model}' has no ViT image tower; MediCLIP needs a ViT.")
        depth = len(visual.transformer.resblocks)
        layers = list(feature_layers) if feature_layers else default_feature_layers(depth)
        if any(not 1 <= layer <= depth for layer in layers):
            raise ValueError(f"feature_layers {layers} must lie in 1..{depth} for '{clip_model}'.")
        self.feature_layers = layers
        self.vision_width = visual.transformer.width
        self.embed_dim = visual.output_dim
        self.image_size = tuple(visual.image_size)
        self._fingerprint: tuple | None = None

    @property
    def fingerprint(self) -> str:
        """:func:`weights_fingerprint` of the CLIP weights, recomputed only after they changed in place."""
        key = tuple((t.data_ptr(), t._version) for t in self.clip.state_dict().values())
        if self._fingerprint is None or self._fingerprint[0] != key:
            self._fingerprint = (key, weights_fingerprint(self.clip))
        return self._fingerprint[1]

    def train(self, mode: bool = True) -> ClipBackbone:
        # CLIP stays in eval mode (no dropout) whatever the surrounding module does. Not recursing into its
        # hundreds of submodules matters: MONAI's engines switch the network's mode at every iteration.
        self.training = mode
        return self

    def patch_tokens(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Patch tokens of the tapped blocks, each B x vision_width x h x w (no ln_post, no proj, no CLS).

        Runs without autograd: the image tower is frozen and nothing upstream of it is trained.
        """
        with torch.no_grad():
            out = self.clip.visual.forward_intermediates(
                images,
                indices=[layer - 1 for layer in self.feature_layers],
                stop_early=True,
                intermediates_only=True,
                output_fmt="NCHW",
            )
        return out["image_intermediates"]

    def image_tokens(self, images: torch.Tensor) -> ImageTokens:
        """The patch tokens of :meth:`patch_tokens` (the same values, bit for bit), with the tapped blocks' class
        tokens and the image embedding, from one pass. The whole tower runs (the embedding needs its last
        block), which costs nothing more with the default taps, whose last is the last block."""
        with torch.no_grad():
            out = self.clip.visual.forward_intermediates(
                images,
                indices=[layer - 1 for layer in self.feature_layers],
                intermediates_only=False,
                output_fmt="NCHW",
                output_extra_tokens=True,
            )
        class_tokens = [prefix[:, 0] for prefix in out["image_intermediates_prefix"]]
        return ImageTokens(out["image_intermediates"], class_tokens, out["image_features"])

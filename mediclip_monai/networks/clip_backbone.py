"""The open_clip implementation of MediCLIP's backbone (``backbone.Backbone``): model loading, patch-token taps,
the text tower.

MediCLIP (MICCAI 2024, arXiv 2405.11315) reads patch tokens from the residual stream of a frozen CLIP
ViT at 1/2, 3/4 and all of its depth (blocks 12, 18, 24 of ViT-L-14) and encodes learnable prompts
with the frozen text tower. This module only builds, taps and runs the CLIP model; the trainable parts live
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
from collections.abc import Sequence
from pathlib import Path

import open_clip
import torch
import torch.nn.functional as F
from open_clip.transformer import ResidualAttentionBlock
from torch import nn

from ..errors import ConfigValueError
from ..quiet_logs import quiet_open_clip
from .backbone import Backbone, ImageTokens, InputContract
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
    "ClipCheckpointError",
    "ClipWeightsUnavailableError",
    "build_tokenizer",
    "create_clip_model",
    "default_feature_layers",
    "download_command",
]

logger = logging.getLogger(__name__)

_MODEL_CONFIG_DIR = Path(__file__).resolve().parent.parent / "model_configs"
RANDOM_BACKBONE_SEED = 0
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
# MediCLIP's reference resizes bilinearly (open_clip's own preprocessing of OpenAI weights is bicubic).
INTERPOLATION = "bilinear"

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


class ClipBackbone(Backbone):
    """Frozen open_clip CLIP with taps on the residual stream of chosen ViT blocks, and its text tower.

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
        self.text_width = self.text.token_embedding.weight.shape[1]
        self.tokenizer = build_tokenizer(clip_model)
        self._fingerprint: tuple | None = None

    @property
    def input_contract(self) -> InputContract:
        """Mean and std of open_clip's ``preprocess_cfg``, the ViT's input size, bilinear resizing."""
        cfg = getattr(self.clip.visual, "preprocess_cfg", {}) or {}
        return InputContract(
            mean=tuple(float(v) for v in cfg.get("mean", OPENAI_MEAN)),
            std=tuple(float(v) for v in cfg.get("std", OPENAI_STD)),
            image_size=tuple(int(v) for v in self.image_size),
            interpolation=INTERPOLATION,
        )

    @property
    def text(self) -> nn.Module:
        """The text tower: the module holding token_embedding, transformer, ln_final (CLIP itself or its ``text``)."""
        return _text_tower(self.clip)

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
        tokens and CLIP's image embedding (ln_post, class-token pooling, projection), from one pass. The whole
        tower runs (the embedding needs its last block), which costs nothing more with the default taps, whose
        last is the last block."""
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

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        return self.tokenizer(list(texts))

    def token_embeddings(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.text.token_embedding(tokens)

    def encode_text(self, embeddings: torch.Tensor, tokens: torch.Tensor, causal: bool = False) -> torch.Tensor:
        text = self.text
        x = embeddings + text.positional_embedding.to(embeddings.dtype)
        # Pool at the end-of-text token: it has the largest id in CLIP's vocabulary.
        eot = tokens.argmax(dim=-1)
        x = text.ln_final(_encode_end_of_text(text.transformer, x, eot, text.attn_mask, causal))
        projection = text.text_projection
        return projection(x) if isinstance(projection, nn.Module) else x @ projection

    def text_parameters(self) -> list[nn.Parameter]:
        text = self.text
        modules = (text.token_embedding, text.transformer, text.ln_final)
        params = [p for m in modules for p in m.parameters()] + [text.positional_embedding]
        projection = text.text_projection
        return params + (list(projection.parameters()) if isinstance(projection, nn.Module) else [projection])


def _text_tower(clip: nn.Module) -> nn.Module:
    """The module holding token_embedding, transformer, ln_final...: CLIP itself or its ``text`` tower."""
    return clip.text if hasattr(clip, "text") and hasattr(clip.text, "token_embedding") else clip


def _encode_end_of_text(
    transformer: nn.Module, x: torch.Tensor, eot: torch.Tensor, causal_mask: torch.Tensor | None, causal: bool
) -> torch.Tensor:
    """P x width output of ``transformer`` at the end-of-text rows ``eot`` of the P x L x width input ``x``.

    Equal to running the whole transformer and taking those rows, with exact savings. The last block's
    attention queries and MLP only matter at the end-of-text row (its keys and values still come from every
    position). With the causal mask, no position attends to a later one, so the sequence is cut after the
    last end-of-text token. The attention runs on the batch-first layout as one matrix product per
    projection (`_self_attention`), without the transposes of ``nn.MultiheadAttention``'s general path.
    Other transformers (not batch-first, other block types) run whole.
    """
    mask = causal_mask if causal else None
    if causal:
        length = int(eot.max()) + 1
        x = x[:, :length]
        mask = None if mask is None else mask[:length, :length]
    blocks = list(transformer.resblocks)
    plain = getattr(transformer, "batch_first", False) and all(_is_plain(block) for block in blocks)
    if getattr(transformer, "grad_checkpointing", False) or not plain:
        out = transformer(x, attn_mask=mask)
        return out[torch.arange(out.shape[0], device=out.device), eot]
    for block in blocks[:-1]:
        x = x + block.ls_1(_self_attention(block.attn, block.ln_1(x), mask))
        x = x + block.ls_2(block.mlp(block.ln_2(x)))
    last = blocks[-1]
    rows = torch.arange(x.shape[0], device=x.device)
    keys = last.ln_1(x)
    row_mask = None if mask is None else mask[eot][:, None, None, :]  # P x 1 (heads) x 1 (query) x L
    y = x[rows, eot].unsqueeze(1) + last.ls_1(_self_attention(last.attn, keys, row_mask, keys[rows, eot].unsqueeze(1)))
    y = y + last.ls_2(last.mlp(last.ln_2(y)))
    return y[:, 0]


def _is_plain(block: nn.Module) -> bool:
    """An open_clip self-attention block whose attention `_self_attention` can compute."""
    attention = getattr(block, "attn", None)
    return (
        isinstance(block, ResidualAttentionBlock)
        and not hasattr(block, "ln_1_kv")
        and isinstance(attention, nn.MultiheadAttention)
        and attention.in_proj_weight is not None
        and attention.dropout == 0.0
    )


def _self_attention(
    attention: nn.MultiheadAttention, x: torch.Tensor, mask: torch.Tensor | None, queries: torch.Tensor | None = None
) -> torch.Tensor:
    """``attention(q, x, x)`` for batch-first P x L x width ``x``; q = ``queries`` (P x Q x width) or ``x``."""
    batch, length, width = x.shape
    heads = attention.num_heads
    weight, bias = attention.in_proj_weight, attention.in_proj_bias
    if queries is None:
        q, k, v = F.linear(x, weight, bias).view(batch, length, 3, heads, width // heads).permute(2, 0, 3, 1, 4)
    else:
        k, v = F.linear(x, weight[width:], bias[width:]).view(batch, length, 2, heads, -1).permute(2, 0, 3, 1, 4)
        q = F.linear(queries, weight[:width], bias[:width]).view(batch, -1, heads, width // heads).transpose(1, 2)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=None if mask is None else mask.to(q.dtype))
    return attention.out_proj(out.transpose(1, 2).reshape(batch, -1, width))


def build_tokenizer(clip_model: str):
    """open_clip's tokenizer for the model (CLIP's BPE tokenizer ships inside open_clip: no download)."""
    with quiet_open_clip():
        return open_clip.get_tokenizer(clip_model)

"""The MediCLIP network: frozen CLIP + per-layer adapters + learnable state prompts -> anomaly map.

MediCLIP (MICCAI 2024, arXiv 2405.11315). Patch tokens tapped from three ViT blocks go through a 1x1
convolution each (ViT width -> text width), are L2-normalised per patch and compared with the normal and
abnormal prompt embeddings. The per-layer logits are averaged, upsampled bilinearly (align_corners=True)
to the input size and turned into probabilities by a softmax without temperature.

The module knows nothing about files, configs or engines. Only ``network.trainable`` (adapters and
prompt contexts) is trained and saved; its state dict also records which backbone it was trained on, so
inference rebuilds the same network from the checkpoint alone.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .clip_backbone import ClipBackbone
from .prompts import PromptLearner, build_tokenizer

CHECKPOINT_FORMAT = 1


class TrainableParts(nn.Module):
    """The adapters and prompt contexts, plus the backbone identity as plain extra state.

    Its state dict is what checkpoints hold: tensors and plain containers only (loads with
    ``weights_only=True``).
    """

    def __init__(self, adapters: nn.ModuleList, prompts: PromptLearner, backbone_identity: dict):
        super().__init__()
        self.adapters = adapters
        self.prompts = prompts
        self.backbone_identity = dict(backbone_identity)

    def get_extra_state(self) -> dict:
        return {"format": CHECKPOINT_FORMAT, **self.backbone_identity}

    def set_extra_state(self, state: dict) -> None:
        saved = {k: v for k, v in state.items() if k != "format"}
        # The weights file path may differ between machines; the architecture and taps may not.
        keys = ("clip_model", "feature_layers", "causal_text_mask")
        mismatch = {
            k: (saved.get(k), self.backbone_identity.get(k))
            for k in keys
            if saved.get(k) != self.backbone_identity.get(k)
        }
        if mismatch:
            details = ", ".join(f"{k}: checkpoint {a!r} vs network {b!r}" for k, (a, b) in mismatch.items())
            raise ValueError(f"Checkpoint was trained on another backbone ({details}).")


class MediCLIP(nn.Module):
    """MediCLIP anomaly segmentation network.

    Args:
        clip_model: open_clip model name (``ViT-L-14`` as the paper; ``mediclip-tiny`` for tests).
        clip_pretrained: open_clip pretrained tag (``openai``) or ``none`` for random weights.
        clip_checkpoint: local CLIP weights file; when given nothing is downloaded.
        feature_layers: 1-indexed ViT blocks to tap; None taps 1/2, 3/4 and all of the depth.
        causal_text_mask: use CLIP's causal mask in the text transformer (the reference does not).

    Input: B x 3 x S x S images normalised with CLIP's mean/std (S = the backbone's input size).
    Output: B x 2 x S x S softmax probabilities; channel 0 normal, channel 1 anomaly.
    """

    def __init__(
        self,
        clip_model: str = "ViT-L-14",
        clip_pretrained: str | None = "openai",
        clip_checkpoint: str | None = None,
        feature_layers: list[int] | None = None,
        causal_text_mask: bool = False,
    ) -> None:
        super().__init__()
        self.backbone = ClipBackbone(clip_model, clip_pretrained, clip_checkpoint, feature_layers)
        adapters = nn.ModuleList(
            nn.Conv2d(self.backbone.vision_width, self.backbone.embed_dim, kernel_size=1, bias=True)
            for _ in self.backbone.feature_layers
        )
        prompts = PromptLearner(self.backbone.clip, build_tokenizer(clip_model), causal_text_mask)
        identity = {
            "clip_model": clip_model,
            "clip_pretrained": clip_pretrained or "none",
            "feature_layers": list(self.backbone.feature_layers),
            "causal_text_mask": bool(causal_text_mask),
        }
        self.trainable = TrainableParts(adapters, prompts, identity)

    @property
    def image_size(self) -> tuple[int, int]:
        return self.backbone.image_size

    def text_features(self) -> torch.Tensor:
        """text_dim x 2 normalised class embeddings (normal, abnormal)."""
        return self.trainable.prompts.text_features()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        text = self.text_features()
        logits = 0
        tokens = self.backbone.patch_tokens(images)
        for adapter, layer_tokens in zip(self.trainable.adapters, tokens):
            patches = F.normalize(adapter(layer_tokens).permute(0, 2, 3, 1), dim=-1)
            logits = logits + patches @ text.to(patches.dtype)
        logits = (logits / len(tokens)).permute(0, 3, 1, 2)
        logits = F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=True)
        return logits.softmax(dim=1)

    @staticmethod
    def image_score(probabilities: torch.Tensor) -> torch.Tensor:
        """Image-level anomaly score: the maximum of the full-resolution anomaly channel, shape B."""
        return probabilities[:, 1].flatten(1).amax(dim=1)

"""The frozen open_clip backbone of MediCLIP: model loading and patch-token taps.

MediCLIP (MICCAI 2024, arXiv 2405.11315) reads patch tokens from the residual stream of a frozen CLIP
ViT at 1/2, 3/4 and all of its depth (blocks 12, 18, 24 of ViT-L-14) and encodes learnable prompts
with the frozen text tower. This module only builds and taps the CLIP model; the trainable parts live
in ``prompts.py`` and ``mediclip.py``.

Three ways to get weights, all through open_clip's public API:
- a pretrained tag (``clip_pretrained="openai"``), downloaded or taken from the local cache;
- a local weights file (``clip_checkpoint``), which never touches the network;
- ``clip_pretrained="none"``: random weights, e.g. with the tiny ``mediclip-tiny`` config shipped here.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import logging
import os
import socket
import urllib.parse
from pathlib import Path

import open_clip
import torch
from torch import nn

logger = logging.getLogger(__name__)

TINY_MODEL_NAME = "mediclip-tiny"
_MODEL_CONFIG_DIR = Path(__file__).resolve().parent.parent / "model_configs"
_NO_WEIGHTS = {"", "none", "null", "random"}
_HF_WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
NETWORK_PROBE_SECONDS = 5.0
RANDOM_BACKBONE_SEED = 0

# Registering at import makes "mediclip-tiny" a model name like any other for open_clip.
if TINY_MODEL_NAME not in open_clip.list_models():
    open_clip.add_model_config(_MODEL_CONFIG_DIR)


class ClipWeightsUnavailableError(RuntimeError):
    """The requested CLIP weights are neither cached locally nor downloadable from here."""


def download_command(clip_model: str, clip_pretrained: str) -> str:
    """The one command that saves the weights to a file on a machine with internet access."""
    return (
        f"python scripts/download_clip_weights.py --clip_model {clip_model} "
        f"--clip_pretrained {clip_pretrained} --output clip_weights.pt"
    )


def _proxy_or_host(url: str) -> tuple[str, int]:
    """The address a download would connect to first: the HTTPS proxy when one is set, else the host."""
    proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy")
    target = urllib.parse.urlparse(proxy if proxy else url)
    return target.hostname or "", target.port or (443 if target.scheme != "http" else 80)


def _reachable(url: str, timeout: float = NETWORK_PROBE_SECONDS) -> bool:
    """Whether a TCP connection to the download host opens within ``timeout`` seconds (DNS included)."""
    host, port = _proxy_or_host(url)
    if not host:
        return False

    def connect() -> None:
        socket.create_connection((host, port), timeout=timeout).close()

    # getaddrinfo ignores socket timeouts, so the whole probe runs under a thread deadline.
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    try:
        pool.submit(connect).result(timeout=timeout)
        return True
    except Exception:
        return False
    finally:
        pool.shutdown(wait=False)


def _cached_weight_file(pretrained_cfg: dict) -> str | None:
    """A file already downloaded for this tag (Hugging Face cache or open_clip's URL cache), if any."""
    hf_hub = pretrained_cfg.get("hf_hub", "")
    if hf_hub:
        from huggingface_hub import try_to_load_from_cache

        repo_id, filename = os.path.split(hf_hub)
        for name in ([filename] if filename else []) + list(_HF_WEIGHT_FILES):
            cached = try_to_load_from_cache(repo_id=repo_id, filename=name)
            if isinstance(cached, str) and os.path.isfile(cached):
                return cached
    url = pretrained_cfg.get("url", "")
    if url:
        cached = os.path.expanduser(os.path.join("~/.cache/clip", os.path.basename(url)))
        if os.path.isfile(cached):
            return cached
    return None


def _resolve_weights(clip_model: str, clip_pretrained: str | None, clip_checkpoint: str | None):
    """Decide where the weights come from: returns (pretrained argument for open_clip, force_quick_gelu).

    Raises ClipWeightsUnavailableError within seconds when a tag is neither cached nor downloadable.
    """
    tag = (clip_pretrained or "none").strip()
    pretrained_cfg = {} if tag.lower() in _NO_WEIGHTS else open_clip.get_pretrained_cfg(clip_model, tag)
    # OpenAI's weights were trained with QuickGELU; a local copy of them needs the same activation.
    quick_gelu = bool(pretrained_cfg.get("quick_gelu", False))
    if clip_checkpoint:
        if not os.path.isfile(clip_checkpoint):
            raise ClipWeightsUnavailableError(
                f"clip_checkpoint '{clip_checkpoint}' is not a file. Give the path of a CLIP weights file "
                f"for {clip_model}, made with: {download_command(clip_model, tag)}"
            )
        return clip_checkpoint, quick_gelu
    if tag.lower() in _NO_WEIGHTS:
        return None, False
    if not pretrained_cfg:
        known = open_clip.list_pretrained_tags_by_model(clip_model)
        raise ValueError(f"Unknown pretrained tag '{tag}' for CLIP model '{clip_model}'; known tags: {known}")
    cached = _cached_weight_file(pretrained_cfg)
    if cached:
        return cached, quick_gelu
    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
    source = "https://huggingface.co" if pretrained_cfg.get("hf_hub") else pretrained_cfg.get("url", "")
    if offline or not _reachable(source):
        raise ClipWeightsUnavailableError(
            f"CLIP weights for model '{clip_model}' with pretrained tag '{tag}' are not in the local cache "
            f"and {source} cannot be reached from this machine. Either give a local weights file with "
            f"`--clip_checkpoint /path/to/weights.pt` (made on a machine with internet access by: "
            f"{download_command(clip_model, tag)}), or run once where the model hub is reachable so the "
            f"weights land in the cache. For a smoke run without weights use "
            f"`--clip_model {TINY_MODEL_NAME} --clip_pretrained none`."
        )
    return tag, quick_gelu


def create_clip_model(
    clip_model: str = "ViT-L-14", clip_pretrained: str | None = "openai", clip_checkpoint: str | None = None
) -> nn.Module:
    """Build the open_clip model, fp32, in eval mode with every parameter frozen.

    Args:
        clip_model: an open_clip model name (``ViT-L-14``, ``ViT-B-16``, ``mediclip-tiny``...).
        clip_pretrained: an open_clip pretrained tag (``openai``) or ``none`` for random weights.
        clip_checkpoint: a local weights file; when given, nothing is downloaded.
    """
    pretrained, quick_gelu = _resolve_weights(clip_model, clip_pretrained, clip_checkpoint)
    # Random weights come from a fixed seed: a model trained on a random backbone (tests, benchmarks)
    # must find the very same backbone when inference rebuilds it from the checkpoint.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_BACKBONE_SEED)
        model = open_clip.create_model(clip_model, pretrained=pretrained, force_quick_gelu=quick_gelu)
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
        # CLIP stays in eval mode (no dropout) whatever the surrounding module does.
        super().train(mode)
        self.clip.eval()
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

"""Where the CLIP backbone's weights come from: a local file, the local cache, or the model hub.

This is the I/O half of building the backbone (``clip_backbone.py`` builds and taps the model): it
decides what open_clip is given as ``pretrained`` (`resolve_weights`), probes the network with a short
deadline instead of open_clip's minute of retries, and turns a ``clip_checkpoint`` that cannot be loaded
into one sentence naming the file (`explain_checkpoint_failure`): unreadable or truncated, a MediCLIP
model.pt instead of CLIP weights, or the weights of another architecture (with the model names that
would fit).
"""

from __future__ import annotations

import concurrent.futures
import math
import os
import re
import socket
import urllib.parse

import open_clip
from open_clip.factory import load_state_dict

from ..errors import ConfigValueError, MediclipError

__all__ = [
    "NETWORK_PROBE_SECONDS",
    "TINY_MODEL_NAME",
    "ClipCheckpointError",
    "ClipWeightsUnavailableError",
    "download_command",
    "explain_checkpoint_failure",
    "resolve_weights",
]

TINY_MODEL_NAME = "mediclip-tiny"
NETWORK_PROBE_SECONDS = 5.0
_NO_WEIGHTS = {"", "none", "null", "random"}
_HF_WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


class ClipWeightsUnavailableError(MediclipError, RuntimeError):
    """The requested CLIP weights are neither cached locally nor downloadable from here."""


class ClipCheckpointError(MediclipError, ValueError):
    """A ``clip_checkpoint`` file that cannot give the backbone its weights (unreadable, or another model's)."""


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


def resolve_weights(clip_model: str, clip_pretrained: str | None, clip_checkpoint: str | None):
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
        raise ConfigValueError(
            f"clip_pretrained '{tag}' is not a pretrained tag of CLIP model '{clip_model}'; known tags: {known} "
            f"(or 'none' for random weights)"
        )
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


# ------------------------------------------------------------------------------- unusable weight files


def explain_checkpoint_failure(
    path: str, clip_model: str, clip_pretrained: str | None, reference_state: dict
) -> ClipCheckpointError | None:
    """Why ``path`` could not be loaded as the weights of ``clip_model``, or None when it looks right.

    Called after open_clip failed to load the file, so the time it takes does not matter.

    Args:
        path: the ``clip_checkpoint`` file.
        clip_model: the open_clip model name the weights were meant for.
        clip_pretrained: the pretrained tag they were meant to be a copy of (for the download command).
        reference_state: the state dict of a ``clip_model`` built without weights (names and shapes).
    """
    tag = clip_pretrained if (clip_pretrained or "none").lower() not in _NO_WEIGHTS else "openai"
    make_one = f"make a weights file for {clip_model} with: {download_command(clip_model, tag)}"
    state, unreadable = _read_state(path)
    if unreadable:
        return ClipCheckpointError(f"clip_checkpoint {path}: {unreadable}; {make_one}")
    if "_extra_state" in state or any(key.startswith(("adapters.", "prompts.", "trainable.")) for key in state):
        return ClipCheckpointError(
            f"clip_checkpoint {path}: this is a MediCLIP model (model.pt: adapters and prompts), not CLIP weights. "
            f"A trained model.pt goes in --ckpt_dir; --clip_checkpoint takes the CLIP backbone's weights ({make_one})"
        )
    if not all(hasattr(value, "shape") for value in state.values()):
        return ClipCheckpointError(
            f"clip_checkpoint {path}: the file does not hold a state dict of tensors; {make_one}"
        )
    shared = [key for key in reference_state if key in state]
    other_shape = [key for key in shared if tuple(state[key].shape) != tuple(reference_state[key].shape)]
    missing = len(reference_state) - len(shared)
    if not other_shape and not missing:
        return None
    details = []
    if other_shape:
        key = other_shape[0]
        details.append(
            f"{len(other_shape)} tensors have other shapes, e.g. {key} is {_shape(state[key])} in the file and "
            f"{_shape(reference_state[key])} in {clip_model}"
        )
    if missing:
        details.append(f"{missing} of the {len(reference_state)} tensors of {clip_model} are not in the file")
    fits = _models_matching(state)
    fit = f"It fits --clip_model {' or '.join(fits)}. " if fits else ""
    return ClipCheckpointError(
        f"clip_checkpoint {path}: these are not weights of CLIP model '{clip_model}' ({'; '.join(details)}). "
        f"{fit}Give the --clip_model the file was saved for, or {make_one}"
    )


def _read_state(path: str) -> tuple[dict, str]:
    """(state dict, "") when ``path`` reads as a non-empty dict with weights_only=True, else ({}, why not)."""
    if os.path.getsize(path) == 0:
        return {}, "the file is empty"
    with open(path, "rb") as f:
        head = f.read(4)
    try:
        # open_clip's own reader: .safetensors or torch.load(weights_only=True), 'state_dict' and 'module.' unwrapped
        state = load_state_dict(path)
    except Exception as error:  # noqa: BLE001 - every reader failure gets one explanation
        if "unsupported global" in str(error).lower():  # torch's weights_only refusal of a pickled object
            return {}, (
                "the file holds pickled Python objects, not a plain state dict of tensors, and is not loaded for "
                "safety (nothing in it is executed)"
            )
        if head.startswith(b"PK"):  # a PyTorch zip archive that does not read to its end
            return {}, "the file is truncated or damaged (a PyTorch archive that does not read to its end)"
        return {}, f"not a readable PyTorch or safetensors weights file ({type(error).__name__})"
    if not isinstance(state, dict) or not state:
        return {}, "the file does not hold a state dict of tensors"
    return state, ""


def _shape(tensor) -> str:
    return " x ".join(map(str, tuple(tensor.shape))) or "a scalar"


def _models_matching(state: dict) -> list[str]:
    """open_clip model names whose ViT image tower and embedding size match a CLIP state dict."""
    try:
        width, _, patch, _ = state["visual.conv1.weight"].shape
        grid = math.isqrt(state["visual.positional_embedding"].shape[0] - 1)
        embed_dim = state["visual.proj"].shape[1]
    except (KeyError, ValueError, AttributeError, IndexError):
        return []
    blocks = {m.group(1) for key in state if (m := re.match(r"visual\.transformer\.resblocks\.(\d+)\.", key))}
    wanted = (int(width), len(blocks), int(patch), int(grid * patch), int(embed_dim))
    matches = []
    for name in open_clip.list_models():
        config = open_clip.get_model_config(name) or {}
        vision = config.get("vision_cfg", {})
        size = vision.get("image_size")
        have = (
            vision.get("width"),
            vision.get("layers"),
            vision.get("patch_size"),
            size if isinstance(size, int) else None,
            config.get("embed_dim"),
        )
        if have == wanted and not name.endswith("-quickgelu") and vision.get("timm_model_name") is None:
            matches.append(name)
    return matches[:3]

"""Reading model.pt: the trained MediCLIP network back from its file, or a one-line reason why not.

model.pt is ``MediCLIP.state_dict()``: tensors and plain containers only, read with ``weights_only=True``.
Its extra state (a dict once read) records the backbone (model name, pretrained tag or weights file name,
taps, weights fingerprint) and the calibration, beside the memory bank's tensor, so :func:`load_mediclip`
rebuilds the very network it was trained on; nothing else has to be repeated at inference.
"""

from __future__ import annotations

import logging
import os
import pickle
import zipfile

import torch

from ..errors import MediclipError
from .extra_state import EXTRA_STATE_KEY, extra_state
from .mediclip import CheckpointMismatchError, MediCLIP

__all__ = ["CheckpointError", "load_mediclip", "read_model_state", "require_model_file"]

logger = logging.getLogger(__name__)


class CheckpointError(MediclipError, ValueError):
    """model.pt is missing, unreadable, or not one this network can use; the message names the file."""


def require_model_file(ckpt_path: str) -> None:
    """Raise the "train first" `CheckpointError` when there is no model.pt at ``ckpt_path``."""
    if not os.path.isfile(ckpt_path):
        raise CheckpointError(f"{ckpt_path}: no trained model here; train first (see README) or set --ckpt_dir.")


def read_model_state(ckpt_path: str) -> dict:
    """The network state held by ``ckpt_path``: model.pt itself, or the 'model' entry of a resume checkpoint;
    its ``_extra_state`` decoded (a dict: identity and calibration).

    Raises:
        CheckpointError: no such file, a truncated or foreign file, or no MediCLIP identity inside.
    """
    require_model_file(ckpt_path)
    try:
        state = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if "Unsupported global" in str(error):
            raise CheckpointError(
                f"{ckpt_path}: holds Python objects besides tensors and plain containers; model.pt files written "
                "by this project never do, so it is refused (re-run training to get a clean model.pt)."
            ) from None
        reason = "its content does not unpickle as one"
        raise CheckpointError(f"{ckpt_path}: not a PyTorch checkpoint ({reason}).") from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as error:
        raise CheckpointError(
            f"{ckpt_path}: unreadable or truncated ({_first_line(error)}); copy the file again or re-run training."
        ) from None
    if isinstance(state, dict) and EXTRA_STATE_KEY not in state and isinstance(state.get("model"), dict):
        state = state["model"]  # a resume checkpoint: {"model", "optimizer", "trainer", ...}
    not_mediclip = CheckpointError(f"{ckpt_path}: not a MediCLIP model (no backbone identity inside).")
    if not isinstance(state, dict) or EXTRA_STATE_KEY not in state:
        raise not_mediclip
    try:
        return {**state, EXTRA_STATE_KEY: extra_state(state)}
    except ValueError:
        raise not_mediclip from None


def load_mediclip(
    ckpt_path: str,
    clip_checkpoint: str | None = None,
    device: str | torch.device = "cpu",
    anomaly_branch: str | None = None,
) -> MediCLIP:
    """Rebuild the network recorded in ``ckpt_path`` and load its trained state; eval mode, on ``device``. Logs
    what was loaded.

    Args:
        ckpt_path: model.pt written by training (or a resume checkpoint).
        clip_checkpoint: local CLIP weights file, when the recorded pretrained tag cannot be downloaded here or
            the model was trained from such a file.
        device: where the network goes.
        anomaly_branch: the map the network returns (``mediclip``, ``memory_bank``, ``fused``); None: the
            default branch of the model's decisions (``mediclip`` for an uncalibrated model).

    Raises:
        CheckpointError: see :func:`read_model_state`, the rebuilt backbone is not the one it was trained on,
            or the model lacks what ``anomaly_branch`` needs (memory bank, calibration).
    """
    state = read_model_state(ckpt_path)
    identity = state["_extra_state"]
    missing = [key for key in ("clip_model", "feature_layers", "causal_text_mask") if key not in identity]
    if missing:
        raise CheckpointError(f"{ckpt_path}: not a MediCLIP model (its identity lacks {', '.join(missing)}).")
    network = MediCLIP(
        clip_model=identity["clip_model"],
        clip_pretrained=identity.get("clip_pretrained", "none"),
        clip_checkpoint=clip_checkpoint or None,
        feature_layers=identity["feature_layers"],
        causal_text_mask=identity["causal_text_mask"],
    )
    load_state(network, state, ckpt_path)
    try:
        network.anomaly_branch = anomaly_branch
        network.require_branch(network.anomaly_branch)
    except ValueError as error:  # an unknown branch name, or BranchUnavailableError
        raise CheckpointError(f"{ckpt_path}: {error}") from None
    identity = network.identity
    weights = identity["clip_checkpoint"] or f"clip_pretrained {identity['clip_pretrained']}"
    calibrated = "calibrated" if network.decisions.calibrated else "not calibrated"
    logger.info(
        f"model {ckpt_path}: backbone {identity['clip_model']} ({weights}), {network.anomaly_branch} map, {calibrated}"
    )
    return network.to(device).eval()


def load_state(network: MediCLIP, state: dict, ckpt_path: str) -> None:
    """``network.load_state_dict(state)`` with the reason in one line instead of PyTorch's key/shape lists."""
    try:
        network.load_state_dict(state)
    except CheckpointMismatchError as error:
        raise CheckpointError(f"{ckpt_path}: {error}") from None
    except RuntimeError as error:
        expected = network.state_dict()
        tensors = [k for k in state if k in expected and k != EXTRA_STATE_KEY]
        wrong = [k for k in tensors if getattr(state[k], "shape", None) != getattr(expected[k], "shape", None)]
        unknown = sorted(set(state) - set(expected))
        absent = sorted(set(expected) - set(state))
        if wrong:
            key = wrong[0]
            shapes = f"{tuple(state[key].shape)} vs {tuple(expected[key].shape)}"
            reason = f"{len(wrong)} tensor(s) of other shapes, e.g. {key} {shapes}"
        elif unknown or absent:
            reason = f"entries {', '.join((unknown + absent)[:3])} do not belong to this network"
        else:
            reason = _first_line(error)
        raise CheckpointError(
            f"{ckpt_path}: does not fit the {network.identity['clip_model']} network it records ({reason}); "
            "the file was changed or made by another program."
        ) from None


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0] if lines else ''}"[:200]

"""model.pt's extra state (the backbone's identity, the calibration) stored as a tensor.

MONAI's ``copy_model_state`` (what ``monai.bundle.load`` copies a checkpoint with) compares the shape of
every entry of a state dict, so a dict-valued ``_extra_state`` makes it fail. The extra state is kept as its
JSON text in a uint8 tensor instead: still tensors and plain containers only (``weights_only=True``), and
model.pt files that hold the plain dict (made before) read the same.
"""

from __future__ import annotations

import json

import torch

EXTRA_STATE_KEY = "_extra_state"

__all__ = ["EXTRA_STATE_KEY", "decode_extra_state", "encode_extra_state", "extra_state"]


def encode_extra_state(state: dict) -> torch.Tensor:
    """``state`` (JSON-serialisable) as a 1-D uint8 tensor of its JSON text."""
    text = json.dumps(state, sort_keys=True).encode("utf-8")
    return torch.frombuffer(bytearray(text), dtype=torch.uint8).clone()


def decode_extra_state(value) -> dict:
    """The dict ``encode_extra_state`` encoded, or the plain dict of an older model.pt as it is.

    Raises:
        ValueError: ``value`` is neither (not a uint8 vector of JSON text holding an object, nor a dict).
    """
    if isinstance(value, dict):
        return dict(value)
    if isinstance(value, torch.Tensor) and value.dtype == torch.uint8 and value.dim() == 1:
        try:
            decoded = json.loads(bytes(value.tolist()).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            decoded = None
        if isinstance(decoded, dict):
            return decoded
    raise ValueError("the extra state is not a MediCLIP identity (neither a dict nor its JSON text as a tensor)")


def extra_state(state_dict: dict) -> dict:
    """The decoded extra state of a MediCLIP state dict (model.pt as ``torch.load`` returns it)."""
    return decode_extra_state(state_dict[EXTRA_STATE_KEY])

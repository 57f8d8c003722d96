"""MediCLIP network parts: the frozen open_clip backbone, learnable prompts, the MediCLIP module and
the reading of its checkpoint (model.pt)."""

from .checkpoint import CheckpointError, load_mediclip, read_model_state
from .clip_backbone import TINY_MODEL_NAME, ClipBackbone, ClipWeightsUnavailableError, create_clip_model
from .mediclip import CheckpointMismatchError, InputContract, MediCLIP
from .prompts import ABNORMAL_PHRASES, NORMAL_PHRASES, PromptLearner

__all__ = [
    "ABNORMAL_PHRASES",
    "NORMAL_PHRASES",
    "TINY_MODEL_NAME",
    "CheckpointError",
    "CheckpointMismatchError",
    "ClipBackbone",
    "ClipWeightsUnavailableError",
    "InputContract",
    "MediCLIP",
    "PromptLearner",
    "create_clip_model",
    "load_mediclip",
    "read_model_state",
]

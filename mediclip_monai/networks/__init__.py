"""MediCLIP network parts: the backbone interface and its open_clip implementation, learnable prompts, the
patch memory bank, the shots' global descriptors, the store of patch tokens, the MediCLIP module and the reading
of its checkpoint (model.pt)."""

from .backbone import Backbone, ImageTokens, InputContract
from .checkpoint import CheckpointError, load_mediclip, read_model_state
from .clip_backbone import TINY_MODEL_NAME, ClipBackbone, ClipWeightsUnavailableError, create_clip_model
from .extra_state import extra_state
from .mediclip import BranchUnavailableError, CheckpointMismatchError, MediCLIP
from .memory_bank import PatchMemoryBank
from .prompts import ABNORMAL_PHRASES, NORMAL_PHRASES, PromptLearner
from .shot_embeddings import ShotEmbeddings
from .token_cache import PatchTokenCache

__all__ = [
    "ABNORMAL_PHRASES",
    "NORMAL_PHRASES",
    "TINY_MODEL_NAME",
    "Backbone",
    "BranchUnavailableError",
    "CheckpointError",
    "CheckpointMismatchError",
    "ClipBackbone",
    "ClipWeightsUnavailableError",
    "ImageTokens",
    "InputContract",
    "MediCLIP",
    "PatchMemoryBank",
    "PatchTokenCache",
    "PromptLearner",
    "ShotEmbeddings",
    "create_clip_model",
    "extra_state",
    "load_mediclip",
    "read_model_state",
]

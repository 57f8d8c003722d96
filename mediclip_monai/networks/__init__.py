"""MediCLIP network parts: the frozen open_clip backbone, learnable prompts and the MediCLIP module."""

from .clip_backbone import TINY_MODEL_NAME, ClipBackbone, ClipWeightsUnavailableError, create_clip_model
from .mediclip import MediCLIP
from .prompts import ABNORMAL_PHRASES, NORMAL_PHRASES, PromptLearner

__all__ = [
    "ABNORMAL_PHRASES",
    "NORMAL_PHRASES",
    "TINY_MODEL_NAME",
    "ClipBackbone",
    "ClipWeightsUnavailableError",
    "MediCLIP",
    "PromptLearner",
    "create_clip_model",
]

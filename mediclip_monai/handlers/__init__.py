"""Ignite handlers and metrics that the bundle's workflows attach to MONAI's engines.

- ``training``: the trainer's text features ahead of the next step, resume, the record of the best model.
- ``metrics``: image and pixel metrics (on the numbers of ``mediclip_monai.metrics``), the set evaluated per
  anomaly branch.
- ``reports``: the files a run ends with: the index of an inference run, the report of an evaluation.
"""

from .metrics import (
    ImageAccuracy,
    ImageAUROC,
    ImageMaxF1,
    ImageSensitivity,
    ImageSpecificity,
    PixelAUPRO,
    PixelAUROC,
    PixelDice,
)
from .reports import CaseIndexHandler, EvaluationReport
from .training import BestModelRecord, NextStepTextFeatures, StaleResumeCheckpointRemover, attach_resume

__all__ = [
    "BestModelRecord",
    "CaseIndexHandler",
    "EvaluationReport",
    "ImageAUROC",
    "ImageAccuracy",
    "ImageMaxF1",
    "ImageSensitivity",
    "ImageSpecificity",
    "NextStepTextFeatures",
    "PixelAUPRO",
    "PixelAUROC",
    "PixelDice",
    "StaleResumeCheckpointRemover",
    "attach_resume",
]

"""What MediCLIP's anomaly maps mean: the decisions a model makes and the rules it applies.

- ``decisions``: `Decisions`, owned by the model and saved in model.pt: per branch the mask and image
  thresholds, the image-score rule, the default branch, the uncalibrated fallback and a run's overrides.
- ``scoring``: the rules: image score, slice of the score, mask, verdict.
- ``calibration``: fitting the decisions on held-out normals and their synthetic anomalies; the branch fusion.
- ``map_scale``: the scale the maps are written in (probability, or normalised around the mask threshold) and the
  run's sensitivity, which moves the mask threshold.
- ``branch_choice``: the fusion weight and the default branch, chosen on anomalies of kinds training never makes.
- ``image_level``: the image-level score (global signals and a map) and its fitted rule.
"""

from .decisions import (
    BRANCHES,
    CALIBRATE_COMMAND,
    DEFAULT_BRANCH,
    UNCALIBRATED_BRANCH,
    BranchDecisions,
    Decisions,
    image_level_rule,
    run_decisions,
)

__all__ = [
    "BRANCHES",
    "CALIBRATE_COMMAND",
    "DEFAULT_BRANCH",
    "UNCALIBRATED_BRANCH",
    "BranchDecisions",
    "Decisions",
    "image_level_rule",
    "run_decisions",
]

"""MONAI transforms that paint synthetic anomalies on normal images (MediCLIP's training signal).

MediCLIP (MICCAI 2024, arXiv 2405.11315) learns from k normal images by segmenting anomalies
synthesised on them with the tasks of "Many tasks make light work" (MICCAI 2023). ``shapes`` draws
the anomaly shapes, ``synthesis`` holds the array transforms (``(1, H, W)`` image in, ``(image,
mask)`` out) and the task mixture, ``dictionary`` their ``image``/``label`` dictionary versions.

The inference and evaluation recipes' transforms live beside them: ``preprocessing`` (reading, intensity
scaling, mask binarisation, the evaluation grid, and ``ClipInput``, the network's input contract) and
``postprocessing`` (scoring and thresholding an anomaly map, the truth of an evaluation case).
"""

from .dictionary import (
    IdentityAnomalyD,
    IdentityAnomalyd,
    IdentityAnomalyDict,
    RandAnomalySynthesisD,
    RandAnomalySynthesisd,
    RandAnomalySynthesisDict,
    RandCutPasteD,
    RandCutPasted,
    RandCutPasteDict,
    RandGaussIntensityChangeD,
    RandGaussIntensityChanged,
    RandGaussIntensityChangeDict,
    RandSinkDeformationD,
    RandSinkDeformationd,
    RandSinkDeformationDict,
    RandSmoothIntensityChangeD,
    RandSmoothIntensityChanged,
    RandSmoothIntensityChangeDict,
    RandSourceDeformationD,
    RandSourceDeformationd,
    RandSourceDeformationDict,
)
from .postprocessing import AnomalyScored, AnomalyTruthd
from .preprocessing import (
    MODEL_GRID_AFFINE,
    BinariseMaskd,
    ClipInput,
    ClipInputd,
    ModelGridd,
    ReadImaged,
    ScaleIntensityRobustd,
)
from .shapes import Hypershape, deformed_hypershape, perlin_blob, perlin_noise, perlin_noise_2d
from .synthesis import (
    DEFAULT_SYNTHESIS_TASKS,
    SYNTHESIS_TASK_NAMES,
    AnomalyPlacement,
    IdentityAnomaly,
    RandAnomalySynthesis,
    RandCutPaste,
    RandGaussIntensityChange,
    RandSinkDeformation,
    RandSmoothIntensityChange,
    RandSourceDeformation,
    as_image_array,
    make_synthesis_task,
    normalise_task_probabilities,
    shape_centre,
)

__all__ = [
    "DEFAULT_SYNTHESIS_TASKS",
    "MODEL_GRID_AFFINE",
    "SYNTHESIS_TASK_NAMES",
    "AnomalyPlacement",
    "AnomalyScored",
    "AnomalyTruthd",
    "BinariseMaskd",
    "ClipInput",
    "ClipInputd",
    "Hypershape",
    "IdentityAnomaly",
    "IdentityAnomalyD",
    "IdentityAnomalyDict",
    "IdentityAnomalyd",
    "ModelGridd",
    "RandAnomalySynthesis",
    "RandAnomalySynthesisD",
    "RandAnomalySynthesisDict",
    "RandAnomalySynthesisd",
    "RandCutPaste",
    "RandCutPasteD",
    "RandCutPasteDict",
    "RandCutPasted",
    "RandGaussIntensityChange",
    "RandGaussIntensityChangeD",
    "RandGaussIntensityChangeDict",
    "RandGaussIntensityChanged",
    "RandSinkDeformation",
    "RandSinkDeformationD",
    "RandSinkDeformationDict",
    "RandSinkDeformationd",
    "RandSmoothIntensityChange",
    "RandSmoothIntensityChangeD",
    "RandSmoothIntensityChangeDict",
    "RandSmoothIntensityChanged",
    "RandSourceDeformation",
    "RandSourceDeformationD",
    "RandSourceDeformationDict",
    "RandSourceDeformationd",
    "ReadImaged",
    "ScaleIntensityRobustd",
    "as_image_array",
    "deformed_hypershape",
    "make_synthesis_task",
    "normalise_task_probabilities",
    "perlin_blob",
    "perlin_noise",
    "perlin_noise_2d",
    "shape_centre",
]

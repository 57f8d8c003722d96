"""Dictionary versions of the anomaly-synthesis transforms: read ``image``, write ``image`` and ``label``.

These are what the bundle configs use (``RandAnomalySynthesisd`` in ``train.json``): the image key is
replaced by the image with a synthetic anomaly and the label key receives its mask, a ``(1, H, W)``
array of 0/1 of the image's type, dtype and metadata. The tasks and their parameters are those of
"Many tasks make light work" (Baugh et al., MICCAI 2023) as used by MediCLIP (MICCAI 2024,
arXiv 2405.11315); see :mod:`mediclip_monai.transforms.synthesis`.

As in MONAI's ``RandGaussianNoised``, each wrapper owns its array transform and re-seeds it in
``set_random_state``; here the array transform shares the wrapper's generator, so one seed drives
the whole draw and MONAI's per-worker seeding gives new anomalies every epoch.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import ClassVar

import numpy as np
from monai.config import KeysCollection
from monai.config.type_definitions import NdarrayOrTensor
from monai.transforms.transform import MapTransform, RandomizableTransform
from monai.utils import TransformBackends

from .synthesis import (
    IdentityAnomaly,
    RandAnomalySynthesis,
    RandCutPaste,
    RandGaussIntensityChange,
    RandSinkDeformation,
    RandSmoothIntensityChange,
    RandSourceDeformation,
    _unchanged,
)

__all__ = [
    "IdentityAnomalyD",
    "IdentityAnomalyDict",
    "IdentityAnomalyd",
    "RandAnomalySynthesisD",
    "RandAnomalySynthesisDict",
    "RandAnomalySynthesisd",
    "RandCutPasteD",
    "RandCutPasteDict",
    "RandCutPasted",
    "RandGaussIntensityChangeD",
    "RandGaussIntensityChangeDict",
    "RandGaussIntensityChanged",
    "RandSinkDeformationD",
    "RandSinkDeformationDict",
    "RandSinkDeformationd",
    "RandSmoothIntensityChangeD",
    "RandSmoothIntensityChangeDict",
    "RandSmoothIntensityChanged",
    "RandSourceDeformationD",
    "RandSourceDeformationDict",
    "RandSourceDeformationd",
]


def _one_key(transform: MapTransform) -> None:
    if len(transform.keys) != 1:
        raise ValueError(
            f"{type(transform).__name__} synthesises on one image key and writes one label; "
            f"got keys {transform.keys}."
        )


class _SynthesisDictionary(RandomizableTransform, MapTransform):
    """Wraps an array synthesis transform: ``d[key], d[label_key] = synthesis(d[key])``."""

    backend: ClassVar[list[TransformBackends]] = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(
        self,
        keys: KeysCollection,
        label_key: str,
        synthesis: RandomizableTransform,
        prob: float = 1.0,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        _one_key(self)
        self.label_key = label_key
        self.synthesis = synthesis

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None):
        super().set_random_state(seed, state)
        self.synthesis.set_random_state(state=self.R)
        return self

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        self.randomize(None)
        for key in self.key_iterator(d):
            if self._do_transform:
                d[key], d[self.label_key] = self.synthesis(d[key])
            else:
                d[key], d[self.label_key] = _unchanged(d[key])
        return d


class RandCutPasted(_SynthesisDictionary):
    """Dictionary version of :class:`~mediclip_monai.transforms.synthesis.RandCutPaste`.

    Args:
        keys: the image key (exactly one), ``(1, H, W)`` in [0, 1].
        label_key: where to write the anomaly mask.
        support_images: the k-shot normal images to take content from, each ``(1, H, W)`` in [0, 1];
            ``None``: each image is its own source.
        min_prop: smallest blob box side, as a fraction of the image side.
        max_prop: largest blob box side, as a fraction of the image side.
        foreground_threshold: if set, anomalies are only placed where their centre (the shape pixel
            nearest the shape's centroid) lies on a pixel brighter than this, i.e. inside the body.
            Off by default, as in the reference, which puts about a quarter of labelled pixels on
            empty background, where nothing changes, and so teaches the model to flag empty air.
        prob: probability of synthesising; otherwise the image is kept and the mask is empty.
        allow_missing_keys: don't raise an error when the image key is missing.
    """

    def __init__(
        self,
        keys: KeysCollection = "image",
        label_key: str = "label",
        support_images: Sequence[NdarrayOrTensor] | NdarrayOrTensor | None = None,
        min_prop: float = 0.1,
        max_prop: float = 0.6,
        foreground_threshold: float | None = None,
        prob: float = 1.0,
        allow_missing_keys: bool = False,
    ) -> None:
        synthesis = RandCutPaste(support_images, min_prop, max_prop, foreground_threshold)
        super().__init__(keys, label_key, synthesis, prob, allow_missing_keys)

    def set_support_images(self, images: Sequence[NdarrayOrTensor] | NdarrayOrTensor | None) -> None:
        """Replace the k-shot support set."""
        self.synthesis.set_support_images(images)


class RandGaussIntensityChanged(_SynthesisDictionary):
    """Dictionary version of :class:`~mediclip_monai.transforms.synthesis.RandGaussIntensityChange`.

    Args:
        keys: the image key (exactly one), ``(1, H, W)`` in [0, 1].
        label_key: where to write the anomaly mask.
        min_prop: smallest blob box side, as a fraction of the image side.
        max_prop: largest blob box side, as a fraction of the image side.
        foreground_threshold: if set, anomalies are only placed where their centre (the shape pixel
            nearest the shape's centroid) lies on a pixel brighter than this, i.e. inside the body.
            Off by default, as in the reference, which puts about a quarter of labelled pixels on
            empty background, where nothing changes, and so teaches the model to flag empty air.
        prob: probability of synthesising; otherwise the image is kept and the mask is empty.
        allow_missing_keys: don't raise an error when the image key is missing.
    """

    def __init__(
        self,
        keys: KeysCollection = "image",
        label_key: str = "label",
        min_prop: float = 0.3,
        max_prop: float = 0.8,
        foreground_threshold: float | None = None,
        prob: float = 1.0,
        allow_missing_keys: bool = False,
    ) -> None:
        synthesis = RandGaussIntensityChange(min_prop, max_prop, foreground_threshold)
        super().__init__(keys, label_key, synthesis, prob, allow_missing_keys)


class RandSourceDeformationd(_SynthesisDictionary):
    """Dictionary version of :class:`~mediclip_monai.transforms.synthesis.RandSourceDeformation`.

    Args:
        keys: the image key (exactly one), ``(1, H, W)`` in [0, 1].
        label_key: where to write the anomaly mask.
        min_prop: smallest shape side, as a fraction of the image side.
        max_prop: largest shape side, as a fraction of the image side.
        foreground_threshold: if set, anomalies are only placed where their centre (the shape pixel
            nearest the shape's centroid) lies on a pixel brighter than this, i.e. inside the body.
            Off by default, as in the reference, which puts about a quarter of labelled pixels on
            empty background, where nothing changes, and so teaches the model to flag empty air.
        prob: probability of synthesising; otherwise the image is kept and the mask is empty.
        allow_missing_keys: don't raise an error when the image key is missing.
    """

    def __init__(
        self,
        keys: KeysCollection = "image",
        label_key: str = "label",
        min_prop: float = 0.2,
        max_prop: float = 0.6,
        foreground_threshold: float | None = None,
        prob: float = 1.0,
        allow_missing_keys: bool = False,
    ) -> None:
        synthesis = RandSourceDeformation(min_prop, max_prop, foreground_threshold)
        super().__init__(keys, label_key, synthesis, prob, allow_missing_keys)


class RandSinkDeformationd(_SynthesisDictionary):
    """Dictionary version of :class:`~mediclip_monai.transforms.synthesis.RandSinkDeformation`.

    Args:
        keys: the image key (exactly one), ``(1, H, W)`` in [0, 1].
        label_key: where to write the anomaly mask.
        min_prop: smallest shape side, as a fraction of the image side.
        max_prop: largest shape side, as a fraction of the image side.
        foreground_threshold: if set, anomalies are only placed where their centre (the shape pixel
            nearest the shape's centroid) lies on a pixel brighter than this, i.e. inside the body.
            Off by default, as in the reference, which puts about a quarter of labelled pixels on
            empty background, where nothing changes, and so teaches the model to flag empty air.
        prob: probability of synthesising; otherwise the image is kept and the mask is empty.
        allow_missing_keys: don't raise an error when the image key is missing.
    """

    def __init__(
        self,
        keys: KeysCollection = "image",
        label_key: str = "label",
        min_prop: float = 0.2,
        max_prop: float = 0.6,
        foreground_threshold: float | None = None,
        prob: float = 1.0,
        allow_missing_keys: bool = False,
    ) -> None:
        synthesis = RandSinkDeformation(min_prop, max_prop, foreground_threshold)
        super().__init__(keys, label_key, synthesis, prob, allow_missing_keys)


class RandSmoothIntensityChanged(_SynthesisDictionary):
    """Dictionary version of :class:`~mediclip_monai.transforms.synthesis.RandSmoothIntensityChange`.

    Args:
        keys: the image key (exactly one), ``(1, H, W)`` in [0, 1].
        label_key: where to write the anomaly mask.
        intensity: scale of the change on the [0, 1] intensity scale (the reference's 30 on 0..255).
        min_prop: smallest blob box side, as a fraction of the image side.
        max_prop: largest blob box side, as a fraction of the image side.
        foreground_threshold: if set, anomalies are only placed where their centre (the shape pixel
            nearest the shape's centroid) lies on a pixel brighter than this, i.e. inside the body.
            Off by default, as in the reference, which puts about a quarter of labelled pixels on
            empty background, where nothing changes, and so teaches the model to flag empty air.
        prob: probability of synthesising; otherwise the image is kept and the mask is empty.
        allow_missing_keys: don't raise an error when the image key is missing.
    """

    def __init__(
        self,
        keys: KeysCollection = "image",
        label_key: str = "label",
        intensity: float = 30.0 / 255.0,
        min_prop: float = 0.3,
        max_prop: float = 0.8,
        foreground_threshold: float | None = None,
        prob: float = 1.0,
        allow_missing_keys: bool = False,
    ) -> None:
        synthesis = RandSmoothIntensityChange(intensity, min_prop, max_prop, foreground_threshold)
        super().__init__(keys, label_key, synthesis, prob, allow_missing_keys)


class IdentityAnomalyd(MapTransform):
    """Dictionary version of :class:`~mediclip_monai.transforms.synthesis.IdentityAnomaly`.

    Args:
        keys: the image key (exactly one), ``(1, H, W)`` in [0, 1]; left as it is.
        label_key: where to write the (empty) mask.
        allow_missing_keys: don't raise an error when the image key is missing.
    """

    backend = IdentityAnomaly.backend

    def __init__(
        self, keys: KeysCollection = "image", label_key: str = "label", allow_missing_keys: bool = False
    ):
        super().__init__(keys, allow_missing_keys)
        _one_key(self)
        self.label_key = label_key

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key], d[self.label_key] = _unchanged(d[key])
        return d


class RandAnomalySynthesisd(_SynthesisDictionary):
    """Dictionary version of :class:`~mediclip_monai.transforms.synthesis.RandAnomalySynthesis`:
    one task per sample from a task mixture, image written back to ``keys``, mask to ``label_key``.

    Plain arguments only, so a bundle config can build it::

        {"_target_": "mediclip_monai.transforms.RandAnomalySynthesisd", "keys": "image",
         "label_key": "label", "tasks": {"CutPaste": 0.25, "GaussIntensityChange": 0.25,
         "SourceDeformation": 0.25, "Identity": 0.25}, "support_images": "$@data.support_images"}

    Args:
        keys: the image key (exactly one), ``(1, H, W)`` in [0, 1].
        label_key: where to write the anomaly mask.
        tasks: ``{task name: probability}`` (normalised), names among "CutPaste", "GaussIntensityChange",
            "SourceDeformation", "SinkDeformation", "SmoothIntensityChange", "Identity"; ``None``:
            MediCLIP's mixture (CutPaste, GaussIntensityChange, SourceDeformation, Identity, 0.25 each).
        support_images: the k-shot normal images CutPaste takes content from, each ``(1, H, W)`` in
            [0, 1]; ``None``: each image is its own source. Can be set later with
            :meth:`set_support_images`.
        foreground_threshold: if set, anomalies are only placed where their centre (the shape pixel
            nearest the shape's centroid) lies on a pixel brighter than this, i.e. inside the body.
            Off by default, as in the reference, which puts about a quarter of labelled pixels on
            empty background, where nothing changes, and so teaches the model to flag empty air.
        task_key: if set, the name of the task drawn is written there (train.json: "anomaly_task", so
            training can reuse the backbone's tokens of the shots the Identity task left unchanged).
        allow_missing_keys: don't raise an error when the image key is missing.
    """

    def __init__(
        self,
        keys: KeysCollection = "image",
        label_key: str = "label",
        tasks: Mapping[str, float] | Sequence[str] | None = None,
        support_images: Sequence[NdarrayOrTensor] | NdarrayOrTensor | None = None,
        foreground_threshold: float | None = None,
        task_key: str | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        synthesis = RandAnomalySynthesis(tasks, support_images, foreground_threshold)
        super().__init__(keys, label_key, synthesis, 1.0, allow_missing_keys)
        self.task_key = task_key

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = super().__call__(data)
        if self.task_key is not None:
            d[self.task_key] = self.synthesis.chosen_task
        return d

    @property
    def chosen_task(self) -> str | None:
        """The task drawn for the last sample."""
        return self.synthesis.chosen_task

    def set_support_images(self, images: Sequence[NdarrayOrTensor] | NdarrayOrTensor | None) -> None:
        """Give CutPaste its k-shot support set (no effect when the mixture has no CutPaste)."""
        self.synthesis.set_support_images(images)


RandCutPasteD = RandCutPasteDict = RandCutPasted
RandGaussIntensityChangeD = RandGaussIntensityChangeDict = RandGaussIntensityChanged
RandSourceDeformationD = RandSourceDeformationDict = RandSourceDeformationd
RandSinkDeformationD = RandSinkDeformationDict = RandSinkDeformationd
RandSmoothIntensityChangeD = RandSmoothIntensityChangeDict = RandSmoothIntensityChanged
IdentityAnomalyD = IdentityAnomalyDict = IdentityAnomalyd
RandAnomalySynthesisD = RandAnomalySynthesisDict = RandAnomalySynthesisd

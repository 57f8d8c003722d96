"""Anomalies of kinds that training never makes: the calibration set, on which the model's decisions are chosen.

Validation during training shows the model synthetic anomalies made by its own training tasks, so it favours
the branch that fitted those tasks: it can pick the best epoch, but not, honestly, a branch, fusion weights,
thresholds or an image-score rule meant for lesions of other kinds. The calibration set pairs each held-out
normal slice (the validation normals, never a shot, never test data) with copies of it carrying an anomaly of a
family that no training task makes:

- ``IntensityPatch`` (`RandIntensityPatch`): an irregular region whose intensity is replaced by another tissue
  level (0.35-0.65 or 1.35-1.65 times the tissue's), keeping the fine texture of the scan (its noise), behind a
  soft edge: a lesion changes the tissue, not the scanner.
- ``TextureChange`` (`RandTextureChange`): an irregular region of coarser, heterogeneous texture at the tissue's
  own mean level: a lesion that shows in structure rather than brightness.

The training tasks paste real tissue (CutPaste), add a smooth low-frequency texture that also shifts the
intensity (GaussIntensityChange), or deform the tissue (SourceDeformation); the project's other synthesis tasks
are their siblings (SmoothIntensityChange, SinkDeformation), and MediCLIP's map finds those as it finds its
training tasks' (on the calibration set it then favoured the ``mediclip`` map as training's validation does), so
they are not used here. Neither family is the demo's test lesion (a dark core behind a bright rim,
`mediclip_monai.data.demo`) nor one of the held-out brain set's (small bright foci, dark wedges opening to the
edge, `mediclip_monai.data.heldout_brain`): those two sets stay unseen by training and by calibration alike.
Every anomaly lies with its centre on the foreground (pixels above `FOREGROUND_LEVEL`), inside the body.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from monai.config.type_definitions import NdarrayOrTensor
from monai.transforms.transform import RandomizableTransform
from scipy import ndimage

from ..decisions.scoring import FOREGROUND_LEVEL
from ..transforms.shapes import perlin_blob
from ..transforms.synthesis import AnomalyPlacement, _AnomalyTask  # the synthesis tasks' placement machinery

__all__ = [
    "ANOMALOUS_COPIES",
    "UNSEEN_FAMILIES",
    "RandIntensityPatch",
    "RandTextureChange",
    "RandUnseenAnomaly",
    "make_calibration_set",
]

UNSEEN_FAMILIES = ("IntensityPatch", "TextureChange")
# Anomalous copies of each held-out normal slice: more anomalies to fit on, from the same normals.
ANOMALOUS_COPIES = 2
# Scale (pixels) that parts a slice's fine texture (its noise) from its intensity level.
_TEXTURE_SIGMA = 2.0


def _tissue_level(image: np.ndarray) -> float:
    """The tissue's reference level: the 90th percentile of the foreground (white matter in a brain slice)."""
    tissue = image[image > FOREGROUND_LEVEL]
    return float(np.percentile(tissue if tissue.size else image, 90))


class _UnseenAnomaly(_AnomalyTask):
    """A Perlin blob (as the synthesis tasks draw them) placed with its centre on the foreground.

    Args:
        min_prop: smallest blob box side, as a fraction of the image side.
        max_prop: largest blob box side, as a fraction of the image side.
        prob: probability of synthesising anything; otherwise the image is returned with an empty mask.
    """

    def __init__(self, min_prop: float = 0.1, max_prop: float = 0.4, prob: float = 1.0) -> None:
        super().__init__(min_prop, max_prop, FOREGROUND_LEVEL, prob)

    def _draw_anomaly(self, image: np.ndarray, bounds: list[tuple[int, int]]) -> tuple[np.ndarray, dict]:
        return perlin_blob(bounds, self.R), {"edge_sigma": self.R.uniform(0.5, 1.5)}

    @staticmethod
    def _edge(placement: AnomalyPlacement) -> np.ndarray:
        return ndimage.gaussian_filter(placement.shape.astype(np.float32), placement.params["edge_sigma"])


class RandIntensityPatch(_UnseenAnomaly):
    """Replace the intensity level inside a Perlin blob by another tissue level, keeping the scan's fine texture.

    The new level is ``u * reference``: ``reference`` the 90th percentile of the foreground, ``u`` uniform in
    [0.35, 0.65] or [1.35, 1.65] (each half the time). Inside the blob the image becomes
    ``image * (1 - w) + (level + texture) * w``, clipped to [0, 1]: ``texture`` the image minus its Gaussian blur
    (sigma 2 pixels), ``w`` the blob blurred by a Gaussian of sigma U(0.5, 1.5) pixels. The mask is the blob.

    Args: as `_UnseenAnomaly`.
    """

    def _draw_anomaly(self, image: np.ndarray, bounds: list[tuple[int, int]]) -> tuple[np.ndarray, dict]:
        blob, params = super()._draw_anomaly(image, bounds)
        factor = self.R.uniform(0.35, 0.65) if self.R.rand() < 0.5 else self.R.uniform(1.35, 1.65)
        return blob, {**params, "level": factor * _tissue_level(image)}

    def _apply(self, work: np.ndarray, image: np.ndarray, placement: AnomalyPlacement) -> None:
        view = work[placement.box]
        texture = view - ndimage.gaussian_filter(view, _TEXTURE_SIGMA)
        weight = self._edge(placement)
        changed = np.clip(view * (1.0 - weight) + (placement.params["level"] + texture) * weight, 0.0, 1.0)
        view[placement.shape] = changed[placement.shape]


class RandTextureChange(_UnseenAnomaly):
    """Add a coarse heterogeneous texture inside a Perlin blob, at the tissue's own mean level.

    The texture is Gaussian noise blurred with sigma U(1, 2.5) pixels, scaled to a standard deviation of
    U(0.15, 0.3) times the tissue's reference level (the 90th percentile of the foreground). Inside the blob the
    image becomes ``image + texture * w``, clipped to [0, 1], ``w`` the blob blurred by a Gaussian of sigma
    U(0.5, 1.5) pixels. The mask is the blob.

    Args: as `_UnseenAnomaly`.
    """

    def _draw_anomaly(self, image: np.ndarray, bounds: list[tuple[int, int]]) -> tuple[np.ndarray, dict]:
        blob, params = super()._draw_anomaly(image, bounds)
        return blob, {
            **params,
            "noise": self.R.normal(0.0, 1.0, blob.shape).astype(np.float32),
            "grain": self.R.uniform(1.0, 2.5),
            "strength": self.R.uniform(0.15, 0.3) * _tissue_level(image),
        }

    def _apply(self, work: np.ndarray, image: np.ndarray, placement: AnomalyPlacement) -> None:
        p = placement.params
        texture = ndimage.gaussian_filter(p["noise"], p["grain"])
        texture *= p["strength"] / max(float(texture.std()), 1e-6)
        view = work[placement.box]
        changed = np.clip(view + texture * self._edge(placement), 0.0, 1.0)
        view[placement.shape] = changed[placement.shape]


class RandUnseenAnomaly(RandomizableTransform):
    """One anomaly of an unseen family per image, the family drawn uniformly; returns ``(image, mask)``.

    Args:
        families: names from `UNSEEN_FAMILIES`.

    ``chosen_family`` names the last draw.
    """

    def __init__(self, families: Sequence[str] = UNSEEN_FAMILIES) -> None:
        RandomizableTransform.__init__(self, prob=1.0)
        makers = {"IntensityPatch": RandIntensityPatch, "TextureChange": RandTextureChange}
        unknown = [name for name in families if name not in makers]
        if unknown or not families:
            raise ValueError(f"unseen anomaly families must be some of {', '.join(makers)}, got {list(families)}")
        self.families = {name: makers[name]() for name in families}
        self.chosen_family: str | None = None

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None):
        super().set_random_state(seed, state)
        for family in self.families.values():  # one stream, one seed
            family.set_random_state(state=self.R)
        return self

    def __call__(self, img: NdarrayOrTensor) -> tuple[NdarrayOrTensor, NdarrayOrTensor]:
        """An anomaly on ``img`` (``(1, H, W)`` in [0, 1]); pixels outside the mask are returned unchanged."""
        names = list(self.families)
        self.chosen_family = names[self.R.randint(len(names))]
        return self.families[self.chosen_family](img)


def make_calibration_set(slices: Sequence[dict], seed: int, copies: int = ANOMALOUS_COPIES) -> list[dict]:
    """Each held-out normal slice as it is, then ``copies`` times with an anomaly of an unseen family.

    Args:
        slices: the held-out normal slices (dicts with a ``(1, S, S)`` ``image`` in [0, 1], ``name`` and
            ``entry``, the index of the image or volume they come from; `FewShotData.held_out_slices`).
        seed: the draws (the same seed gives the same set, at the end of training and in a later calibrate run).
        copies: anomalous copies per slice.

    Returns:
        Dicts with ``image``, ``label`` (``(1, S, S)``, 0/1), ``name``, ``entry``, ``family`` (None for the
        normal slice) and ``copy`` (0 for the normal slice, 1.. for the anomalous ones).
    """
    synthesis = RandUnseenAnomaly()
    synthesis.set_random_state(seed)
    cases = []
    for index, item in enumerate(slices):
        image = torch.as_tensor(item["image"])
        common = {"entry": item.get("entry", index)}
        cases.append(
            {
                "image": image,
                "label": torch.zeros_like(image),
                "name": item["name"],
                "family": None,
                "copy": 0,
                **common,
            }
        )
        for copy in range(1, copies + 1):
            anomalous, mask = synthesis(image.clone())
            family = synthesis.chosen_family
            name = f"{item['name']}_{family}_{copy}"
            cases.append({"image": anomalous, "label": mask, "name": name, "family": family, "copy": copy, **common})
    return cases

"""The image-level score: is this scan abnormal? Global signals and the maps, combined by a rule fitted on
anomalies the model never trained on.

A map's score (its top pixels) misses what few-shot CLIP detectors read off the whole image: how far the
image's global descriptors lie from the normal shots' (the image-level nearest neighbour of PatchCore- and
AnomalyDINO-style methods) and CLIP's own image-text score (WinCLIP, AnomalyCLIP). Every slice gets the
`SIGNALS`, all from the one backbone pass that makes its maps (higher: more anomalous):

- ``map``: the map's score, the mean of the top 1% of the slice's foreground pixels
  (`mediclip_monai.decisions.scoring.slice_scores`) on the network's input grid, of the rule's ``map_branch``
  (the default branch the calibration set chose, `mediclip_monai.decisions.branch_choice`);
- ``embedding_knn``, ``class_token_knn``, ``image_text``: `MediCLIP.global_signals` (distances of CLIP's
  image embedding and of the tapped blocks' class tokens to the shots', and the embedding against the learned
  "abnormal" minus "normal" prompts).

`fit_image_level` fits the rule on the calibration set (held-out normal slices, and the same slices with
anomalies of kinds training never makes, `mediclip_monai.data.unseen_anomalies`); model.pt keeps it, a plain
dict, as ``calibration["image_level"]``:

- normalisation: per signal, ``(s - median) / IQR`` over the normal calibration slices (as the fused map);
- weights: per signal ``max(0, 2 AUROC - 1 - VOTE_MARGIN)`` over the calibration slices (normal against
  anomalous), summed to 1: a signal votes the more the better it separates anomalies the model never saw, and
  not at all unless its AUROC clears 0.5 by half the margin (0.05), what a set of a few dozen slices can tell
  from chance; when no signal clears it, the map's score alone;
- back to [0, 1]: a logistic of the weighted sum fitted on the calibration slices' labels (L2-regularised,
  so a set it separates perfectly still keeps its ranking): the slice's probability of being abnormal;
- a volume (`aggregate_slices`): the mean of the top ``slice_fraction`` of its voting slices' probabilities
  (0: the best slice alone), where a slice votes when at least `MIN_FOREGROUND` of it is foreground (the
  slices training would take; all vote when none does). ``slice_fraction`` is chosen among
  `SLICE_FRACTIONS` on calibration volumes when the held-out images are volumes: each as it is (normal)
  and, `VOLUME_DRAWS` times, with a run of 1 to a quarter of its slices replaced by their anomalous copies;
  without volumes to choose on it is 0, the best slice, as the map's rule;
- decision threshold: midway between the median scores of the normal and the abnormal calibration cases
  (2D images, and the calibration volumes when there are).

The slices' probabilities are computed in `mediclip_monai.workflows.inferers.SliceWiseInferer` (from the
backbone pass that makes the maps; in the map's metadata under `SLICE_SCORES_KEY` and `SLICE_FOREGROUND_KEY`)
and turned into the case's score by the run's decisions (`BranchDecisions.score`, called by
`mediclip_monai.transforms.AnomalyScored`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from ..metrics import roc_auc
from .scoring import FOREGROUND_LEVEL, slice_scores

__all__ = [
    "MIN_FOREGROUND",
    "SIGNALS",
    "SLICE_FOREGROUND_KEY",
    "SLICE_FRACTIONS",
    "SLICE_SCORES_KEY",
    "aggregate_slices",
    "fit_image_level",
    "foreground_fraction",
    "slice_probabilities",
    "slice_signals",
]

SIGNALS = ("map", "embedding_knn", "class_token_knn", "image_text")
# The maps every calibration and image-level pass computes (the fused map is made from them).
MAP_BRANCHES = ("mediclip", "memory_bank")
# Taken off 2 AUROC - 1 before a signal votes: the noise of a calibration set of a few dozen slices.
VOTE_MARGIN = 0.1
# A slice votes in a volume's score when this share of it is foreground (training's own slice rule).
MIN_FOREGROUND = 0.05
# Candidate shares of a volume's voting slices whose probabilities are averaged (0: the best slice alone).
SLICE_FRACTIONS = (0.0, 0.05, 0.1, 0.25, 0.5)
# Anomalous versions of each calibration volume, for choosing the slice fraction.
VOLUME_DRAWS = 4
# Where SliceWiseInferer puts each case's per-slice scores and foreground shares (a MetaTensor's meta).
SLICE_SCORES_KEY = "image_level_slice_scores"
SLICE_FOREGROUND_KEY = "image_level_slice_foreground"
# Inverse L2 strength of the logistic: mild, on signals already scaled to unit IQR.
_LOGISTIC_C = 1.0


def foreground_fraction(images: torch.Tensor) -> torch.Tensor:
    """N float32 foreground shares (pixels above ``scoring.FOREGROUND_LEVEL``) of N x 1 x H x W images in [0, 1]."""
    return (images > FOREGROUND_LEVEL).flatten(1).float().mean(dim=1)


@torch.no_grad()
def slice_signals(network, tokens, images: torch.Tensor, anomaly_map: torch.Tensor) -> dict[str, np.ndarray]:
    """Every signal of `SIGNALS` for a batch of slices, from one backbone pass.

    Args:
        network: the MediCLIP network (with its shot embeddings built).
        tokens: ``network.image_tokens(...)`` of the slices (`mediclip_monai.networks.ImageTokens`).
        images: the slices in [0, 1] as the network saw them before its normalisation, N x 1 x S x S.
        anomaly_map: the slices' N x S x S map of the rule's ``map_branch`` (``anomaly_maps_from_tokens``).

    Returns:
        ``{signal: N float64 values}``.
    """
    model = getattr(network, "module", network)
    signals = {"map": slice_scores(anomaly_map.float().cpu(), images[:, 0].float().cpu())}
    for name, values in model.global_signals(tokens).items():
        signals[name] = values.double().cpu().numpy()
    return {name: signals[name] for name in SIGNALS}


def _as_matrix(signals: Mapping[str, Sequence[float]], names: Sequence[str]) -> np.ndarray:
    return np.stack([np.asarray(signals[name], dtype=np.float64).reshape(-1) for name in names], axis=1)


def slice_probabilities(signals: Mapping[str, Sequence[float]], rule: Mapping) -> np.ndarray:
    """The slices' probabilities of being abnormal under ``rule`` (`fit_image_level`): N values in (0, 1)."""
    names = list(rule["weights"])
    values = _as_matrix(signals, names)
    center = np.array([rule["center"][n] for n in names])
    scale = np.array([rule["scale"][n] for n in names])
    weights = np.array([rule["weights"][n] for n in names])
    combined = ((values - center) / scale) @ weights
    logit = np.clip(rule["slope"] * combined + rule["offset"], -60.0, 60.0)
    return 1.0 / (1.0 + np.exp(-logit))


def aggregate_slices(scores: Sequence[float], foreground: Sequence[float] | None, rule: Mapping) -> tuple[float, int]:
    """A case's image-level score from its slices' probabilities, and the slice that scores highest.

    Args:
        scores: per-slice probabilities (`slice_probabilities`), in slice order.
        foreground: the slices' foreground shares (`foreground_fraction`); None: every slice votes.
        rule: the rule with its ``slice_fraction``.

    Returns:
        ``(score, index of the highest-scoring voting slice)``: the mean of the top ``slice_fraction`` of the
        voting slices (at least one).
    """
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    voting = np.ones(scores.size, dtype=bool)
    if foreground is not None:
        voting = np.asarray(foreground, dtype=np.float64).reshape(-1) >= MIN_FOREGROUND
        if not voting.any():
            voting[:] = True
    candidates = np.flatnonzero(voting)
    ranked = candidates[np.argsort(-scores[candidates], kind="stable")]
    count = max(1, math.ceil(float(rule["slice_fraction"]) * ranked.size))
    return float(scores[ranked[:count]].mean()), int(ranked[0])


def _robust_scale(values: np.ndarray) -> tuple[float, float]:
    q25, q50, q75 = np.percentile(values, [25, 50, 75])
    return float(q50), float(max(q75 - q25, 1e-6))


def _logistic(x: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    from sklearn.linear_model import LogisticRegression  # here: inference imports this module, fitting is rare

    model = LogisticRegression(C=_LOGISTIC_C, max_iter=1000).fit(x[:, None], labels)
    return float(model.coef_[0, 0]), float(model.intercept_[0])


def _calibration_volumes(
    probabilities: np.ndarray, copies: np.ndarray, entries: np.ndarray, foreground: np.ndarray, seed: int
) -> list[tuple[np.ndarray, np.ndarray, int]]:
    """``(slice probabilities, foreground shares, label)`` of the calibration volumes: each held-out volume as it
    is, and `VOLUME_DRAWS` times with a run of its slices replaced by those of one of its anomalous copies."""
    rng = np.random.default_rng(seed)
    volumes = []
    for entry in np.unique(entries):
        normal = np.flatnonzero((entries == entry) & (copies == 0))
        anomalous = [np.flatnonzero((entries == entry) & (copies == c)) for c in range(1, int(copies.max()) + 1)]
        anomalous = [slices for slices in anomalous if slices.size == normal.size]
        if normal.size < 2 or not anomalous:
            continue  # a 2D image, or a volume without anomalous copies: nothing to aggregate
        slices, shares = probabilities[normal], foreground[normal]
        volumes.append((slices, shares, 0))
        for draw in range(VOLUME_DRAWS):
            length = int(rng.integers(1, max(1, math.ceil(normal.size / 4)) + 1))
            start = int(rng.integers(0, normal.size - length + 1))
            lesioned = slices.copy()
            source = anomalous[draw % len(anomalous)]
            lesioned[start : start + length] = probabilities[source[start : start + length]]
            volumes.append((lesioned, shares, 1))
    return volumes


def fit_image_level(
    signals: Mapping[str, Sequence[float]],
    copies: Sequence[int],
    entries: Sequence[int],
    foreground: Sequence[float],
    map_branch: str,
    seed: int = 0,
) -> dict:
    """The image-level rule from the calibration slices (see the module docstring).

    Args:
        signals: ``{signal: N values}`` of the calibration slices (`slice_signals`, ``map`` of ``map_branch``).
        copies: per slice, 0 for a normal slice, ``c >= 1`` for its ``c``-th copy with an anomaly.
        entries: N indices of the held-out image each slice comes from; a volume's normal slices and each of
            its anomalous copies share one, in the same slice order.
        foreground: N foreground shares of the slices.
        map_branch: the branch whose map gives the ``map`` signal.
        seed: the draws of the calibration volumes' anomalous runs.

    Returns:
        A plain dict: ``map_branch``; ``center``, ``scale`` and ``weights`` per signal, the logistic's ``slope``
        and ``offset``, the ``slice_fraction`` of volumes, the decision ``threshold``, and what they were chosen on
        (``signal_auroc`` per signal, ``calibration_auroc`` of the rule on the calibration cases,
        ``slice_fraction_auroc`` per candidate when there were volumes).
    """
    from .calibration import image_threshold  # here: calibration imports the decisions, which import this module

    copies = np.asarray(copies, dtype=np.int64).reshape(-1)
    labels = copies > 0
    entries, foreground = np.asarray(entries).reshape(-1), np.asarray(foreground, dtype=np.float64).reshape(-1)
    if labels.all() or not labels.any():
        raise ValueError("the image-level rule needs normal and anomalous calibration slices")
    values = _as_matrix(signals, SIGNALS)
    scales = [_robust_scale(column) for column in values[~labels].T]
    auroc = {name: roc_auc(labels, column) for name, column in zip(SIGNALS, values.T)}
    votes = np.array([max(0.0, 2.0 * auroc[name] - 1.0 - VOTE_MARGIN) for name in SIGNALS])
    votes = votes / votes.sum() if votes.sum() > 0 else np.array([float(name == "map") for name in SIGNALS])
    rule: dict = {
        "map_branch": map_branch,
        "center": {name: center for name, (center, _) in zip(SIGNALS, scales)},
        "scale": {name: scale for name, (_, scale) in zip(SIGNALS, scales)},
        "weights": {name: float(w) for name, w in zip(SIGNALS, votes)},
    }
    combined = ((values - [c for c, _ in scales]) / [s for _, s in scales]) @ votes
    rule["slope"], rule["offset"] = _logistic(combined, labels)
    probabilities = slice_probabilities(signals, rule)

    volumes = _calibration_volumes(probabilities, copies, entries, foreground, seed)
    fraction_auroc = {}
    if volumes and len({label for *_, label in volumes}) == 2:
        volume_labels = np.array([label for *_, label in volumes], dtype=bool)
        for fraction in SLICE_FRACTIONS:
            scores = [aggregate_slices(p, f, {"slice_fraction": fraction})[0] for p, f, _ in volumes]
            fraction_auroc[str(fraction)] = roc_auc(volume_labels, np.array(scores))
        rule["slice_fraction"] = float(max(SLICE_FRACTIONS, key=lambda f: fraction_auroc[str(f)]))
    else:
        rule["slice_fraction"] = 0.0
    # the calibration cases: each 2D image's slice, and the calibration volumes
    in_volume = np.isin(entries, [e for e in np.unique(entries) if ((entries == e) & ~labels).sum() > 1])
    case_scores = list(probabilities[~in_volume])
    case_labels = list(labels[~in_volume])
    for slices, shares, label in volumes:
        case_scores.append(aggregate_slices(slices, shares, rule)[0])
        case_labels.append(label)
    case_scores, case_labels = np.array(case_scores), np.array(case_labels, dtype=bool)
    rule["threshold"] = image_threshold(case_scores, case_labels)
    rule.update(
        {
            "signal_auroc": {name: float(value) for name, value in auroc.items()},
            "calibration_auroc": float(roc_auc(case_labels, case_scores)),
            "slice_fraction_auroc": fraction_auroc,
            "rule": "logistic of the (2 AUROC - 1 - margin)-weighted sum of the signals normalised on normal "
            "calibration slices; a volume: mean of the top slice_fraction of its slices with foreground",
        }
    )
    return rule

"""Ignite metrics of the bundle's engines: image AUROC and max F1, pixel AUROC and AUPRO, and at a threshold
pixel Dice and image accuracy, sensitivity and specificity; and the metric set evaluation reports per anomaly branch.

They plug into MONAI's ``SupervisedEvaluator`` as ``key_val_metric`` / ``additional_metrics`` (training
validation in train.json, evaluation in evaluate.json), accumulate over iterations, gather across processes
in distributed runs, and compute with the numbers of ``mediclip_monai.metrics``. The image score is the one
``transforms.AnomalyScored`` gives by the model's rule (``decisions``), or the map's maximum when they are
given maps. From a bundle config::

    {"_target_": "mediclip_monai.handlers.ImageAUROC",
     "output_transform": "$monai.handlers.from_engine(['pred', 'label'])"}
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import NamedTuple

import ignite.distributed as idist
import numpy as np
import torch
from ignite.metrics import Metric
from ignite.metrics.metric import reinit__is_reduced
from monai.handlers import from_engine

from ..decisions.scoring import maximum_scores
from ..metrics import image_auroc, max_f1, pixel_aupro, pixel_auroc

__all__ = [
    "KEY_METRIC",
    "ImageAUROC",
    "ImageAccuracy",
    "ImageMaxF1",
    "ImageSensitivity",
    "ImageSpecificity",
    "MetricSet",
    "PixelAUPRO",
    "PixelAUROC",
    "PixelDice",
    "branch_metrics",
    "evaluation_metrics",
]


def _plain_tensor(tensor) -> torch.Tensor:
    """A detached plain tensor (MetaTensor metadata dropped, it is not needed and slows torch ops)."""
    tensor = torch.as_tensor(tensor).detach()
    return tensor.as_tensor() if hasattr(tensor, "as_tensor") else tensor


def _samples_of(output) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(anomaly map, boolean truth) per sample of ``(pred, label)``; samples without either are skipped.

    ``pred``: B x C x spatial (a batch) or a sequence of C x spatial tensors: channel 1 of a 2-channel
    softmax (normal, anomalous), or the only channel of a 1-channel map. ``label``: B x 1 x spatial (or
    B x spatial) binary masks, or B image labels (0 normal, 1 abnormal); or a sequence of them. A None
    pred or label (a failed case, a case without a mask) leaves the sample out.
    """
    pred, label = output
    if pred is None or label is None:
        return []
    if isinstance(pred, torch.Tensor) and pred.ndim < 3:
        raise ValueError(f"pred must be B x C x spatial, got shape {tuple(pred.shape)}")
    preds, labels = list(pred), list(label)
    if len(preds) != len(labels):
        raise ValueError(f"{len(preds)} predictions but {len(labels)} labels")
    samples = []
    for p, t in zip(preds, labels):
        if p is None or t is None:
            continue
        p, t = _plain_tensor(p), _plain_tensor(t)
        anomaly = p[1] if p.shape[0] >= 2 else p[0]
        if t.numel() > 1:  # a mask, with or without its channel axis
            t = t[0] if t.ndim == anomaly.ndim + 1 else t
            if t.shape != anomaly.shape:
                raise ValueError(f"label shape {tuple(t.shape)} does not match the map {tuple(anomaly.shape)}")
        samples.append((anomaly.float(), t > 0))
    return samples


def _gather(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate a 1D tensor across processes; lengths may differ (uneven last batches, empty ranks)."""
    if idist.get_world_size() == 1:
        return tensor
    device = idist.device()  # NCCL gathers on the GPU, gloo on the CPU
    tensor = tensor.to(device)
    lengths = idist.all_gather(torch.tensor([tensor.shape[0]], device=device))
    parts = idist.all_gather_tensors_with_shapes(tensor, [[int(n)] for n in lengths])
    return torch.cat([p.cpu() for p in parts])


class _AccumulatingMetric(Metric):
    """Keeps (score, truth) pairs from every iteration on the CPU and computes once at epoch end.

    ``compute()`` gathers the pairs of every process first, so a process that saw no sample still takes
    part; with no sample anywhere the metric is NaN, with a warning.
    """

    def __init__(self, output_transform: Callable = lambda x: x, device: str | torch.device = "cpu") -> None:
        super().__init__(output_transform=output_transform, device=device)

    @reinit__is_reduced
    def reset(self) -> None:
        self._scores: list[torch.Tensor] = []
        self._truths: list[torch.Tensor] = []

    def _append(self, scores: torch.Tensor, truths: torch.Tensor) -> None:
        self._scores.append(scores.reshape(-1).cpu())
        self._truths.append(truths.reshape(-1).to(torch.uint8).cpu())

    def _gathered(self) -> tuple[np.ndarray, np.ndarray]:
        scores = torch.cat(self._scores) if self._scores else torch.zeros(0)
        truths = torch.cat(self._truths) if self._truths else torch.zeros(0, dtype=torch.uint8)
        return _gather(truths).numpy(), _gather(scores).numpy()

    def compute(self) -> float:
        truths, scores = self._gathered()
        if scores.size == 0:
            warnings.warn(f"{type(self).__name__} saw no sample; returning NaN", stacklevel=2)
            return float("nan")
        return self._score(truths, scores)

    def _score(self, truths: np.ndarray, scores: np.ndarray) -> float:
        raise NotImplementedError


def _is_score_list(pred) -> bool:
    """Whether ``pred`` is one image score per sample (numbers or 1-element tensors), not anomaly maps."""
    if isinstance(pred, torch.Tensor):
        return pred.ndim == 1
    return isinstance(pred, (list, tuple)) and all(
        p is None or isinstance(p, (int, float)) or (isinstance(p, torch.Tensor) and p.numel() == 1) for p in pred
    )


class _ImageMetric(_AccumulatingMetric):
    """An image-level metric: score = the given image score of each sample (``transforms.AnomalyScored``'s
    ``score``, by the model's rule), or ``decisions.scoring.maximum_scores`` (the maximum) of its anomaly map; truth =
    the image label, or whether the mask has an anomalous pixel."""

    @reinit__is_reduced
    def update(self, output: Sequence[torch.Tensor]) -> None:
        pred, label = output
        if pred is not None and label is not None and _is_score_list(pred):
            pairs = [(float(p), _plain_tensor(t)) for p, t in zip(list(pred), list(label)) if p is not None]
            if pairs:
                scores = torch.tensor([score for score, _ in pairs], dtype=torch.float32)
                self._append(scores, torch.stack([(t > 0).any() for _, t in pairs]))
            return
        samples = _samples_of(output)
        if samples:
            scores = torch.cat([maximum_scores(anomaly[None]) for anomaly, _ in samples])
            self._append(scores, torch.stack([truth.any() for _, truth in samples]))


class ImageAUROC(_ImageMetric):
    """Image-level AUROC as an Ignite metric: score = the image score given, or the max of the anomaly map;
    truth = image label or mask.

    Args:
        output_transform: maps ``engine.state.output`` to ``(pred, label)``; in MONAI
            ``monai.handlers.from_engine(["pred", "label"])``. ``pred``: B x 2 x spatial softmax maps
            (channel 1 = anomalous), B x 1 x spatial anomaly maps, lists of per-sample C x spatial
            tensors, or one image score per sample (``from_engine(["score", ...])`` after
            ``transforms.AnomalyScored``: the model's image-score rule); ``label``: B x 1 x spatial binary
            masks, or one image label (0/1) per sample. Samples
            whose pred or label is None are left out.
        device: where Ignite keeps the metric's state; the samples themselves are kept on the CPU.

    ``compute()`` returns :func:`image_auroc` over every sample seen since the last reset, gathered from
    all processes; NaN if all images are of one class.
    """

    def _score(self, truths: np.ndarray, scores: np.ndarray) -> float:
        return image_auroc(truths, scores)


class ImageMaxF1(_ImageMetric):
    """Image-level max-F1 (the best F1 over all score thresholds) as an Ignite metric; see ``ImageAUROC``."""

    def _score(self, truths: np.ndarray, scores: np.ndarray) -> float:
        return max_f1(truths, scores)


class ImageAccuracy(_ImageMetric):
    """Share of images whose decision is right, as an Ignite metric.

    ``output_transform`` gives ``(decisions, label)``: per sample 1 (abnormal) or 0 (normal), e.g.
    ``from_engine(["abnormal_decision", "image_truth"])`` after ``transforms.AnomalyScored`` (its image threshold);
    ``label`` as for ``ImageAUROC``.
    """

    def _score(self, truths: np.ndarray, scores: np.ndarray) -> float:
        return float(np.mean((scores >= 0.5) == (truths > 0)))


class ImageSensitivity(ImageAccuracy):
    """Share of abnormal images decided abnormal (NaN without abnormal images); inputs as ``ImageAccuracy``."""

    def _score(self, truths: np.ndarray, scores: np.ndarray) -> float:
        abnormal = truths > 0
        return float(np.mean(scores[abnormal] >= 0.5)) if abnormal.any() else float("nan")


class ImageSpecificity(ImageAccuracy):
    """Share of normal images decided normal (NaN without normal images); inputs as ``ImageAccuracy``."""

    def _score(self, truths: np.ndarray, scores: np.ndarray) -> float:
        normal = truths <= 0
        return float(np.mean(scores[normal] < 0.5)) if normal.any() else float("nan")


class PixelDice(Metric):
    """Dice of the thresholded masks against the truth, pooled over every pixel of every case, as an Ignite
    metric: ``2 |mask & truth| / (|mask| + |truth|)`` (pooled, so normal images with empty truth count too).

    Args:
        output_transform: gives ``(mask, label)``: per sample a binary mask (``transforms.AnomalyScored``'s
            ``mask``) and the truth mask of the same shape; a None in either leaves the sample out.

    ``compute()`` sums the counts of every process; NaN, with a warning, when mask and truth are both empty.
    """

    def __init__(self, output_transform: Callable = lambda x: x, device: str | torch.device = "cpu") -> None:
        super().__init__(output_transform=output_transform, device=device)

    @reinit__is_reduced
    def reset(self) -> None:
        self._counts = torch.zeros(3, dtype=torch.float64)  # intersection, mask, truth

    @reinit__is_reduced
    def update(self, output) -> None:
        masks, labels = output
        if masks is None or labels is None:
            return
        for mask, truth in zip(list(masks), list(labels)):
            if mask is None or truth is None:
                continue
            mask, truth = _plain_tensor(mask) > 0, _plain_tensor(truth) > 0
            if mask.shape != truth.shape:
                raise ValueError(f"truth shape {tuple(truth.shape)} does not match the mask {tuple(mask.shape)}")
            counts = [(mask & truth).sum(), mask.sum(), truth.sum()]
            self._counts += torch.tensor([float(c) for c in counts], dtype=torch.float64)

    def compute(self) -> float:
        counts = self._counts
        if idist.get_world_size() > 1:
            counts = idist.all_reduce(counts.to(idist.device())).cpu()
        intersection, mask, truth = (float(c) for c in counts)
        if mask + truth == 0:
            warnings.warn("pixel Dice is undefined when masks and truth are all empty; returning NaN", stacklevel=2)
            return float("nan")
        return 2.0 * intersection / (mask + truth)


class PixelAUROC(_AccumulatingMetric):
    """Pixel-level AUROC as an Ignite metric, pooled over all pixels of all images.

    Same arguments as :class:`ImageAUROC`, with masks as labels (samples without one are left out). Every
    pixel's score is kept until ``compute()`` (4 bytes + 1 byte per pixel on the CPU), which is exact and
    fine for 2D slices and evaluation-sized volume sets.
    """

    @reinit__is_reduced
    def update(self, output: Sequence[torch.Tensor]) -> None:
        for anomaly, truth in _samples_of(output):
            if truth.shape != anomaly.shape:
                raise ValueError("PixelAUROC needs masks as labels, got an image label")
            self._append(anomaly, truth)

    def _score(self, truths: np.ndarray, scores: np.ndarray) -> float:
        return pixel_auroc([truths], [scores])  # one pooled "sample" of every pixel


class PixelAUPRO(_AccumulatingMetric):
    """Pixel-level AUPRO (per-region overlap up to ``max_fpr``, :func:`pixel_aupro`) as an Ignite metric.

    Regions are the connected components of each 2D image's mask; a volume counts slice by slice along
    its last axis (the axial axis of a case on the model grid, ``transforms.ModelGridd``), as in
    MediCLIP's per-slice protocol. Same arguments as :class:`PixelAUROC`, plus ``max_fpr``.
    """

    def __init__(
        self, max_fpr: float = 0.3, output_transform: Callable = lambda x: x, device: str | torch.device = "cpu"
    ) -> None:
        self.max_fpr = float(max_fpr)
        super().__init__(output_transform=output_transform, device=device)

    @reinit__is_reduced
    def reset(self) -> None:
        super().reset()
        self._shapes: list[torch.Tensor] = []

    @reinit__is_reduced
    def update(self, output: Sequence[torch.Tensor]) -> None:
        for anomaly, truth in _samples_of(output):
            if truth.shape != anomaly.shape:
                raise ValueError("PixelAUPRO needs masks as labels, got an image label")
            if anomaly.ndim == 3:  # H x W x D: one 2D image per slice
                anomaly, truth = anomaly.movedim(-1, 0), truth.movedim(-1, 0)
            else:
                anomaly, truth = anomaly[None], truth[None]
            self._append(anomaly.contiguous(), truth.contiguous())
            self._shapes.append(torch.tensor(anomaly.shape[1:], dtype=torch.int64).repeat(anomaly.shape[0]))

    def _score(self, truths: np.ndarray, scores: np.ndarray) -> float:
        shapes = _gather(torch.cat(self._shapes) if self._shapes else torch.zeros(0, dtype=torch.int64))
        sizes = [int(h) * int(w) for h, w in shapes.reshape(-1, 2).tolist()]
        shapes = shapes.reshape(-1, 2).tolist()
        splits = np.cumsum(sizes)[:-1]
        masks = [m.reshape(shape) for m, shape in zip(np.split(truths, splits), shapes)]
        maps = [m.reshape(shape) for m, shape in zip(np.split(scores, splits), shapes)]
        return pixel_aupro(masks, maps, max_fpr=self.max_fpr)


# --- the metrics of an anomaly branch ------------------------------------------------------------------

# What evaluation ranks a model by (MONAI's key metric): the image AUROC of its own branch.
KEY_METRIC = "image_auroc"


def branch_metrics(branch: str | None = None) -> dict[str, Metric]:
    """The metrics of one anomaly branch's postprocessed outputs, by name.

    ``image_auroc``, ``image_max_f1`` (of the image scores), ``pixel_auroc``, ``pixel_aupro`` (of the map),
    ``image_sensitivity`` and ``image_specificity`` (of the verdicts at the image threshold); for a named branch
    (its keys prefixed by ``branch_scoring``: ``<branch>_score``, ``pred_<branch>``, ...) also ``pixel_dice``
    and ``image_accuracy`` at its thresholds, all named ``<branch>/<metric>``. None: the run's own outputs
    (keys ``score``, ``abnormal_decision`` and ``pred``: its branch's map, and the model's image-level score
    when it carries one).
    """
    prefix = f"{branch}_" if branch else ""
    score = from_engine([f"{prefix}score", "image_truth"])
    pixels = from_engine([f"pred_{branch}" if branch else "pred", "label"])
    decisions = from_engine([f"{prefix}abnormal_decision", "image_truth"])
    metrics: dict[str, Metric] = {
        "image_auroc": ImageAUROC(output_transform=score),
        "image_max_f1": ImageMaxF1(output_transform=score),
        "pixel_auroc": PixelAUROC(output_transform=pixels),
        "pixel_aupro": PixelAUPRO(output_transform=pixels),
        "image_sensitivity": ImageSensitivity(output_transform=decisions),
        "image_specificity": ImageSpecificity(output_transform=decisions),
    }
    if not branch:
        return metrics
    metrics["pixel_dice"] = PixelDice(output_transform=from_engine([f"{prefix}mask", "label"]))
    metrics["image_accuracy"] = ImageAccuracy(output_transform=decisions)
    return {f"{branch}/{name}": metric for name, metric in metrics.items()}


class MetricSet(NamedTuple):
    """An evaluator's metrics as MONAI takes them: the key metric and the others."""

    key: dict[str, Metric]
    additional: dict[str, Metric]


def evaluation_metrics(branches: Sequence[str] | None = None) -> MetricSet:
    """What evaluate.json reports: the model's branch (``branch_metrics()``, `KEY_METRIC` the key metric) and,
    for a model with several branches, every one of them side by side (``branch_metrics(branch)``)."""
    metrics = branch_metrics()
    for branch in branches or ():
        metrics.update(branch_metrics(branch))
    key = {KEY_METRIC: metrics.pop(KEY_METRIC)}
    return MetricSet(key, metrics)

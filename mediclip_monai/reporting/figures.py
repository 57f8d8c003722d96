"""The evaluation's figures: the image-level ROC curve (roc.png) and the review montage (montage.png).

Drawn on bare matplotlib Figures with the Agg canvas (no pyplot state, no display) and saved atomically.
Every text is a rounded number or a short phrase, and everything drawn stays inside the figure: the
``*_figure`` functions return the Figure so that tests can check both.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from monai.utils import convert_to_numpy
from sklearn.metrics import roc_auc_score, roc_curve

from ..io.atomic import atomic_write

__all__ = ["TRUTH_COLOUR", "montage_figure", "overlay_montage", "plot_roc", "roc_figure"]

TRUTH_COLOUR = "lime"
THRESHOLD_COLOUR = "white"
PANEL_INCHES = 3.2


def _new_figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _save_png(figure, path: str | os.PathLike) -> Path:
    path = Path(path)
    with atomic_write(path) as tmp:
        figure.savefig(tmp, format="png")
    return path


def roc_figure(labels, scores, title: str = "Image-level ROC"):
    """The ROC curve of ``scores`` against binary ``labels``, the AUROC (3 decimals) in the legend.

    With a single class present the curve is undefined; the figure then says so instead of failing.
    """
    labels = convert_to_numpy(labels, wrap_sequence=True).reshape(-1) > 0
    scores = convert_to_numpy(scores, wrap_sequence=True).reshape(-1).astype(np.float64)
    figure = _new_figure(5, 5)
    axes = figure.add_subplot(1, 1, 1)
    axes.plot([0, 1], [0, 1], linestyle="--", color="0.6", linewidth=1, label="chance")
    if labels.any() and not labels.all():
        fpr, tpr, _ = roc_curve(labels, scores)
        axes.plot(fpr, tpr, color="C0", linewidth=2, label=f"AUROC {roc_auc_score(labels, scores):.3f}")
    else:
        axes.text(0.5, 0.5, "undefined: one class only", ha="center", va="center")
    axes.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="false positive rate", ylabel="true positive rate")
    axes.set_title(title, wrap=True)
    axes.set_aspect("equal")
    axes.legend(loc="lower right")
    return figure


def plot_roc(path: str | os.PathLike, labels, scores, title: str = "Image-level ROC") -> Path:
    """Save `roc_figure` as a PNG."""
    return _save_png(roc_figure(labels, scores, title), path)


def _montage_slices(case: Mapping) -> list[Mapping]:
    """The slices shown for a case: its ``slices``, or the one ``image``/``anomaly_map``/``label`` it gives."""
    if case.get("slices"):
        return list(case["slices"])
    return [{key: case.get(key) for key in ("image", "anomaly_map", "label", "title")}]


def _heading(case: Mapping) -> str:
    parts = [f"{case['name']}: score {float(case['score']):.3f}"]
    if case.get("decision"):
        parts.append(f"decision {case['decision']}")
    if case.get("truth") is not None:
        parts.append(f"truth {'abnormal' if case['truth'] else 'normal'}")
    return ", ".join(parts)


def montage_figure(cases: Sequence[Mapping], threshold: float | None = None, branch: str | None = None):
    """The review montage: one row per case, headed by its name, score, decision and truth; two panels per
    shown slice, the image and the anomaly map over it on its 0..1 scale (colour bar). The legend says
    what the lines are: the truth outlined in green on both panels, the mask threshold's contour in white.

    Args:
        cases: dicts with ``name``, ``score``, optional ``decision`` (``"abnormal"``/``"normal"``), optional
            ``truth`` (1 abnormal, 0 normal), and ``slices``: a list of dicts with ``image`` (H x W in
            [0, 1]), ``anomaly_map`` (H x W in [0, 1]), ``label`` (H x W binary truth, or None when no mask
            was given) and ``title`` (which slice it is; empty for a 2D image); a case may give one slice's
            ``image``, ``anomaly_map`` and ``label`` directly instead.
        threshold: the mask threshold whose contour is drawn (none when None).
        branch: the anomaly branch whose map is shown (named in the panels).
    """
    if not cases:
        raise ValueError("a montage needs at least one case")
    from matplotlib.lines import Line2D

    columns = 2 * max(len(_montage_slices(case)) for case in cases)
    figure = _new_figure(PANEL_INCHES * max(columns, 3), PANEL_INCHES * len(cases) + 0.5)
    map_name = f"{branch} map" if branch else "anomaly map"
    handles = [Line2D([], [], color=TRUTH_COLOUR, label="truth (given mask)")]
    if threshold is not None:
        handles.append(Line2D([], [], color=THRESHOLD_COLOUR, label=f"mask threshold {threshold:.3g}"))
    legend = figure.legend(handles=handles, loc="outside upper center", ncols=len(handles), facecolor="0.25")
    for text in legend.get_texts():
        text.set_color("white")
    rows = figure.subfigures(len(cases), 1, squeeze=False)[:, 0]
    for row, case in zip(rows, cases):
        row.suptitle(_heading(case), x=0.01, ha="left", fontsize=10, wrap=True)
        panels = row.subplots(1, columns, squeeze=False)[0]
        for axes in panels:
            axes.set_axis_off()
        for index, shown in enumerate(_montage_slices(case)):
            image = np.squeeze(convert_to_numpy(shown["image"], wrap_sequence=True))
            anomaly_map = np.squeeze(convert_to_numpy(shown["anomaly_map"], wrap_sequence=True))
            label = shown.get("label")
            label = None if label is None else np.squeeze(convert_to_numpy(label, wrap_sequence=True)) > 0
            image_axes, map_axes = panels[2 * index], panels[2 * index + 1]
            for axes in (image_axes, map_axes):
                axes.imshow(image, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
                if label is not None and label.any():
                    axes.contour(label.astype(float), levels=[0.5], colors=TRUTH_COLOUR, linewidths=1)
            drawn = map_axes.imshow(anomaly_map, cmap="jet", alpha=0.5, vmin=0, vmax=1, interpolation="bilinear")
            if threshold is not None and anomaly_map.min() < threshold <= anomaly_map.max():
                map_axes.contour(anomaly_map, levels=[threshold], colors=THRESHOLD_COLOUR, linewidths=1)
            row.colorbar(drawn, ax=map_axes, fraction=0.046, pad=0.02)
            where = shown.get("title") or "image"
            image_axes.set_title(where if label is not None else f"{where}, no mask given", fontsize=9)
            map_axes.set_title(map_name, fontsize=9)
    return figure


def overlay_montage(
    path: str | os.PathLike, cases: Sequence[Mapping], threshold: float | None = None, branch: str | None = None
) -> Path:
    """Save `montage_figure` as a PNG."""
    return _save_png(montage_figure(cases, threshold, branch), path)

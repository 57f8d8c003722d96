"""The evaluation report (bundle/configs/evaluate.json): metrics.json, cases.csv, roc.png and montage.png,
from what ``handlers.EvaluationReport`` collects during the evaluator's run.

Protocol (MediCLIP, arXiv 2405.11315): every case is put on the model grid (``transforms.ModelGridd``:
every axial slice at the network's input size, 224 x 224 for ViT-L-14, images bilinear, masks nearest and
binarised at 0.5), the anomaly maps are computed there, and pixel metrics pool every slice of every test
case (normal images count as all-normal masks; abnormal images without a mask count in the image metrics
only). AUPRO integrates up to 30% false-positive rate. The image score is the model's rule (the map's
maximum for an uncalibrated model, as the paper; see ``decisions``) on the map brought back onto the case's
own grid, the map inference writes: a case has one score, in inference's scores.csv and here.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from collections.abc import Mapping, Sequence

import numpy as np
from monai.utils import convert_to_numpy

from ..decisions import BranchDecisions, Decisions
from ..io.atomic import atomic_write
from .figures import overlay_montage, plot_roc

__all__ = ["MONTAGE_CASES", "case_panels", "case_record", "write_report"]

logger = logging.getLogger(__name__)

# Rows of the montage: the highest- and the lowest-scoring cases.
MONTAGE_CASES = 4
PROTOCOL = (
    "maps at the network's input size on every axial slice; image score = the model's rule (map maximum "
    "when uncalibrated) on the map resampled to the case's own grid, as inference writes it; masks resized "
    "nearest, >= 0.5 anomalous; pixel metrics pooled over all slices; AUPRO up to 30% FPR"
)


def case_record(case: Mapping) -> dict:
    """The per-case row of cases.csv from a postprocessed case: name, score, slice of the score, the model's
    decision, the truth (1 abnormal, 0 normal) and whether the datalist gave a mask."""
    return {
        "name": str(case["name"]),
        "score": float(case["score"]),
        "max_slice": case.get("max_slice"),
        "decision": case["decision"],
        "truth": int(case["image_truth"]),
        "has_mask": int(case["has_mask"]),
    }


def case_panels(case: Mapping) -> list[dict]:
    """The slices a reviewer should see of a case on the model grid (``image``, ``pred``, ``label``).

    A volume shows the slice with the most truth (when its mask has any) beside the slice holding the
    image score; a 2D image shows itself.
    """
    image, anomaly_map, label = (case.get(key) for key in ("image", "pred", "label"))
    image, anomaly_map = convert_to_numpy(image, np.float32)[0], convert_to_numpy(anomaly_map, np.float32)[0]
    label = None if label is None else convert_to_numpy(label)[0] > 0
    if image.ndim == 2:
        return [{"image": image, "anomaly_map": anomaly_map, "label": label, "title": ""}]
    shown = []
    if label is not None and label.any():
        shown.append((int(label.sum(axis=(0, 1)).argmax()), "most truth"))
    max_slice = int(case["max_slice"])
    if not shown or shown[0][0] != max_slice:
        shown.append((max_slice, "of the score"))
    return [
        {
            "image": image[..., k],
            "anomaly_map": anomaly_map[..., k],
            "label": None if label is None else label[..., k],
            "title": f"slice {k} ({what})",
        }
        for k, what in shown
    ]


def _json_number(value):
    return None if isinstance(value, float) and np.isnan(value) else value


def _calibration_summary(calibration: Mapping) -> dict:
    """What the calibration set chose and its figures there: the validation side of metrics.json."""
    summary = {"default_branch": calibration.get("default_branch")}
    summary.update({entry: calibration[entry] for entry in ("choice", "calibration_set") if entry in calibration})
    level = calibration.get("image_level")
    if level:
        keys = ("map_branch", "weights", "slice_fraction", "threshold", "calibration_auroc", "signal_auroc")
        summary["image_level"] = {key: level[key] for key in keys if key in level}
    return summary


def write_report(
    output_dir: str,
    records: Sequence[Mapping],
    metrics: Mapping[str, float],
    montage_cases: Sequence[Mapping],
    decisions: BranchDecisions,
    model_decisions: Decisions | None = None,
) -> dict:
    """Write metrics.json, cases.csv, roc.png and montage.png of an evaluation into ``output_dir``.

    Args:
        records: one ``case_record`` per case.
        metrics: the evaluator's metrics (``engine.state.metrics``), NaN where undefined; names
            ``<branch>/<metric>`` (``branch_metrics``) go into metrics.json's ``branches``.
        montage_cases: the cases to show, each ``{"name", "score", "decision", "slices": case_panels(...)}``.
        decisions: the run's decisions on the map evaluated: its branch (the top-level metrics'), mask threshold
            (drawn in the montage) and image threshold, all recorded in metrics.json.
        model_decisions: the model's decisions; each branch's fitted thresholds are recorded beside its metrics,
            and what its calibration chose, with its figures there, under ``calibration``.

    Returns:
        the content of metrics.json.
    """
    os.makedirs(output_dir, exist_ok=True)
    labels = np.array([r["truth"] for r in records])
    scores = np.array([r["score"] for r in records])
    overall = {name: value for name, value in metrics.items() if "/" not in name}
    branches: dict[str, dict] = {}
    for name, value in metrics.items():
        if "/" in name:
            branch, metric = name.split("/", 1)
            branches.setdefault(branch, {})[metric] = _json_number(float(value))
    model_decisions = model_decisions or Decisions()
    for branch, values in branches.items():
        values.update(model_decisions.fitted_thresholds(branch))
    calibration = model_decisions.calibration
    report = {
        "n_cases": len(records),
        "n_abnormal": int(labels.sum()),
        "anomaly_branch": decisions.branch,
        "image_score": "image_level" if decisions.image_level is not None else "map",
        **{name: _json_number(float(value)) for name, value in overall.items()},
        "threshold": decisions.threshold,
        "image_threshold": decisions.image_threshold,
        **({"branches": branches} if branches else {}),
        **({"calibration": _calibration_summary(calibration)} if calibration else {}),
        "protocol": PROTOCOL,
    }
    with atomic_write(os.path.join(output_dir, "metrics.json")) as tmp, open(tmp, "w") as f:
        json.dump(report, f, indent=2)
    with atomic_write(os.path.join(output_dir, "cases.csv")) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["name", "score", "max_slice", "decision", "truth", "has_mask"])
        for r in records:
            max_slice = "" if r["max_slice"] is None else r["max_slice"]
            truth = "abnormal" if r["truth"] else "normal"
            writer.writerow([r["name"], repr(r["score"]), max_slice, r["decision"], truth, r["has_mask"]])
    scored_on = "image-level score" if decisions.image_level is not None else f"{decisions.branch} map"
    title = f"Image-level ROC, {scored_on}, {len(records)} cases"
    plot_roc(os.path.join(output_dir, "roc.png"), labels, scores, title=title)
    if montage_cases:
        overlay_montage(os.path.join(output_dir, "montage.png"), montage_cases, decisions.threshold, decisions.branch)
    logger.info(f"evaluation of {len(records)} case(s) in {output_dir}: {json.dumps(report)}")
    return report

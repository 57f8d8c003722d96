#!/usr/bin/env python
"""The few-shot protocol over seeds: train and evaluate once per seed, print mean +/- std per branch and for the
model's default (its chosen branch with its image-level score), validation beside test.

    python scripts/few_shot_seeds.py --seeds 0 1 2 3 4 --output_dir bundle/runs/seeds [train.json overrides]

Which k shots are drawn changes with the seed (``mediclip_monai.data.datalists.sample_k_shot``), and
few-shot results depend on it, so one run proves little. Each seed runs the bundle's own recipes, as
``python -m monai.bundle run training --config_file bundle/configs/train.json --seed S ...`` and then the
evaluation (``['inference.json','evaluate.json']``) would, into ``<output_dir>/seed_<S>/`` (model.pt under
``models/``, metrics.json under ``eval/``). Every other ``--key value`` is passed to both recipes as it is
(values read as Python literals where they are ones: ``--epochs 50``, ``--feature_layers [12,18,24]``).
The table gives, per row and metric, the mean and standard deviation over the seeds: a row per anomaly branch
(metrics.json's ``branches``: each map with its own image score, at its calibrated thresholds) and the row
``default``, what the model decides with (the branch the calibration set chose, whichever it was in a seed, and
the image-level score; for a model without branches, its own map alone). The ``val_`` columns are the figures of
the calibration set (held-out normals with anomalies of kinds training never makes, the set the choices were
made on); the others are the test set's. ``seeds.json`` in ``output_dir`` holds every seed's metrics, the
summary and each seed's choice.
"""

import argparse
import ast
import json
import logging
import os
import sys
from pathlib import Path

import numpy as np

from mediclip_monai.io.atomic import atomic_write
from mediclip_monai.workflows.bundle import config_files

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "bundle" / "configs"
METRICS = (
    "val_pixel_auroc",
    "val_image_auroc",
    "image_auroc",
    "pixel_auroc",
    "pixel_aupro",
    "image_sensitivity",
    "image_specificity",
    "image_max_f1",
    "pixel_dice",
    "image_accuracy",
)
# The columns of the printed table (every metric is in seeds.json).
TABLE_METRICS = METRICS[:7]
DEFAULT_ROW = "default"


def literal(value: str):
    """``"50"`` -> 50, ``"[12,18,24]"`` -> [12, 18, 24], ``"cpu"`` -> "cpu"."""
    try:
        return ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return value


def overrides_from(extra: list[str]) -> dict:
    """``["--epochs", "50", "--device", "cpu"]`` -> ``{"epochs": 50, "device": "cpu"}``."""
    if len(extra) % 2 or any(not key.startswith("--") for key in extra[::2]):
        raise SystemExit(f"overrides must be --key value pairs, got {' '.join(extra)}")
    return {key[2:]: literal(value) for key, value in zip(extra[::2], extra[1::2])}


def run_recipe(config_file, run_id: str, workflow_type: str, **overrides) -> None:
    from monai.bundle import ConfigWorkflow

    workflow = ConfigWorkflow(
        config_file=config_file,
        meta_file=str(CONFIGS / "metadata.json"),
        logging_file=str(CONFIGS / "logging.conf"),
        run_id=run_id,
        workflow_type=workflow_type,
        **overrides,
    )
    workflow.initialize()
    try:
        workflow.run()
    finally:
        workflow.finalize()


def run_seed(seed: int, output_dir: Path, overrides: dict) -> dict:
    """Train and evaluate with ``seed``; returns its metrics.json."""
    folder = output_dir / f"seed_{seed}"
    values = {**overrides, "seed": seed, "ckpt_dir": str(folder / "models"), "output_dir": str(folder)}
    values.setdefault("bundle_root", str(REPO / "bundle"))
    run_recipe(config_files("train.json", CONFIGS.parent), "training", "train", **values)
    evaluation = config_files("evaluate.json", CONFIGS.parent)
    run_recipe(evaluation, "evaluating", "eval", **values)
    return json.loads((folder / "eval" / "metrics.json").read_text())


def branch_metrics(report: dict) -> dict:
    """{row: {metric: value}} of one metrics.json: each branch, with its calibration-set figures as ``val_``
    metrics, and the ``default`` row (its own branch alone when it reports no branches)."""
    own = {m: report[m] for m in METRICS if m in report}
    if not report.get("branches"):
        return {report.get("anomaly_branch") or "mediclip": own}
    choice = report.get("calibration", {}).get("choice", {})
    validation = {metric: choice.get(metric, {}) for metric in ("pixel_auroc", "image_auroc")}
    rows = {}
    for branch, values in report["branches"].items():
        rows[branch] = {**values, **{f"val_{m}": v[branch] for m, v in validation.items() if branch in v}}
    default = report.get("anomaly_branch")
    image_source = "image_level" if report.get("image_score") == "image_level" else default
    own["val_pixel_auroc"] = validation["pixel_auroc"].get(default)
    own["val_image_auroc"] = validation["image_auroc"].get(image_source)
    rows[DEFAULT_ROW] = {m: v for m, v in own.items() if v is not None}
    return rows


def choices(reports: dict[int, dict]) -> dict[int, str]:
    """Per seed, what its calibration chose: the default branch and the memory bank's fusion weight."""
    out = {}
    for seed, report in reports.items():
        calibration = report.get("calibration", {})
        weight = calibration.get("choice", {}).get("memory_bank_weight", {}).get("chosen")
        out[seed] = f"{report.get('anomaly_branch')}" + ("" if weight is None else f" (memory bank weight {weight:g})")
    return out


def summarise(reports: dict[int, dict]) -> dict:
    """{branch: {metric: {"mean", "std", "values"}}} over the seeds (NaN and missing values left out)."""
    summary: dict = {}
    for report in reports.values():
        for branch, values in branch_metrics(report).items():
            for metric in METRICS:
                value = values.get(metric)
                if value is not None and not np.isnan(value):
                    summary.setdefault(branch, {}).setdefault(metric, []).append(float(value))
    return {
        branch: {m: {"mean": float(np.mean(v)), "std": float(np.std(v)), "values": v} for m, v in metrics.items()}
        for branch, metrics in summary.items()
    }


def table(summary: dict, n_seeds: int) -> str:
    metrics = [m for m in TABLE_METRICS if any(m in values for values in summary.values())]
    lines = [f"mean +/- std over {n_seeds} seed(s)", f"{'branch':12s} " + " ".join(f"{m:>17s}" for m in metrics)]
    for branch, values in summary.items():
        cells = [
            f"{values[m]['mean']:.3f} +/- {values[m]['std']:.3f}".rjust(17) if m in values else " " * 17
            for m in metrics
        ]
        lines.append(f"{branch:12s} " + " ".join(cells))
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4], help="default 0 1 2 3 4")
    parser.add_argument("--output_dir", type=Path, default=REPO / "bundle" / "runs" / "seeds")
    args, extra = parser.parse_known_args(argv)
    overrides = overrides_from(extra)
    logging.basicConfig(level=logging.INFO)
    reports = {seed: run_seed(seed, args.output_dir, overrides) for seed in args.seeds}
    summary = summarise(reports)
    chosen = choices(reports)
    result = {"seeds": args.seeds, "overrides": overrides, "metrics": reports, "summary": summary, "choices": chosen}
    with atomic_write(args.output_dir / "seeds.json") as tmp:
        tmp.write_text(json.dumps(result, indent=2))
    print(table(summary, len(args.seeds)))
    print("default per seed: " + "; ".join(f"seed {seed}: {choice}" for seed, choice in chosen.items()))
    print(f"every seed's metrics: {os.path.join(args.output_dir, 'seeds.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

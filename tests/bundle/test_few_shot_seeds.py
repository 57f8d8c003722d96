"""scripts/few_shot_seeds.py: the few-shot protocol over seeds, mean +/- std per branch."""

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "few_shot_seeds.py"
sys.path.insert(0, str(REPO / "scripts"))

import few_shot_seeds  # noqa: E402


def test_summary_is_mean_and_std_per_branch_over_seeds():
    reports = {
        0: {"branches": {"fused": {"pixel_auroc": 0.8, "image_auroc": 0.6}, "mediclip": {"pixel_auroc": 0.7}}},
        1: {"branches": {"fused": {"pixel_auroc": 0.6, "image_auroc": float("nan")}, "mediclip": {"pixel_auroc": 0.5}}},
    }
    summary = few_shot_seeds.summarise(reports)
    assert summary["fused"]["pixel_auroc"]["mean"] == pytest.approx(0.7)
    assert summary["fused"]["pixel_auroc"]["std"] == pytest.approx(0.1)
    assert summary["fused"]["image_auroc"]["values"] == [0.6]  # an undefined (NaN) value is left out
    assert summary["mediclip"]["pixel_auroc"]["mean"] == pytest.approx(0.6)
    # a report of an uncalibrated model: its own branch only
    assert few_shot_seeds.branch_metrics({"pixel_auroc": 0.9, "anomaly_branch": None}) == {
        "mediclip": {"pixel_auroc": 0.9}
    }
    assert "0.700 +/- 0.100" in few_shot_seeds.table(summary, 2)
    # a calibrated model: each branch with its calibration-set figures beside, and the row of what it decides with
    report = {
        "anomaly_branch": "memory_bank",
        "image_score": "image_level",
        "image_auroc": 0.9,
        "pixel_auroc": 0.8,
        "branches": {"memory_bank": {"image_auroc": 0.85, "pixel_auroc": 0.8}, "fused": {"pixel_auroc": 0.7}},
        "calibration": {
            "choice": {
                "pixel_auroc": {"memory_bank": 0.75, "fused": 0.72},
                "image_auroc": {"memory_bank": 0.6, "fused": 0.58, "image_level": 0.65},
                "memory_bank_weight": {"chosen": 0.5},
            }
        },
    }
    rows = few_shot_seeds.branch_metrics(report)
    validation = {"val_pixel_auroc": 0.75}
    assert rows["memory_bank"] == {"image_auroc": 0.85, "pixel_auroc": 0.8, **validation, "val_image_auroc": 0.6}
    assert rows["default"] == {"image_auroc": 0.9, "pixel_auroc": 0.8, **validation, "val_image_auroc": 0.65}
    assert few_shot_seeds.choices({3: report}) == {3: "memory_bank (memory bank weight 0.5)"}
    assert few_shot_seeds.overrides_from(["--epochs", "3", "--feature_layers", "[2,4,6]", "--device", "cpu"]) == {
        "epochs": 3,
        "feature_layers": [2, 4, 6],
        "device": "cpu",
    }


@pytest.mark.slow
def test_two_seeds_train_evaluate_and_print_every_branch(demo_dir, tmp_path):
    command = [
        sys.executable, str(SCRIPT), "--seeds", "0", "1", "--output_dir", str(tmp_path / "seeds"),
        "--dataset_dir", demo_dir, "--clip_model", "mediclip-tiny", "--clip_pretrained", "none", "--device", "cpu",
        "--num_workers", "0", "--k_shot", "4", "--epochs", "1", "--batch_size", "4",
    ]  # fmt: skip
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    saved = json.loads((tmp_path / "seeds" / "seeds.json").read_text())
    assert saved["seeds"] == [0, 1]
    for seed in (0, 1):
        assert (tmp_path / "seeds" / f"seed_{seed}" / "models" / "model.pt").is_file()
    summary = saved["summary"]
    assert set(summary) == {"mediclip", "memory_bank", "fused", "default"}
    # the default row: the top level of metrics.json (the chosen branch with the image-level score)
    tops = [saved["metrics"][str(s)]["image_auroc"] for s in (0, 1)]
    assert summary["default"]["image_auroc"]["values"] == [v for v in tops if v == v]
    values = summary["fused"]["pixel_auroc"]["values"]
    per_seed = [saved["metrics"][str(s)]["branches"]["fused"]["pixel_auroc"] for s in (0, 1)]
    assert values == per_seed and summary["fused"]["pixel_auroc"]["mean"] == pytest.approx(np.mean(per_seed))
    # the k shots differ between seeds, so do the results
    assert per_seed[0] != per_seed[1]
    assert "mean +/- std over 2 seed(s)" in result.stdout and "fused" in result.stdout

    # the image-level ceiling of these runs: its ``default`` is the evaluation's own image AUROC, and the bounds
    # chosen on the test set can only be higher than what a choice made once, or on the calibration set, gives
    ceiling = subprocess.run(
        [sys.executable, str(REPO / "bench" / "image_level_ceiling.py"), "--runs", str(tmp_path / "seeds"),
         *command[command.index("--dataset_dir"):]],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert ceiling.returncode == 0, ceiling.stdout[-3000:] + ceiling.stderr[-3000:]
    rows = dict(re.findall(r"^  (\S.*?)\s+([\d.]+) \+/- [\d.]+", ceiling.stdout, re.MULTILINE))
    rows = {name: float(value) for name, value in rows.items()}
    assert rows["default"] == pytest.approx(np.mean(tops), abs=1e-3)
    seeds = [float(v) for v in re.findall(r"^seed \d: default ([\d.]+)", ceiling.stdout, re.MULTILINE)]
    assert seeds == pytest.approx(tops, abs=1e-3)
    bounds = [rows[f"best per seed, chosen on test: {what}"] for what in ("a pair", "one score")]
    assert bounds[0] >= bounds[1] >= rows["best fixed, chosen on test: one score"] - 1e-9
    assert bounds[0] >= rows["best fixed, chosen on test: a pair"] >= rows["best fixed, chosen on test: one score"]
    assert bounds[0] >= rows["calibration's pick"]

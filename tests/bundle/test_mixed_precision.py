"""The whole recipe in mixed precision on the CPU (`--amp true`: bfloat16 autocast), as a GPU runs it by default:
training with its bank and calibration, `run calibrate`, inference, evaluation (torchrun: test_training.py).

On the CPU `amp` is off unless asked for (it is slower there), so without these tests no CPU run would meet a
tensor of another dtype: a GPU once failed at the very end of training because tokens computed under autocast
reached the adapters outside it.
"""

import csv
import json
import os

import nibabel as nib
import numpy as np
import pytest
import torch

from mediclip_monai.networks.extra_state import extra_state

from .conftest import EVALUATE, INFERENCE, TRAIN, as_cli_overrides, cli, layered, run_workflow, small_training

pytestmark = pytest.mark.slow


def test_training_calibration_inference_and_evaluation_in_mixed_precision(demo_dir, tmp_path):
    values = small_training(demo_dir, tmp_path, amp=True)
    workflow = run_workflow(TRAIN, **values)
    cache = workflow.parser.get_parsed_content("token_cache")
    assert {t.dtype for key in cache.keys() for t in cache.get(key)} == {torch.bfloat16}  # it ran in bfloat16
    path = tmp_path / "models" / "model.pt"
    trained = torch.load(path, map_location="cpu", weights_only=True)
    assert trained["memory_bank.patches"].numel() > 0 and extra_state(trained)["calibration"] is not None

    # `run calibrate` in mixed precision rebuilds exactly what training stored
    stripped = {key: value for key, value in trained.items() if not key.startswith("memory_bank.")}
    torch.save({**stripped, "_extra_state": {**extra_state(trained), "calibration": None}}, path)
    result = cli(["-m", "monai.bundle", "run", "calibrate", "--config_file", str(TRAIN), *as_cli_overrides(values)])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rebuilt = torch.load(path, map_location="cpu", weights_only=True)
    assert torch.equal(rebuilt["memory_bank.patches"], trained["memory_bank.patches"])
    assert extra_state(rebuilt) == extra_state(trained)

    # inference of a volume (64 slices: forward batches of 4) in bfloat16 and in float32
    volume = os.path.join(demo_dir, "test", "brain_volume.nii.gz")
    maps, scores = {}, {}
    for amp in ("true", "false"):
        out = tmp_path / f"infer_{amp}"
        common = ["--input", volume, "--output_dir", str(out), "--ckpt_dir", str(tmp_path / "models")]
        result = cli(
            [
                "-m",
                "monai.bundle",
                "run",
                "--config_file",
                layered(INFERENCE),
                *common,
                "--device",
                "cpu",
                "--batch_size",
                "4",
                "--num_workers",
                "0",
                "--amp",
                amp,
            ]
        )
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        precision = "bfloat16 autocast" if amp == "true" else "float32"
        assert f"precision on cpu: {precision} (amp {amp})" in result.stdout
        maps[amp] = nib.load(out / "brain_volume" / "brain_volume_anomaly_map.nii.gz").get_fdata()
        scores[amp] = float(next(csv.DictReader((out / "scores.csv").open()))["score"])
    difference = np.abs(maps["true"] - maps["false"])
    assert 0 < difference.max() < 0.1 and difference.mean() < 0.01  # another precision, the same map
    # the image-level score (global signals and the map, from the same bfloat16 pass): the same verdict's score
    assert extra_state(trained)["calibration"]["image_level"] is not None
    assert 0 < scores["true"] < 1 and abs(scores["true"] - scores["false"]) < 0.05

    # evaluation of the demo test set in mixed precision
    result = cli(
        [
            "-m",
            "monai.bundle",
            "run",
            "--config_file",
            layered(INFERENCE, EVALUATE),
            *as_cli_overrides({**values, "amp": "true", "output_dir": str(tmp_path / "eval_run")}),
        ]
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    metrics = json.loads((tmp_path / "eval_run" / "eval" / "metrics.json").read_text())
    assert 0 <= metrics["pixel_auroc"] <= 1 and set(metrics["branches"]) == {"mediclip", "memory_bank", "fused"}

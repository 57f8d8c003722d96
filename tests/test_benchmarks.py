"""The training benchmarks run and print their figures (with the tiny backbone: no figure is checked)."""

import os
import re
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_bench(*args):
    result = subprocess.run(
        [sys.executable, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONPATH": REPO},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_training_step_benchmark_prints_the_split_before_and_after():
    out = run_bench("bench/bench_training_step.py", "--clip_model", "mediclip-tiny", "--steps", "2", "--baseline")
    for label in ("before", "now"):
        line = next(line for line in out.splitlines() if f"mediclip-tiny {label}" in line)
        step, image, text, rest = map(
            float, re.findall(r"([\d.]+) s/step.*tower ([\d.]+).*tower ([\d.]+).*optimizer ([\d.]+)", line)[0]
        )
        assert image > 0 and text > 0 and abs(image + text + rest - step) < 2.5e-3  # printed to 3 decimals
    assert re.search(r"mediclip-tiny: [\d.]+x the step before", out)


@pytest.mark.slow
def test_training_run_benchmark_prints_the_validation_share():
    out = run_bench(
        "bench/bench_training_run.py", "--clip_model", "mediclip-tiny", "--epochs", "2", "--num_workers", "0"
    )
    rounds = re.search(r"validation ([\d.]+) \(rounds ([\d., ]+)\).*validation ([\d.]+)% of the wall", out)
    assert rounds, out
    assert len(rounds.group(2).split(",")) == 2 and 0 < float(rounds.group(3)) < 100

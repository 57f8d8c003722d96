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


@pytest.mark.slow
def test_epoch_benchmark_measures_this_checkout_and_a_revision_in_turns():
    out = run_bench("bench/bench_epoch.py", "--epochs", "3", "--num_workers", "0", "--before", "HEAD", "--rounds", "1")
    for label in ("before (HEAD)", "now"):
        line = next(line for line in out.splitlines() if line.startswith(f"{label}:"))
        epoch, iterations, validation, rest = map(float, re.findall(r"([-\d.]+)", line.split(":", 1)[1])[:4])
        assert epoch > 0 and iterations > 0 and validation > 0 and abs(iterations + validation + rest - epoch) < 2e-3
    assert re.search(r"epoch: [\d.]+x faster", out)


@pytest.mark.slow
def test_gpu_benchmark_prints_every_part_on_the_cpu_too():
    out = run_bench(
        "bench/bench_gpu.py",
        "--clip_model",
        "mediclip-tiny",
        "--device",
        "cpu",
        "--epochs",
        "2",
        "--volumes",
        "2",
        "--steps",
        "1",
        "--num_workers",
        "0",
        "--batch_size",
        "8",
    )
    assert re.search(r"1\. training step, batch 8: float32 [\d.]+ ms, bfloat16 autocast [\d.]+ ms", out), out
    assert len(re.findall(r"2\. inference forward, ms per image, .*batch 64: [\d.]+", out)) == 2
    assert re.search(r"3\. paper's recipe .* 2 epochs \+ bank and calibration: [\d.]+ s", out)
    assert re.search(r"4\. inference, 1 volume\(s\) .* [\d.]+x the bare tower", out)
    assert re.search(r"4\. inference, 2 volume\(s\) .* [\d.]+x the bare tower", out)

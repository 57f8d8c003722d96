"""Fixtures for running the real bundle configs, made small (tiny backbone, few shots, few epochs)."""

import os
import signal
import socket
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIGS = os.path.join(REPO, "bundle", "configs")
TRAIN = os.path.join(CONFIGS, "train.json")
INFERENCE = os.path.join(CONFIGS, "inference.json")
EVALUATE = os.path.join(CONFIGS, "evaluate.json")
MULTI_GPU = os.path.join(CONFIGS, "multi_gpu_train.json")
MULTI_GPU_INFERENCE = os.path.join(CONFIGS, "multi_gpu_inference.json")
MULTI_GPU_EVALUATE = os.path.join(CONFIGS, "multi_gpu_evaluate.json")
META = os.path.join(CONFIGS, "metadata.json")
LOGGING = os.path.join(CONFIGS, "logging.conf")


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory):
    from mediclip_monai.data.demo import ensure_demo_data

    root = tmp_path_factory.mktemp("demo") / "demo"
    ensure_demo_data(str(root))
    return str(root)


@pytest.fixture(scope="session")
def trained(demo_dir, tmp_path_factory):
    """A model.pt trained for one epoch on the demo data with the tiny backbone; its ckpt_dir."""
    root = tmp_path_factory.mktemp("trained")
    run_workflow(TRAIN, **small_training(demo_dir, root, epochs=1))
    return str(root / "models")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def small_training(demo_dir, tmp_path, **overrides):
    """Overrides that make train.json small: tiny random backbone, 4 shots, 2 epochs, CPU, in-process."""
    values = {
        "bundle_root": os.path.join(REPO, "bundle"),
        "dataset_dir": demo_dir,
        "ckpt_dir": str(tmp_path / "models"),
        "output_dir": str(tmp_path / "runs"),
        "clip_model": "mediclip-tiny",
        "clip_pretrained": "none",
        "device": "cpu",
        "num_workers": 0,
        "k_shot": 4,
        "epochs": 2,
        "batch_size": 4,
    }
    values.update(overrides)
    return values


def layers(*config_files):
    """The files of a run, bottom first (train.json, or inference.json and its overlays)."""
    return list(config_files)


def layered(*config_files):
    """``--config_file`` of a command line: the `layers` as the list MONAI's CLI takes."""
    return "[" + ",".join(f"'{path}'" for path in layers(*config_files)) + "]"


def run_workflow(config_file, run_id="training", **overrides):
    """Run a bundle config (a path or a list of overlays) in-process through MONAI's
    ConfigWorkflow: initialize, run, finalize."""
    from monai.bundle import ConfigWorkflow

    files = layers(*(config_file if isinstance(config_file, list) else [config_file]))
    workflow = ConfigWorkflow(config_file=files, meta_file=META, logging_file=LOGGING, run_id=run_id, **overrides)
    workflow.initialize()
    workflow.run()
    workflow.finalize()
    return workflow


def cli(args, timeout=600, env=None, cwd=REPO):
    """Run a command as a user would, from the repository root (or ``cwd``); its whole process group is killed
    on timeout."""
    process = subprocess.Popen(
        [sys.executable, *args] if args[0] == "-m" else args,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
        start_new_session=True,  # torchrun's workers share the group, so none outlives a timeout
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        raise AssertionError(f"timed out after {timeout} s: {args}\n{stdout[-2000:]}\n{stderr[-2000:]}")
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def as_cli_overrides(values):
    return [item for key, value in values.items() for item in (f"--{key}", str(value))]


def root_cause(error: BaseException) -> BaseException:
    """The original exception under MONAI's "Failed to evaluate/instantiate" wrappers."""
    while error.__cause__ is not None:
        error = error.__cause__
    return error

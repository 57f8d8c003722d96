"""The training bundle run as users run it: the documented command, seeding, resume, bad data, DDP."""

import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import nibabel as nib
import numpy as np
import pytest
import torch

from mediclip_monai.data.datalists import DataError
from mediclip_monai.errors import ConfigValueError
from mediclip_monai.handlers.training import latest_checkpoint
from mediclip_monai.networks.extra_state import extra_state

from .conftest import (
    META,
    MULTI_GPU,
    REPO,
    TRAIN,
    as_cli_overrides,
    cli,
    layered,
    layers,
    root_cause,
    run_workflow,
    small_training,
)


def trained_state(ckpt_dir, pattern="resume_checkpoint_*.pt"):
    path = sorted(glob.glob(os.path.join(ckpt_dir, pattern)))[-1]
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for key in a:
        if key != "_extra_state":
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)


@pytest.mark.slow
def test_documented_command_trains_and_writes_model_logs_and_metrics(demo_dir, tmp_path):
    values = small_training(demo_dir, tmp_path)
    result = cli(["-m", "monai.bundle", "run", "training", "--config_file", layered(TRAIN), *as_cli_overrides(values)])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    output = result.stdout + result.stderr
    model = torch.load(tmp_path / "models" / "model.pt", map_location="cpu", weights_only=True)
    assert extra_state(model)["clip_model"] == "mediclip-tiny"
    parts = {k.split(".")[0] for k in model if k != "_extra_state"}
    assert parts == {"adapters", "prompts", "memory_bank", "shot_embeddings"}
    assert model["memory_bank.patches"].shape[1] > 0 and extra_state(model)["calibration"] is not None
    assert model["shot_embeddings.embeddings"].shape[0] > 0
    assert glob.glob(str(tmp_path / "runs" / "tensorboard" / "events.out.tfevents.*"))
    # validation metrics are logged every round
    assert output.count("val_pixel_auroc") >= 2 and "val_image_auroc" in output
    assert "Epoch[2]" in output or "Epoch: 2/2" in output
    # the last word: where model.pt is and the validation figures of its epoch
    last = [line for line in result.stdout.splitlines() if line.strip()][-1]
    assert last.startswith(f"model.pt written to {tmp_path / 'models' / 'model.pt'} (best validation, epoch ")
    assert "val_pixel_auroc 0." in last and "val_image_auroc " in last


def test_verify_net_in_out_with_tiny_backbone():
    result = cli(
        [
            "-m",
            "monai.bundle",
            "verify_net_in_out",
            "network_def",
            "--meta_file",
            META,
            "--config_file",
            layered(TRAIN),
            "--clip_model",
            "mediclip-tiny",
            "--clip_pretrained",
            "none",
            "--device",
            "cpu",
        ],
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "data shape of network is verified with no error" in (result.stdout + result.stderr)


def test_seeded_runs_give_identical_weights_whatever_the_workers_and_other_seeds_differ(demo_dir, tmp_path):
    states = []
    for run, seed, workers in (("a", 0, 0), ("b", 0, 2), ("c", 1, 0)):
        run_workflow(TRAIN, **small_training(demo_dir, tmp_path / run, seed=seed, num_workers=workers))
        states.append(trained_state(str(tmp_path / run / "models")))
    assert_same_weights(states[0], states[1])  # each sample is seeded on its own, not per worker
    assert not torch.equal(states[0]["prompts.context"], states[2]["prompts.context"])


def test_resumed_run_reaches_the_same_weights(demo_dir, tmp_path):
    run_workflow(TRAIN, **small_training(demo_dir, tmp_path / "straight", epochs=4))
    interrupted = small_training(demo_dir, tmp_path / "resumed", epochs=2)
    run_workflow(TRAIN, **interrupted)
    run_workflow(TRAIN, **{**interrupted, "epochs": 4, "resume": True})
    assert os.path.exists(tmp_path / "resumed" / "models" / "resume_checkpoint_epoch=4.pt")
    assert_same_weights(
        trained_state(str(tmp_path / "straight" / "models")), trained_state(str(tmp_path / "resumed" / "models"))
    )


@pytest.mark.slow
def readable(path):
    try:
        torch.load(path, weights_only=True)
    except Exception:
        return False
    return True


def test_run_killed_with_sigkill_and_resumed_keeps_the_best_model(demo_dir, tmp_path):
    """kill -9 after the best epoch, then --resume true: model.pt ends as the uninterrupted run's, from its best
    epoch."""
    epochs = 6
    straight = run_workflow(TRAIN, **small_training(demo_dir, tmp_path / "straight", epochs=epochs))
    best_epoch = straight.parser.get_parsed_content("validate::evaluator").state.best_metric_epoch
    assert best_epoch < epochs, "the best epoch must come before the last one for this test to mean something"

    values = small_training(demo_dir, tmp_path / "killed", epochs=epochs)
    models = tmp_path / "killed" / "models"
    command = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", layered(TRAIN)]
    process = subprocess.Popen(
        command + as_cli_overrides(values),
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 300
    # MONAI writes checkpoints in place (not atomically): one counts once it reads back whole
    while process.poll() is None and not any(
        int(path.rsplit("=", 1)[1].split(".")[0]) >= best_epoch and readable(path)
        for path in glob.glob(str(models / "resume_checkpoint_epoch=*.pt"))
    ):
        assert time.monotonic() < deadline, f"no resume checkpoint of epoch {best_epoch} within 300 s"
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL, "the run ended before it could be killed"
    killed_at = int(latest_checkpoint(str(models)).rsplit("=", 1)[1].split(".")[0])
    # Only a best epoch before the interruption, and worse epochs after it, tell a kept record from a lost one.
    assert best_epoch <= killed_at < epochs, (best_epoch, killed_at)

    result = cli(command + as_cli_overrides({**values, "resume": True}))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert_same_weights(
        torch.load(tmp_path / "straight" / "models" / "model.pt", weights_only=True),
        torch.load(models / "model.pt", weights_only=True),
    )
    assert f"(best validation, epoch {best_epoch}: val_pixel_auroc" in result.stdout
    assert sorted(os.listdir(models)) == ["model.pt", f"resume_checkpoint_epoch={epochs}.pt"]


def test_resume_without_a_checkpoint_or_with_fewer_epochs_says_so(demo_dir, tmp_path):
    with pytest.raises(RuntimeError) as error:
        run_workflow(TRAIN, **small_training(demo_dir, tmp_path, resume=True))
    assert isinstance(root_cause(error.value), ConfigValueError)
    assert f"--resume true: {tmp_path / 'models'} holds no readable resume checkpoint" in str(root_cause(error.value))
    (tmp_path / "models").mkdir(exist_ok=True)
    torch.save({}, tmp_path / "models" / "resume_checkpoint_epoch=3.pt")
    with pytest.raises(RuntimeError) as error:
        run_workflow(TRAIN, **small_training(demo_dir, tmp_path, resume=True, epochs=2))
    assert str(root_cause(error.value)) == (
        f"--epochs 2 with --resume true: the run in {tmp_path / 'models'} has already done 3 epochs "
        "(resume_checkpoint_epoch=3.pt); give --epochs 3 or more"
    )


def write_bad_datalist(tmp_path, demo_dir):
    good = json.load(open(os.path.join(demo_dir, "datalist.json")))["training"][0]["image"]
    shutil.copy(os.path.join(demo_dir, good), tmp_path / "good.nii.gz")
    (tmp_path / "notes.nii.gz").write_text("this is not an image")
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 4, 3), np.float32), np.eye(4)), str(tmp_path / "four_d.nii.gz"))
    datalist = {
        "training": [
            {"image": "good.nii.gz"},
            {"image": "missing.nii.gz"},
            {"image": "notes.nii.gz"},
            {"image": "four_d.nii.gz"},
        ]
    }
    path = tmp_path / "datalist.json"
    path.write_text(json.dumps(datalist))
    return str(path)


def test_bad_data_refused_before_training_with_every_bad_entry_listed(demo_dir, tmp_path):
    datalist = write_bad_datalist(tmp_path, demo_dir)
    ckpt_dir = tmp_path / "models"
    ckpt_dir.mkdir()
    (ckpt_dir / "model.pt").write_bytes(b"previous model")
    with pytest.raises(RuntimeError) as error:
        run_workflow(TRAIN, **small_training(demo_dir, tmp_path, datalist=datalist, k_shot=0))
    cause = root_cause(error.value)
    assert isinstance(cause, DataError)
    message = str(cause)
    assert "missing.nii.gz" in message and "notes.nii.gz" in message and "four_d.nii.gz" in message
    assert "good.nii.gz" not in message
    assert (ckpt_dir / "model.pt").read_bytes() == b"previous model"
    assert os.listdir(ckpt_dir) == ["model.pt"]


def test_k_shot_larger_than_data_and_empty_training_are_refused(demo_dir, tmp_path):
    with pytest.raises(RuntimeError) as error:
        run_workflow(TRAIN, **small_training(demo_dir, tmp_path, k_shot=10_000))
    assert isinstance(root_cause(error.value), DataError)
    assert "10000" in str(root_cause(error.value))
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({"training": []}))
    with pytest.raises(RuntimeError) as error:
        run_workflow(TRAIN, **small_training(demo_dir, tmp_path, datalist=str(empty)))
    assert isinstance(root_cause(error.value), DataError)
    assert "training" in str(root_cause(error.value))
    assert not (tmp_path / "models").exists()


@pytest.mark.slow
def test_torchrun_two_cpu_processes_with_gloo_in_mixed_precision(demo_dir, tmp_path):
    values = small_training(demo_dir, tmp_path, k_shot=8, amp="true")
    result = cli(
        [
            "torchrun",
            "--nproc_per_node",
            "2",
            "--master_port",
            "29533",
            "-m",
            "monai.bundle",
            "run",
            "training",
            "--config_file",
            layered(TRAIN, MULTI_GPU),
            *as_cli_overrides(values),
        ],
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert result.stdout.count("precision on cpu: bfloat16 autocast (amp true)") == 2  # one line per rank
    model = torch.load(tmp_path / "models" / "model.pt", map_location="cpu", weights_only=True)
    assert "prompts.context" in model and extra_state(model)["calibration"] is not None
    assert os.path.exists(tmp_path / "models" / "resume_checkpoint_epoch=2.pt")


@pytest.mark.slow
def test_fine_tuning_improves_validation_pixel_auroc_over_the_untrained_model(demo_dir, tmp_path):
    from monai.bundle import ConfigWorkflow

    from .conftest import LOGGING

    overrides = small_training(demo_dir, tmp_path, k_shot=8, batch_size=8, epochs=40, val_interval=40)
    workflow = ConfigWorkflow(
        config_file=layers(TRAIN), meta_file=META, logging_file=LOGGING, run_id="training", **overrides
    )
    workflow.initialize()
    evaluator = workflow.parser.get_parsed_content("validate::evaluator")
    evaluator.run()
    untrained = evaluator.state.metrics["val_pixel_auroc"]
    workflow.run()
    trained = evaluator.state.metrics["val_pixel_auroc"]
    workflow.finalize()
    assert trained > untrained + 0.05, (untrained, trained)

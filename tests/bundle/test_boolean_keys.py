"""Boolean keys on the command line: MONAI's CLI gives `--resume false` as the string 'false', which Python
calls true. amp, resume and overwrite read it (and true/false, yes/no, on/off, 1/0 in any case) as meant."""

import os

import torch

from .conftest import INFERENCE, TRAIN, as_cli_overrides, cli, layered, small_training


def train_cli(values):
    return cli(["-m", "monai.bundle", "run", "training", "--config_file", layered(TRAIN), *as_cli_overrides(values)])


def test_a_word_that_is_not_a_boolean_is_one_line_naming_the_key(demo_dir, tmp_path):
    result = train_cli(small_training(demo_dir, tmp_path, amp="maybe"))
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert result.stderr.strip().splitlines()[-1] == (
        "error: --amp 'maybe': must be true or false (or null: decide by the device); also yes/no, on/off, 1/0"
    )
    assert not (tmp_path / "models").exists()  # refused before anything ran


def test_false_written_as_a_word_means_false(demo_dir, tmp_path):
    (tmp_path / "models").mkdir()
    torch.save({"not": "a resume checkpoint"}, tmp_path / "models" / "resume_checkpoint_epoch=1.pt")
    result = train_cli(small_training(demo_dir, tmp_path, epochs=1, resume="false", amp="false"))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "resuming from /" not in result.stdout  # a new run, not a resumed one (that logs "resuming from <file>")
    assert "precision on cpu: float32 (amp false)" in result.stdout
    assert os.path.exists(tmp_path / "models" / "model.pt")
    result = train_cli(small_training(demo_dir, tmp_path / "again", epochs=1, amp=False))  # Fire's own boolean
    assert "precision on cpu: float32 (amp False)" in result.stdout, result.stderr[-3000:]


def test_overwrite_0_keeps_finished_cases_and_yes_redoes_them(trained, demo_dir, tmp_path):
    image = os.path.join(demo_dir, "test", "brain_test_000.nii.gz")
    command = [
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        layered(INFERENCE),
        "--input",
        image,
        "--ckpt_dir",
        trained,
    ]
    command += ["--output_dir", str(tmp_path / "out"), "--device", "cpu", "--num_workers", "0"]
    assert cli(command).returncode == 0
    map_file = tmp_path / "out" / "brain_test_000" / "brain_test_000_anomaly_map.nii.gz"
    written = os.stat(map_file).st_mtime_ns
    kept = cli([*command, "--overwrite", "0"])
    assert kept.returncode == 0 and "1 of 1 case(s) already complete" in kept.stdout, kept.stderr[-3000:]
    assert os.stat(map_file).st_mtime_ns == written
    redone = cli([*command, "--overwrite", "Yes"])
    assert redone.returncode == 0 and os.stat(map_file).st_mtime_ns != written

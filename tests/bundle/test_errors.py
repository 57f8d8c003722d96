"""The bundle commands as users run them: on failure the LAST line printed is the reason, not MONAI's wrapper."""

import json
import os
import shutil
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from .conftest import EVALUATE, INFERENCE, TRAIN, as_cli_overrides, cli, layered, small_training


def last_line(text):
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def train_cli(values, env=None):
    return cli(
        ["-m", "monai.bundle", "run", "training", "--config_file", layered(TRAIN), *as_cli_overrides(values)], env=env
    )


def assert_reason_last(result, *, traceback=False):
    """The reason ends stderr: an ``error:`` block (one line, or a heading and one line per problem)."""
    assert result.returncode != 0
    last = last_line(result.stderr)
    assert "error: " in result.stderr and "Failed to" not in last, result.stderr[-3000:]
    assert ("Traceback" in result.stderr) == traceback, result.stderr[-3000:]
    return last


def test_invalid_numbers_are_refused_by_key_before_anything_runs(demo_dir, tmp_path):
    result = train_cli(small_training(demo_dir, tmp_path, epochs=0, batch_size=0))
    assert assert_reason_last(result) == "  --batch_size 0: must be a whole number >= 1 (slices per training step)"
    assert result.stderr.rstrip().splitlines()[-3:-1] == [
        "error: 2 problems with the config values:",
        "  --epochs 0: must be a whole number >= 1 (passes over the training slices)",
    ]
    assert not (tmp_path / "models").exists() and not (tmp_path / "runs").exists()


def test_a_data_error_names_the_file_and_what_would_work(demo_dir, tmp_path):
    nib.save(nib.Nifti1Image(np.random.rand(1, 40, 30).astype(np.float32), np.eye(4)), str(tmp_path / "flat.nii.gz"))
    (tmp_path / "datalist.json").write_text(json.dumps({"training": [{"image": "flat.nii.gz"}]}))
    result = train_cli(small_training(demo_dir, tmp_path, datalist=str(tmp_path / "datalist.json"), k_shot=0))
    last = assert_reason_last(result)
    assert f"{tmp_path / 'flat.nii.gz'}: a volume of shape 1 x 40 x 30 is one voxel thick" in last
    assert last.endswith("or with an affine whose axis 0 runs superior-inferior.")


def test_training_on_empty_or_constant_2d_images_is_refused_as_volumes_are(demo_dir, tmp_path):
    from PIL import Image

    Image.fromarray(np.zeros((40, 30), np.uint8)).save(tmp_path / "black.png")
    nib.save(nib.Nifti1Image(np.full((40, 30), 7.0, np.float32), np.eye(4)), str(tmp_path / "flat.nii.gz"))
    nib.save(nib.Nifti1Image(np.zeros((40, 30, 5), np.float32), np.eye(4)), str(tmp_path / "empty.nii.gz"))
    entries = [{"image": name} for name in ("black.png", "flat.nii.gz", "empty.nii.gz")]
    (tmp_path / "datalist.json").write_text(json.dumps({"training": entries}))
    result = train_cli(small_training(demo_dir, tmp_path, datalist=str(tmp_path / "datalist.json"), k_shot=0))
    assert_reason_last(result)
    heading, *problems = result.stderr.rstrip().splitlines()[-4:]
    assert heading == "error: 3 problems with the training images:"  # shots and held-out images, all at once
    fix = "(empty, constant or nearly black); give normal scans that show the anatomy"
    assert sorted(problems) == [
        f"  {tmp_path / 'black.png'}: the image has less than 5% foreground {fix}",
        f"  {tmp_path / 'empty.nii.gz'}: every slice has less than 5% foreground {fix}",
        f"  {tmp_path / 'flat.nii.gz'}: the image has less than 5% foreground {fix}",
    ]
    assert not (tmp_path / "models" / "model.pt").exists()


def test_a_truncated_clip_checkpoint_is_named_without_torch_advice(demo_dir, tmp_path):
    import torch

    from mediclip_monai.networks.clip_backbone import create_clip_model

    torch.save(create_clip_model("mediclip-tiny", "none").state_dict(), tmp_path / "clip.pt")
    data = (tmp_path / "clip.pt").read_bytes()
    (tmp_path / "clip.pt").write_bytes(data[: len(data) // 3])
    result = train_cli(small_training(demo_dir, tmp_path, clip_checkpoint=str(tmp_path / "clip.pt")))
    last = assert_reason_last(result)
    assert last.startswith(f"error: clip_checkpoint {tmp_path / 'clip.pt'}: the file is truncated or damaged")
    assert "weights_only=False" not in result.stderr


def test_an_unexpected_error_keeps_its_traceback_and_ends_with_the_root_cause(demo_dir, tmp_path):
    result = train_cli(small_training(demo_dir, tmp_path, synthesis_tasks="{'Nope': 1.0}"))
    last = assert_reason_last(result, traceback=True)
    assert last.startswith("error: ValueError: unknown anomaly-synthesis task(s) ['Nope']")


def test_the_traceback_of_a_user_error_is_one_env_var_away(demo_dir, tmp_path):
    values = small_training(demo_dir, tmp_path, datalist=str(tmp_path / "nope.json"))
    result = train_cli(values, env={"MEDICLIP_TRACEBACK": "1"})
    last = assert_reason_last(result, traceback=True)
    # the whole chain, MONAI's wrappers included
    assert "Failed to evaluate" in result.stderr or "Failed to instantiate" in result.stderr
    assert last == f"error: {tmp_path / 'nope.json'}: datalist file not found"


@pytest.mark.parametrize("config", [layered(INFERENCE), layered(INFERENCE, EVALUATE)], ids=["inference", "evaluate"])
def test_inference_and_evaluation_without_a_model_say_train_first(tmp_path, config):
    args = ["--ckpt_dir", str(tmp_path / "models"), "--output_dir", str(tmp_path / "out"), "--device", "cpu"]
    result = cli(["-m", "monai.bundle", "run", "--config_file", config, "--input", str(tmp_path), *args])
    model = tmp_path / "models" / "model.pt"
    assert (
        assert_reason_last(result)
        == f"error: {model}: no trained model here; train first (see README) or set --ckpt_dir."
    )


def inference_cli(ckpt_dir, input_path, output_dir, *more, wrap=()):
    """inference.json from the command line; ``wrap``: a command that runs it (e.g. in a mount namespace)."""
    args = [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        layered(INFERENCE),
        "--input",
        str(input_path),
    ]
    args += ["--output_dir", str(output_dir), "--ckpt_dir", ckpt_dir, "--device", "cpu", "--num_workers", "0", *more]
    return cli([*wrap, *args] if wrap else args, timeout=300)


def image_file(path, shape=(40, 32)):
    nib.save(nib.Nifti1Image(np.random.default_rng(0).random(shape).astype(np.float32), np.eye(4)), str(path))
    return path


@pytest.mark.slow
def test_a_threshold_that_is_not_a_number_is_named_by_its_key(trained, tmp_path):
    source = image_file(tmp_path / "t1.nii.gz")
    result = inference_cli(trained, source, tmp_path / "out", "--threshold", "abc")
    last = assert_reason_last(result)
    assert last == (
        "error: --threshold 'abc': must be an anomaly probability between 0 and 1, or null (the model's calibrated "
        "threshold)"
    )
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_evaluation_lists_each_bad_case_with_its_file_and_the_fix(trained, tmp_path):
    for name in ("a", "b", "c"):
        image_file(tmp_path / f"{name}.nii.gz")
    image_file(tmp_path / "small_mask.nii.gz", (7, 9))
    datalist = {
        "test": [
            {"image": "a.nii.gz", "label": "small_mask.nii.gz", "abnormal": 1},
            {"image": "b.nii.gz", "label": "no_such_mask.nii.gz", "abnormal": 1},
            {"image": "c.nii.gz", "abnormal": 0},
        ]
    }
    (tmp_path / "datalist.json").write_text(json.dumps(datalist))
    args = ["--config_file", layered(INFERENCE, EVALUATE), "--datalist", str(tmp_path / "datalist.json")]
    args += ["--ckpt_dir", trained, "--output_dir", str(tmp_path / "out"), "--device", "cpu", "--num_workers", "0"]
    result = cli(["-m", "monai.bundle", "run", *args], timeout=300)
    assert_reason_last(result)
    assert result.stderr.rstrip().splitlines()[-3:] == [
        "error: 2 of 3 case(s) failed:",
        f"  {tmp_path / 'a.nii.gz'}: {tmp_path / 'small_mask.nii.gz'}: mask shape (7, 9) differs from the image's "
        "(40, 32); give the mask drawn on this image",
        f"  {tmp_path / 'b.nii.gz'}: 'label' {tmp_path / 'no_such_mask.nii.gz'}: file not found (the 'label' of its "
        "datalist entry)",
    ]
    assert "Traceback" not in result.stdout
    assert not (tmp_path / "out" / "eval" / "metrics.json").exists()


def namespace_command(setup, after=""):
    """A command prefix that runs a command in a private mount namespace, between ``setup`` (mount commands)
    and ``after`` (its exit status kept); None where unprivileged namespaces are not available."""
    if shutil.which("unshare") is None or subprocess.run(["unshare", "-rm", "true"]).returncode != 0:
        return None
    return ["unshare", "-rm", "sh", "-c", f'{setup} && "$@"; code=$?; {after or "true"}; exit $code', "sh"]


@pytest.mark.slow
def test_a_read_only_output_folder_is_refused_before_any_case(trained, tmp_path):
    source = image_file(tmp_path / "t1.nii.gz")
    out = tmp_path / "out"
    out.mkdir()
    wrap = namespace_command(f"mount --bind {out} {out} && mount -o remount,ro,bind {out}")
    if wrap is None:
        if os.geteuid() == 0:
            pytest.skip("no mount namespace here, and root writes into any folder")
        out.chmod(0o555)
    result = inference_cli(trained, source, out / "run", wrap=wrap or ())
    reason = "read-only file system" if wrap else "permission denied"
    assert assert_reason_last(result) == (
        f"error: --output_dir {out / 'run'}: cannot write there ({reason}); give a folder you can write to"
        + ("" if wrap else ", or make this one writable")
    )
    assert "inference: [" not in result.stdout + result.stderr  # no case was run


@pytest.mark.slow
def test_a_full_disk_stops_inference_naming_the_folder_and_leaves_no_half_written_case(trained, tmp_path):
    sources = tmp_path / "inputs"
    sources.mkdir()
    for name in ("a", "b", "c"):
        image_file(sources / f"{name}.nii.gz", (64, 64, 12))
    out = tmp_path / "out"
    out.mkdir()
    # A 64 KiB disk: the first case's outputs do not fit. What is left on it is listed after the run.
    wrap = namespace_command(f"mount -t tmpfs -o size=64k tmpfs {out}", after=f"echo left: $(ls -A {out}) >&2")
    if wrap is None:
        pytest.skip("no mount namespace here to make a small disk in")
    result = inference_cli(trained, sources, out, wrap=wrap)
    lines = result.stderr.rstrip().splitlines()
    assert lines[-2] == (
        f"error: --output_dir {out}: cannot write there (no space left on the device while writing case a); free "
        "some space or give a folder on another disk; the cases written before are complete: run the same "
        "command again to go on"
    ), result.stderr[-3000:]
    assert lines[-1].strip() == "left:"  # no staging folder, no half-written case
    assert "Traceback" not in result.stdout + result.stderr
    assert "case b" not in result.stderr  # the run stopped at the first case


@pytest.mark.slow
def test_a_full_disk_at_the_evaluation_report_ends_with_one_line_not_monais_logged_traceback(trained, tmp_path):
    image_file(tmp_path / "a.nii.gz")
    (tmp_path / "datalist.json").write_text(json.dumps({"test": [{"image": "a.nii.gz", "abnormal": 0}]}))
    out = tmp_path / "out"
    out.mkdir()
    wrap = namespace_command(f"mount -t tmpfs -o size=16k tmpfs {out}")
    if wrap is None:
        pytest.skip("no mount namespace here to make a small disk in")
    args = ["-m", "monai.bundle", "run", "--config_file", layered(INFERENCE, EVALUATE)]
    args += ["--datalist", str(tmp_path / "datalist.json"), "--ckpt_dir", trained, "--output_dir", str(out)]
    result = cli([*wrap, sys.executable, *args, "--device", "cpu", "--num_workers", "0"], timeout=300)
    last = assert_reason_last(result)
    assert last.startswith(f"error: {out / 'eval'}: cannot write there (no space left on the device while writing")
    # MONAI's StatsHandler logs an engine's exception with its traceback (to stdout): not for a user error.
    assert "Traceback" not in result.stdout and "Exception:" not in result.stdout

"""The bundle commands as users run them: on failure the LAST line printed is the reason, not MONAI's wrapper."""

import json

import nibabel as nib
import numpy as np
import pytest

from .conftest import EVALUATE, INFERENCE, TRAIN, as_cli_overrides, cli, small_training


def last_line(text):
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def train_cli(values, env=None):
    return cli(["-m", "monai.bundle", "run", "training", "--config_file", TRAIN, *as_cli_overrides(values)], env=env)


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


@pytest.mark.parametrize("config", [INFERENCE, f"['{TRAIN}','{EVALUATE}']"], ids=["inference", "evaluate"])
def test_inference_and_evaluation_without_a_model_end_with_the_reason(tmp_path, config):
    args = ["--ckpt_dir", str(tmp_path / "models"), "--output_dir", str(tmp_path / "out"), "--device", "cpu"]
    result = cli(["-m", "monai.bundle", "run", "--config_file", config, "--input", str(tmp_path), *args])
    last = last_line(result.stderr)
    assert result.returncode != 0
    assert last.startswith("error: ") and "Failed to" not in last, result.stderr[-3000:]
    assert str(tmp_path / "models" / "model.pt") in last

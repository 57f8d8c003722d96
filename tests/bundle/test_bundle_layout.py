"""The configs as layers: the bundle runs from a copy of bundle/ and from any working directory, and the
command lines of the earlier layering name the ones to use now."""

import os
import shutil
import subprocess
import sys

import pytest
from monai.bundle import ConfigParser

from mediclip_monai.errors import ConfigValueError
from mediclip_monai.workflows.bundle import config_files

from .conftest import EVALUATE, INFERENCE, MULTI_GPU_EVALUATE, REPO, TRAIN, cli, layers, root_cause

TINY = ["--clip_model", "mediclip-tiny", "--clip_pretrained", "none", "--device", "cpu", "--num_workers", "0"]


def run_in(cwd, *args):
    """``python -m monai.bundle run ...`` from ``cwd``, with this checkout's package."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "run", *args], cwd=cwd, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, f"{args}\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
    return result


@pytest.mark.slow
def test_a_copy_of_the_bundle_runs_from_another_working_directory_and_keeps_its_files_inside(tmp_path):
    bundle = tmp_path / "copy" / "bundle"
    shutil.copytree(os.path.join(REPO, "bundle", "configs"), bundle / "configs")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    def files(config):
        return "[" + ",".join(f"'{path}'" for path in config_files(config, bundle)) + "]"

    # no path given: the demo data, the model, the runs and the outputs go where the bundle's configs say
    run_in(elsewhere, "training", "--config_file", files("train.json"), "--epochs", "1", "--k_shot", "4", *TINY)
    assert (bundle / "models" / "model.pt").is_file() and (bundle / "data" / "demo" / "datalist.json").is_file()
    demo = str(bundle / "data" / "demo" / "datalist.json")
    run_in(elsewhere, "--config_file", files("inference.json"), "--input", demo, *TINY)
    assert len((bundle / "outputs" / "scores.csv").read_text().splitlines()) == 22  # header and 21 test cases
    run_in(elsewhere, "--config_file", files("evaluate.json"), *TINY)
    assert (bundle / "runs" / "eval" / "metrics.json").is_file()
    assert os.listdir(elsewhere) == []


@pytest.mark.parametrize(
    "given, expected",
    [
        ([EVALUATE], [INFERENCE, EVALUATE]),
        ([TRAIN, EVALUATE], [INFERENCE, EVALUATE]),
        ([TRAIN, EVALUATE, MULTI_GPU_EVALUATE], [INFERENCE, EVALUATE, "multi_gpu_inference.json"]),
    ],
    ids=["evaluate_alone", "evaluate_on_train", "multi_gpu"],
)
def test_the_earlier_command_lines_name_the_ones_to_use(given, expected):
    given = "[" + ",".join(f"'{path}'" for path in given) + "]"
    result = cli(["-m", "monai.bundle", "run", "--config_file", given, "--device", "cpu"])
    last = [line for line in result.stderr.splitlines() if line.strip()][-1]
    assert result.returncode != 0
    named = ",".join(f"'{os.path.join(REPO, 'bundle', 'configs', os.path.basename(path))}'" for path in expected)
    assert last.startswith("error: --config_file: ")
    assert last.endswith(f'use --config_file "[{named}]" with the same overrides')


def test_bundle_root_is_asked_for_when_no_workflow_runs_the_config():
    parser = ConfigParser()
    parser.read_config(layers(TRAIN))
    with pytest.raises(Exception) as error:
        parser.get_parsed_content("bundle_root")
    assert isinstance(root_cause(error.value), ConfigValueError) and "--bundle_root" in str(root_cause(error.value))


IGNORED = "no config of {} has this key; it would be ignored"


@pytest.mark.parametrize(
    "config, run_id, override, expected",
    [
        ([TRAIN], "training", ["--epoch", "1"], f"--epoch: {IGNORED} (did you mean --epochs?)"),
        (
            [TRAIN],
            "calibrate",
            ["--image_size", "336"],
            f"--image_size: {IGNORED} (the input size is the backbone's (--clip_model), from its input contract)",
        ),
        ([INFERENCE], "run", ["--treshold", "0.5"], f"--treshold: {IGNORED} (did you mean --threshold?)"),
        ([INFERENCE, EVALUATE], "run", ["--qqq", "1"], f"--qqq: {IGNORED}"),
    ],
    ids=["misspelt", "retired", "inference", "evaluate"],
)
def test_a_key_no_config_defines_ends_the_run_naming_it(config, run_id, override, expected, tmp_path):
    given = "[" + ",".join(f"'{path}'" for path in config) + "]"
    command = ["-m", "monai.bundle", "run", run_id, "--config_file", given, *override, *TINY]
    result = cli([*command, "--output_dir", str(tmp_path)])
    last = [line for line in result.stderr.splitlines() if line.strip()][-1]
    assert result.returncode != 0
    assert last.startswith("error: ") and last.endswith(expected.format(os.path.dirname(TRAIN))), last
    assert os.listdir(tmp_path) == []  # refused before anything was read or written


def test_a_key_of_ones_own_layered_config_is_read_when_it_is_referred_to(tmp_path):
    # a config of one's own on top of train.json, whose new key another key refers to: not refused as unknown
    # (the run then stops at the next check, the batch size it gave, before any data is read)
    site = tmp_path / "site.json"
    site.write_text('{"site_batch": 0, "batch_size": "@site_batch"}')
    given = f"['{TRAIN}','{site}']"
    result = cli(["-m", "monai.bundle", "run", "training", "--config_file", given, *TINY])
    last = [line for line in result.stderr.splitlines() if line.strip()][-1]
    assert result.returncode != 0 and "--batch_size 0: must be a whole number >= 1" in last, last

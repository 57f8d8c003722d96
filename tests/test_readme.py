"""The README's commands do what the README says: CI runs its test command; its Quick start fails fast offline;
its smoke run, then inference and evaluation of the smoke model, work as written."""

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()


def bash_block_after(heading: str) -> list[str]:
    """The lines of the first ```bash block after the line starting with ``heading``."""
    tail = README[README.index(heading) :]
    block = re.search(r"^```bash\n(.*?)^```", tail, flags=re.S | re.M).group(1)
    return block.strip().splitlines()


def commands_after(heading: str) -> list[str]:
    """The commands of the first ```bash block after ``heading``: continued lines joined, comments dropped."""
    text = "\n".join(bash_block_after(heading)).replace("\\\n", " ")
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def test_ci_runs_exactly_the_readme_test_command():
    (command,) = bash_block_after("Run the test suite")
    printed = subprocess.run(
        ["bash", str(REPO / ".ci" / "run"), "--print-command"], capture_output=True, text=True, check=True
    )
    assert printed.stdout.strip() == command
    assert "setup_monailabel_env.sh" in command and "python -m pytest tests" in command


def test_the_smoke_run_cannot_overwrite_a_real_model():
    train_section = README[README.index("### Train") : README.index("Datalist format")]
    smoke = train_section[train_section.index("mediclip-tiny") - 200 :]
    assert "--ckpt_dir bundle/runs/smoke/models" in smoke


def test_quick_start_without_clip_weights_stops_within_seconds_saying_how_to_get_them(tmp_path):
    install, train = bash_block_after("## Quick start")[0].split(" && ")
    assert install == "pip install -e ."
    # The command as written, run from a copy of the bundle (the demo data it builds lands there), offline:
    # every HTTPS connection goes to a closed loopback port and the caches are empty.
    shutil.copytree(REPO / "bundle" / "configs", tmp_path / "bundle" / "configs")
    closed = "http://127.0.0.1:9"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        "HTTPS_PROXY": closed,
        "https_proxy": closed,
        "HTTP_PROXY": closed,
        "NO_PROXY": "",
        "no_proxy": "",
        "HOME": str(tmp_path / "home"),
        "HF_HOME": str(tmp_path / "hf"),
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
    }
    args = shlex.split(train)
    assert args[:2] == ["python", "-m"]
    start = time.monotonic()
    result = subprocess.run([sys.executable, *args[1:]], cwd=tmp_path, env=env, capture_output=True, text=True)
    elapsed = time.monotonic() - start
    last = [line for line in result.stderr.splitlines() if line.strip()][-1]
    assert result.returncode != 0
    assert last.startswith("error: CLIP weights for model 'ViT-L-14' with pretrained tag 'openai' are not in"), last
    assert "--clip_checkpoint" in last and "download_clip_weights.py" in last
    assert elapsed < 45, f"took {elapsed:.0f} s"


@pytest.mark.slow
def test_the_smoke_run_then_inference_and_evaluation_of_its_model_work_as_written(tmp_path):
    (train,) = [c for c in commands_after("### Train (few-shot fine-tuning)") if "mediclip-tiny" in c]
    infer, evaluate = commands_after("Inference and evaluation read the model from `--ckpt_dir`")
    for command in (infer, evaluate):
        assert "--ckpt_dir bundle/runs/smoke/models" in command and "--clip_model" not in command
    # As written, from a copy of the bundle (the demo data, the runs and the outputs land there).
    shutil.copytree(REPO / "bundle" / "configs", tmp_path / "bundle" / "configs")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    for command in (train, infer, evaluate):
        args = shlex.split(command)
        assert args[:2] == ["python", "-m"]
        result = subprocess.run([sys.executable, *args[1:]], cwd=tmp_path, env=env, capture_output=True, text=True)
        assert result.returncode == 0, f"{command}\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
    smoke = tmp_path / "bundle" / "runs" / "smoke"
    assert (smoke / "models" / "model.pt").is_file()
    assert len((smoke / "outputs" / "scores.csv").read_text().splitlines()) > 1
    assert (smoke / "eval" / "metrics.json").is_file() and (smoke / "eval" / "montage.png").is_file()

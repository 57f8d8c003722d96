"""The MONAI Label app's rules without a running server: the server's ``--conf`` is read like a request (no
value is code, every key known), the launcher refuses to serve other machines without authentication, the
app refuses MONAI Label's plain start_server, the split keeps studies for validation, and the model history
keeps every model and makes one live only by the promotion rule.

Everything runs in the MONAI Label environment (see conftest.py).
"""

from __future__ import annotations

import json
import subprocess

import pytest

from ..bundle.conftest import REPO, free_port
from .conftest import LABEL_PYTHON, label_env, needs_label_env, run_in_label_env

pytestmark = [pytest.mark.slow, needs_label_env]

# Each --conf is given to the app as `monailabel start_server --conf KEY VALUE` would; the error of each.
CONF_ERRORS = """
import json, sys
from monailabel.interfaces.exception import MONAILabelException
from mediclip_monai.label.main import MediCLIPApp
app_dir, studies, confs = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
errors = []
for conf in confs:
    try:
        MediCLIPApp(app_dir=app_dir, studies=studies, conf=conf)
        errors.append(None)
    except MONAILabelException as error:
        errors.append(error.msg)
print("RESULT " + json.dumps(errors))
"""


def test_the_servers_conf_is_read_like_a_request(tmp_path):
    (tmp_path / "studies").mkdir()
    marker = tmp_path / "ran"
    expression = f"$__import__('pathlib').Path({str(marker)!r}).touch()"
    good = {"ckpt_dir": str(tmp_path / "models"), "output_dir": str(tmp_path / "runs"), "device": "cpu"}
    confs = [
        good,
        {**good, "device": expression},
        {**good, "threshold": "@device"},
        {**good, "batch_size": "%train.json#batch_size"},
        {**good, "anomaly_branch": expression},
        {**good, "clip_model": expression},
        {**good, "clip_pretrained": "@clip_model"},
        {**good, "clip_checkpoint": str(tmp_path / "missing.pt")},
        {**good, "output_dir": str(tmp_path / "runs#1")},
        {**good, "epochs": "0"},
        {**good, "treshold": "0.4"},  # a typo
    ]
    errors = run_in_label_env(CONF_ERRORS, f"{REPO}/mediclip_monai/label", tmp_path / "studies", json.dumps(confs))
    assert errors[0] is None
    keys = ["device", "threshold", "batch_size", "anomaly_branch", "clip_model", "clip_pretrained"]
    keys += ["clip_checkpoint", "output_dir", "epochs", "treshold"]
    for key, error in zip(keys, errors[1:]):
        assert error and error.startswith(f"--conf {key}:"), (key, error)
    assert "unknown option" in errors[-1] and "threshold" in errors[-1]
    assert not marker.exists()


def test_serving_other_machines_needs_authentication(tmp_path):
    studies = tmp_path / "studies"
    studies.mkdir()

    def start(*args, **env):
        command = [str(LABEL_PYTHON), "-m", "mediclip_monai.label", "start_server", "--studies", str(studies), *args]
        # --dryrun: everything but serving (it writes MONAI Label's .env into the working folder)
        return subprocess.run(command, capture_output=True, text=True, env=label_env(**env), cwd=tmp_path, timeout=300)

    refused = start("--host", "0.0.0.0", "--dryrun")
    assert refused.returncode != 0
    last = refused.stderr.strip().splitlines()[-1]
    assert last.startswith("error: --host 0.0.0.0:") and "MONAI_LABEL_AUTH_ENABLE=true" in last
    assert start("--host", "0.0.0.0", "--dryrun", MONAI_LABEL_AUTH_ENABLE="true").returncode == 0


def test_monai_labels_plain_start_server_is_refused(tmp_path):
    studies = tmp_path / "studies"
    studies.mkdir()
    command = [str(LABEL_PYTHON), "-m", "monailabel.main", "start_server", "--app", f"{REPO}/mediclip_monai/label"]
    command += ["--studies", str(studies), "--host", "127.0.0.1", "--port", str(free_port())]
    done = subprocess.run(command, capture_output=True, text=True, env=label_env(), cwd=tmp_path, timeout=300)
    assert done.returncode != 0  # the app's startup failed, so the server stopped
    assert "python -m mediclip_monai.label start_server" in done.stdout + done.stderr


# The split of the normal studies and the model history, on real files.
RULES = """
import json, os, sys
from mediclip_monai.label.model_store import HISTORY_SIZE, ModelStore
from mediclip_monai.label.train_task import TrainingRefused, _decision, split_studies

folder = sys.argv[1]
result = {}
try:
    split_studies(["a"], 8, 0)
except TrainingRefused as error:
    result["one_study"] = str(error)
result["three_studies"] = split_studies(["a", "b", "c"], 8, 0)
result["ten_studies"] = split_studies([str(i) for i in range(10)], 4, 1)
result["ten_studies_again"] = split_studies([str(i) for i in range(10)], 4, 1)
result["decisions"] = {
    "first": _decision(0.6, None, None, False, 2),
    "unreadable": _decision(0.6, None, "model.pt: unreadable", False, 2),
    "tie": _decision(0.7, 0.7, None, False, 2),
    "worse": _decision(0.6, 0.7, None, False, 2),
    "worse_asked": _decision(0.6, 0.7, None, True, 2),
}

model = os.path.join(folder, "models", "model.pt")
os.makedirs(os.path.dirname(model))
with open(model, "wb") as f:
    f.write(b"a model placed by hand")
store = ModelStore(model)
kept = []
for i in range(HISTORY_SIZE + 2):
    candidate = os.path.join(folder, f"candidate_{i}.pt")
    with open(candidate, "wb") as f:
        f.write(f"model {i}".encode())
    record = store.keep(candidate, {"validation_pixel_auroc": i / 10})
    if i in (0, HISTORY_SIZE + 1):
        store.make_live(record)
    kept.append(record["file"])
result["live"] = open(model, "rb").read().decode()
result["live_record"] = store.live_record()
result["records"] = store.records()
result["files"] = sorted(f for f in os.listdir(store.folder) if f.endswith(".pt"))
result["history_size"] = HISTORY_SIZE
print("RESULT " + json.dumps(result))
"""


def test_training_keeps_studies_for_validation_and_every_model_in_the_history(tmp_path):
    result = run_in_label_env(RULES, tmp_path)

    # the split: at least one study held out, drawn with the seed
    assert "1 normal study" in result["one_study"] and "at least 2" in result["one_study"]
    shots, held_out, how = result["three_studies"]
    assert len(shots) == 2 and len(held_out) == 1 and set(shots + held_out) == {"a", "b", "c"}
    assert "k_shot 8 asked" in how
    shots, held_out, how = result["ten_studies"]
    assert len(shots) == 4 and len(held_out) == 6 and "asked" not in how
    assert result["ten_studies"] == result["ten_studies_again"]

    # the promotion rule
    decisions = result["decisions"]
    assert [decisions[k][0] for k in ("first", "unreadable", "tie", "worse", "worse_asked")] == [
        True, True, True, False, True
    ]  # fmt: skip
    assert "model.pt: unreadable" in decisions["unreadable"][1]
    assert "not worse than the live model's 0.700 on the same 2 held-out studies" in decisions["tie"][1]
    assert decisions["worse"][1].startswith("not made live") and "promote_if_worse" in decisions["worse"][1]

    # the history: the model placed by hand was kept when the first was made live; the live model's file
    # is never removed; the newest others stay, up to HISTORY_SIZE files
    size = result["history_size"]
    records = result["records"]
    assert result["live"] == f"model {size + 1}"
    assert result["live_record"]["validation_pixel_auroc"] == (size + 1) / 10
    placed = [r for r in records if "source" in r]
    assert len(placed) == 1 and placed[0]["file"] is None  # kept, then the oldest removed
    assert len(result["files"]) == size and sum(1 for r in records if r["file"]) == size
    assert all("removed" in r for r in records if r["file"] is None)

"""End to end: the real MONAI Label server (monailabel 0.8.5) serving the MediCLIP app on loopback.

Started as the README says (scripts/run_monailabel.sh, without network: the train.json backbone, ViT-L-14
with OpenAI weights, cannot be fetched), it is driven with MONAI Label's own client (the calls 3D Slicer's
MONAI Label module makes: info, infer, save_label, train_start/status, download_label), and probed with
requests that carry code. What a clinician relies on:

- nothing a client sends is code: ``$`` expressions, ``@`` references and ``%`` macros in every field of an
  infer or train request are refused with HTTP 4xx naming the field, nothing runs, the server keeps serving;
  a study whose file name is an expression trains like any other;
- a train request is checked when it arrives (a bad option: 422; too few normal studies, a backbone whose
  weights are not here, a training already running: 409, with the reason Slicer shows);
- training uses the live model's backbone (offline), writes the train stats Slicer reads after every epoch,
  and makes its model live only when it is not worse than the live one on the same held-out studies (or
  when asked); every model is kept in the history; a failed training says why in the model's description;
- an answer's segment name carries the decision, the score and the thresholds; the map is a label tag.

The server runs in its own process group, which the fixture kills at the end, so no server or training
process outlives the test.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import time
import urllib.parse
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import requests

from mediclip_monai.networks import read_model_state

from ..bundle.conftest import REPO, free_port
from .conftest import LABEL_PYTHON, label_env, needs_label_env, run_in_label_env

pytestmark = [pytest.mark.slow, needs_label_env]

MODEL = "mediclip_anomaly"
SERVER_START_S = 120
TRAIN_S = 300
REQUEST_S = 120
# A study whose file name is code: its path goes into the training datalist like any other.
EXPRESSION_STUDY = "$__import__('os').system('touch PWNED')"

# An oblique, anisotropic grid with an offset: a label on any other grid would not match it.
STUDY_AFFINE = np.array(
    [
        [1.2 * np.cos(0.2), -1.1 * np.sin(0.2), 0.0, -38.5],
        [1.2 * np.sin(0.2), 1.1 * np.cos(0.2), 0.0, -30.0],
        [0.0, 0.0, 3.0, -12.0],
        [0.0, 0.0, 0.0, 1.0],
    ]
)
STUDY_SHAPE = (48, 40, 5)


def _write_study(path: Path, seed: int) -> None:
    """A small 'body' volume: an ellipsoid of textured tissue in noise (float32 NIfTI)."""
    rng = np.random.default_rng(seed)
    x, y, z = np.meshgrid(*(np.linspace(-1, 1, n) for n in STUDY_SHAPE), indexing="ij")
    body = (x / 0.8) ** 2 + (y / 0.7) ** 2 + (z / 1.6) ** 2 < 1
    image = body * (500 + 120 * np.sin(5 * x + seed) * np.cos(4 * y)) + rng.normal(0, 15, STUDY_SHAPE)
    nib.save(nib.Nifti1Image(image.astype(np.float32), STUDY_AFFINE), str(path))


def _label_file(path: Path, lesion: bool) -> Path:
    label = np.zeros(STUDY_SHAPE, np.uint8)
    if lesion:
        label[20:26, 18:24, 2] = 1
    nib.save(nib.Nifti1Image(label, STUDY_AFFINE), str(path))
    return path


def _digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


class ClientError(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        status, _, response = message.partition("; Response: ")
        self.status = int(status.removeprefix("Status: "))
        self.detail = json.loads(response).get("detail", "") if response.startswith("{") else response


# One call of MONAI Label's own client (in the MONAI Label environment): method and JSON arguments in, result out.
CLIENT_CALL = """
import json, sys
from monailabel.client import MONAILabelClient
from monailabel.client.client import MONAILabelClientException
url, tmpdir, method, args = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
try:
    print("RESULT " + json.dumps({"result": getattr(MONAILabelClient(url, tmpdir=tmpdir), method)(*args)}))
except MONAILabelClientException as error:
    print("RESULT " + json.dumps({"error": error.msg}))
"""


class Server:
    def __init__(self, url: str, process: subprocess.Popen, work: Path) -> None:
        self.url, self.process, self.work = url, process, work
        self.studies, self.models, self.log = work / "studies", work / "models", work / "server.log"
        self.downloads = work / "client"
        self.downloads.mkdir()

    def log_tail(self, n: int = 60) -> str:
        lines = self.log.read_text(errors="replace").splitlines() if self.log.exists() else []
        return "\n".join(lines[-n:])

    def client(self, method: str, *args):
        """``MONAILabelClient(url).<method>(*args)``; raises `ClientError` (HTTP status and detail) on an error."""
        answer = run_in_label_env(CLIENT_CALL, self.url, self.downloads, method, json.dumps(args), timeout=REQUEST_S)
        if "error" in answer:
            raise ClientError(answer["error"])
        return answer["result"]

    def refused(self, method: str, *args) -> ClientError:
        with pytest.raises(ClientError) as refusal:
            self.client(method, *args)
        return refusal.value

    def get(self, path: str, **kwargs):
        return requests.get(self.url + path, timeout=REQUEST_S, **kwargs)

    def post(self, path: str, **kwargs):
        return requests.post(self.url + path, timeout=REQUEST_S, **kwargs)

    def put(self, path: str, **kwargs):
        return requests.put(self.url + path, timeout=REQUEST_S, **kwargs)

    def mark(self, study: str, normal: bool) -> None:
        """Mark a study normal or not the API way (image info)."""
        info = {"info": json.dumps({"normal": normal})}
        assert self.put("/datastore/image/info", params={"image": study}, data=info).status_code == 200

    def train_stats(self) -> dict:
        return self.get("/info/").json()["train_stats"][MODEL]

    def description(self) -> str:
        return self.get("/info/").json()["models"][MODEL]["description"]

    def train(self, **options) -> tuple[dict, list[dict]]:
        """Train with MONAI Label's client and wait for the end (see `wait`)."""
        return self.wait(self.client("train_start", MODEL, options)["id"])

    def wait(self, task_id: str) -> tuple[dict, list[dict]]:
        """Wait for a training to end; the finished task and the train stats seen on /info/ meanwhile (as
        Slicer polls them)."""
        seen = []
        deadline = time.monotonic() + TRAIN_S
        while time.monotonic() < deadline:
            task = next(t for t in self.get("/train/", params={"all": True}).json() if t["id"] == task_id)
            if task["status"] not in ("SUBMITTED", "RUNNING"):
                return task, seen
            seen.append(self.train_stats())
            time.sleep(0.5)
        requests.delete(self.url + "/train/", timeout=REQUEST_S)
        pytest.fail(f"training did not finish in {TRAIN_S} s:\n{self.log_tail()}")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    work = tmp_path_factory.mktemp("monailabel")
    studies = work / "studies"
    studies.mkdir()
    for i in range(4):
        _write_study(studies / f"study_{i}.nii.gz", seed=i)
    _write_study(studies / f"{EXPRESSION_STUDY}.nii.gz", seed=7)
    (studies / "corrupt.nii.gz").write_bytes(b"this is not a NIfTI file")

    port = free_port()
    env = label_env(
        MEDICLIP_LABEL_PYTHON=str(LABEL_PYTHON),
        MEDICLIP_LABEL_PORT=str(port),
        MONAI_LABEL_SESSION_PATH=str(work / "sessions"),
        HF_HUB_OFFLINE="1",  # no network here: say so at once instead of probing the hub
    )
    # The README's command: the backbone a training may use besides the live model's is train.json's.
    command = ["bash", str(Path(REPO) / "scripts" / "run_monailabel.sh"), str(studies), str(Path(REPO) / "bundle")]
    for key, value in {"ckpt_dir": work / "models", "output_dir": work / "runs", "device": "cpu"}.items():
        command += ["--conf", key, str(value)]
    with open(work / "server.log", "w") as log_file:
        process = subprocess.Popen(
            command, stdout=log_file, stderr=subprocess.STDOUT, env=env, cwd=work, start_new_session=True
        )
    srv = Server(f"http://127.0.0.1:{port}", process, work)
    try:
        deadline = time.monotonic() + SERVER_START_S
        while True:
            if process.poll() is not None:
                pytest.fail(f"server exited with {process.returncode}:\n{srv.log_tail()}")
            try:
                if requests.get(srv.url + "/info/", timeout=5).status_code == 200:
                    break
            except requests.RequestException:
                pass  # not listening yet
            if time.monotonic() > deadline:
                pytest.fail(f"server not up after {SERVER_START_S} s:\n{srv.log_tail()}")
            time.sleep(1)
        yield srv
    finally:
        _stop(process)


def _stop(process: subprocess.Popen) -> None:
    """Stop the server's whole process group (server, training task, data loader workers)."""
    for sig, wait_s in ((signal.SIGTERM, 15), (signal.SIGKILL, 10)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait_s)
        except subprocess.TimeoutExpired:
            continue
        try:  # the leader is gone; make sure nothing else of the group is left
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        return


def test_the_clinicians_loop_through_monai_labels_client(server: Server, trained, tmp_path: Path):
    # --- Slicer connects: the model, its segment, its options
    info = server.client("info")
    assert info["models"][MODEL]["labels"] == {"anomaly": 1} and "anomaly" in info["labels"]
    assert info["trainers"][MODEL]["config"]["backbone"] == ["ViT-L-14/openai"]
    # No model, no internet: the README's backbone cannot be trained here, and the answer says what to do.
    refusal = server.refused("train_start", MODEL, {})
    assert refusal.status == 409 and "--conf clip_checkpoint" in refusal.detail
    refusal = server.refused("train_start", MODEL, {"epochs": 0})
    assert refusal.status == 422 and refusal.detail.startswith("epochs:")
    refusal = server.refused("infer", MODEL, "study_3", {})
    assert refusal.status == 409 and "train" in refusal.detail
    assert server.refused("infer", MODEL, "no_such_study", {}).status == 404

    # --- A model trained elsewhere (tiny backbone) becomes the live one: its backbone is offered first.
    server.models.mkdir(exist_ok=True)
    placed = server.models / "model.pt"
    shutil.copyfile(Path(trained) / "model.pt", placed)
    placed_digest = _digest(placed)
    backbones = server.client("info")["trainers"][MODEL]["config"]["backbone"]
    assert backbones == ["mediclip-tiny/none", "ViT-L-14/openai"]
    refusal = server.refused("infer", MODEL, "corrupt", {})
    assert refusal.status == 422 and "corrupt.nii.gz" in refusal.detail

    # --- Marking normal studies. One is not enough: one must be left to check the new model on.
    server.client("save_label", "study_0", str(_label_file(tmp_path / "empty.nii.gz", lesion=False)), "")
    refusal = server.refused("train_start", MODEL, {})
    assert refusal.status == 409 and "1 normal study" in refusal.detail
    server.mark("study_1", normal=True)
    server.mark(EXPRESSION_STUDY, normal=True)
    server.client("save_label", "study_2", str(_label_file(tmp_path / "lesion.nii.gz", lesion=True)), "")

    # --- A training that fails says why where Slicer shows it (the model's description).
    server.mark("corrupt", normal=True)
    task, _ = server.train(epochs=1)
    assert task["status"] == "ERROR"
    assert "FAILED" in server.description() and "corrupt.nii.gz" in server.description()
    assert "corrupt.nii.gz" in server.train_stats()["error"]
    assert _digest(placed) == placed_digest
    server.mark("corrupt", normal=False)

    # --- Train on the live backbone, offline; a second Train while it runs is refused.
    task_id = server.client("train_start", MODEL, {"epochs": 3, "promote_if_worse": True})["id"]
    refusal = server.refused("train_start", MODEL, {})
    assert refusal.status == 409 and "already" in refusal.detail
    task, seen = server.wait(task_id)
    assert task["status"] == "DONE", "\n".join(task.get("details", []))
    assert not (server.work / "PWNED").exists(), "a study's file name ran as code"
    stats = server.train_stats()
    # what Slicer reads: epoch/total_epochs (progress), best_metric (accuracy), total_time (finished)
    assert stats["epoch"] == stats["total_epochs"] == 3 and stats["total_time"] and stats["start_ts"]
    assert [v["epoch"] for v in stats["validation"]] == [1, 2, 3]  # written after every epoch
    assert 0 <= stats["best_metric"] <= 1
    assert all(s.get("total_epochs") == 3 and not s.get("total_time") for s in seen if s.get("epoch", 3) < 3)
    assert stats["options"]["backbone"] == "mediclip-tiny/none"
    assert stats["split"].startswith("3 normal studies: 2 shot(s), 1 held out") and "k_shot 8 asked" in stats["split"]
    assert stats["promoted"] is True
    assert ("not worse" if stats["candidate_metric"] >= stats["live_metric"] else "as asked") in stats["outcome"]
    records = json.loads((server.models / "history" / "history.json").read_text())
    kept_placed = [r for r in records if r["digest"] == placed_digest]
    assert kept_placed and (server.models / "history" / kept_placed[0]["file"]).is_file()
    (first,) = [r for r in records if r.get("run_dir") == stats["run_dir"]]
    assert first["promoted"] and _digest(placed) == first["digest"]

    # --- Auto segmentation: the segment's name carries the decision, the score and the thresholds.
    label_file, params = server.client("infer", MODEL, "study_3", {})
    label, study = nib.load(label_file), nib.load(str(server.studies / "study_3.nii.gz"))
    assert label.shape == study.shape
    np.testing.assert_allclose(label.affine, study.affine, atol=1e-4)
    (name,) = params["label_names"]
    assert params["label_names"][name] == 1
    assert name.startswith(f"anomaly: {params['decision']} (score {params['score']:.3f} ")
    assert f"{params['image_threshold']:.3f}" in name and f"map >= {params['threshold']:.3f}" in name
    assert params["decision"] == ("abnormal" if params["score"] >= params["image_threshold"] else "normal")
    # the map: a label tag of the study that any client downloads, on the study's grid
    anomaly_map = nib.load(server.client("download_label", "study_3", params["anomaly_map_tag"]))
    np.testing.assert_allclose(anomaly_map.affine, study.affine, atol=1e-4)
    first_map = np.asarray(anomaly_map.dataobj, dtype=np.float32)
    np.testing.assert_array_equal(np.asarray(label.dataobj) > 0, first_map >= params["threshold"])
    assert server.get(params["anomaly_map_url"]).content == Path(anomaly_map.get_filename()).read_bytes()
    # another branch for one request; the next one gets the model's own again
    default = read_model_state(str(placed))["_extra_state"]["calibration"]["default_branch"]
    assert params["anomaly_branch"] == default
    other = next(branch for branch in ("mediclip", "memory_bank") if branch != default)
    assert server.client("infer", MODEL, "study_3", {"anomaly_branch": other})[1]["anomaly_branch"] == other
    assert server.client("infer", MODEL, "study_3", {})[1]["anomaly_branch"] == default

    # --- A worse model is kept, not made live: this run is the first run's first epoch (same seed and studies).
    live_bytes = placed.read_bytes()
    task, _ = server.train(epochs=1)
    assert task["status"] == "DONE", "\n".join(task.get("details", []))
    stats = server.train_stats()
    assert stats["candidate_metric"] < stats["live_metric"], "the first run's best epoch was its first: train longer"
    assert stats["promoted"] is False and "not made live" in stats["outcome"]
    assert stats["best_metric"] == stats["live_metric"]  # Slicer's accuracy: the model still live
    assert placed.read_bytes() == live_bytes
    assert "not made live" in server.description()
    assert Path(stats["history_file"]).is_file()

    # --- ... unless asked.
    task, _ = server.train(epochs=1, promote_if_worse=True)
    assert task["status"] == "DONE", "\n".join(task.get("details", []))
    stats = server.train_stats()
    assert stats["promoted"] is True and "as asked" in stats["outcome"]
    assert placed.read_bytes() == Path(stats["history_file"]).read_bytes()
    _, params_after = server.client("infer", MODEL, "study_3", {})
    assert params_after["model_modified"] != params["model_modified"]
    second_map = np.asarray(nib.load(server.client("download_label", "study_3", "anomaly_map")).dataobj, np.float32)
    assert np.abs(second_map - first_map).max() > 1e-4, "inference still uses the old weights"
    assert server.process.poll() is None


def test_no_field_of_an_infer_or_train_request_is_code(server: Server, trained, tmp_path: Path):
    # With a live model on a backbone this server can train: a value that got through would reach the configs.
    if not (server.models / "model.pt").exists():
        server.models.mkdir(exist_ok=True)
        shutil.copyfile(Path(trained) / "model.pt", server.models / "model.pt")
    trainings = len(server.get("/train/", params={"all": True}).json()) if server.get("/train/").ok else 0
    markers = []

    def expressions(field: str, objects: bool = True):
        marker = tmp_path / f"ran_{len(markers)}_{field}"
        markers.append(marker)
        yield f"$__import__('pathlib').Path({str(marker)!r}).touch()"  # Python, for MONAI's config parser
        yield "@train#trainer"  # a reference to another config item
        yield f"%{REPO}/bundle/configs/train.json#training"  # a macro: reads a file
        if objects:
            yield {"_target_": "pathlib.Path.touch", "self": str(marker)}  # an object to build, one level down

    infer, train = f"/infer/{MODEL}", f"/train/{MODEL}"
    options = []  # (option, path, request): the answer must name the option
    for field in ("threshold", "batch_size", "anomaly_branch", "device", "logging", "not_an_option"):
        for value in expressions(field):
            options.append(
                (field, infer, {"params": {"image": "study_0"}, "data": {"params": json.dumps({field: value})}})
            )
    for field in ("epochs", "k_shot", "seed", "device", "backbone", "promote_if_worse", "not_an_option"):
        for value in expressions(field):
            options.append((field, train, {"json": {field: value}}))
            options.append((field, "/train/", {"json": {MODEL: {field: value}}}))
    others = []  # (path, request): the query parameters, the model
    for value in expressions("query", objects=False):
        others.append((infer, {"params": {"image": value}}))
        others.append((infer, {"params": {"session_id": value}}))
        others.append((infer, {"params": {"image": "study_0", "output": value}}))
        others.append(("/train/", {"json": {value: {}}}))
        others.append(("/train/" + urllib.parse.quote(value, safe=""), {"json": {}}))
        others.append((train, {"params": {"run_sync": value}, "json": {}}))

    wrong = []
    for option, path, request in [(None, *other) for other in others] + options:
        response = server.post(path, **request)
        named = option is None or str(_detail(response)).startswith(f"{option}:")
        if not 400 <= response.status_code < 500 or not named:
            wrong.append(f"POST {path} {request}: HTTP {response.status_code} {response.text[:300]}")
    assert not wrong, "\n".join(wrong)
    ran = [str(marker) for marker in markers if marker.exists()]
    assert not ran, f"code sent by a client ran: {ran}"
    assert server.get("/info/").status_code == 200
    started = server.get("/train/", params={"all": True}).json() if server.get("/train/").ok else []
    assert len(started) == trainings, f"a training was started: {started[trainings:]}"
    assert server.process.poll() is None


def _detail(response) -> str:
    try:
        return response.json().get("detail", "")
    except ValueError:  # not JSON: a server error's text
        return response.text

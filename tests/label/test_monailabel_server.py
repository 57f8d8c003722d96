"""End to end: the real MONAI Label server (monailabel 0.8.5) serving the MediCLIP app on loopback.

What a 3D Slicer user relies on: /info/ lists the model and its segment; a study's inference returns
a label on the study's own grid (shape and affine) with the score and the saved anomaly map; marking
studies normal and training makes new weights live for the next inference; a wrong or unreadable
study gets a clear HTTP error and the server keeps serving.

The server runs in its own environment (scripts/setup_monailabel_env.sh): the interpreter is
``$MEDICLIP_LABEL_PYTHON`` (default ``<repo>/.venv-label/bin/python``); the test is skipped only when
it does not exist. It is started through scripts/run_monailabel.sh in its own process group, which the
fixture kills at the end, so no server or training process outlives the test.
"""

from __future__ import annotations

import email.parser
import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import requests

REPO = Path(__file__).resolve().parents[2]
LABEL_PYTHON = Path(os.environ.get("MEDICLIP_LABEL_PYTHON", REPO / ".venv-label" / "bin" / "python"))
MODEL = "mediclip_anomaly"
SERVER_START_S = 120
TRAIN_S = 240
REQUEST_S = 120

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not LABEL_PYTHON.exists(),
        reason=f"MONAI Label environment not found at {LABEL_PYTHON}; make it with scripts/setup_monailabel_env.sh "
        "(or set MEDICLIP_LABEL_PYTHON)",
    ),
]

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


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, url: str, process: subprocess.Popen, log: Path, studies: Path, models: Path) -> None:
        self.url, self.process, self.log, self.studies, self.models = url, process, log, studies, models

    def log_tail(self, n: int = 60) -> str:
        lines = self.log.read_text(errors="replace").splitlines() if self.log.exists() else []
        return "\n".join(lines[-n:])

    def get(self, path: str, **kwargs):
        return requests.get(self.url + path, timeout=REQUEST_S, **kwargs)

    def post(self, path: str, **kwargs):
        return requests.post(self.url + path, timeout=REQUEST_S, **kwargs)

    def put(self, path: str, **kwargs):
        return requests.put(self.url + path, timeout=REQUEST_S, **kwargs)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    work = tmp_path_factory.mktemp("monailabel")
    studies = work / "studies"
    studies.mkdir()
    for i in range(4):
        _write_study(studies / f"study_{i}.nii.gz", seed=i)
    (studies / "corrupt.nii.gz").write_bytes(b"this is not a NIfTI file")

    port = _free_port()
    env = {
        **os.environ,
        "MEDICLIP_LABEL_PYTHON": str(LABEL_PYTHON),
        "MEDICLIP_LABEL_HOST": "127.0.0.1",
        "MEDICLIP_LABEL_PORT": str(port),
        "MONAI_LABEL_SESSION_PATH": str(work / "sessions"),
        "PYTHONPATH": str(REPO),  # the checkout under test, whatever the venv has installed
        "PYTHONUNBUFFERED": "1",
    }
    conf = {
        "ckpt_dir": work / "models",
        "output_dir": work / "runs",
        "clip_model": "mediclip-tiny",
        "clip_pretrained": "none",
        "device": "cpu",
    }  # threshold: the default, the model's calibrated one
    command = ["bash", str(REPO / "scripts" / "run_monailabel.sh"), str(studies), str(REPO / "bundle")]
    for key, value in conf.items():
        command += ["--conf", key, str(value)]
    log = work / "server.log"
    with open(log, "w") as log_file:
        process = subprocess.Popen(
            command,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=work,
            start_new_session=True,
        )
    srv = Server(f"http://127.0.0.1:{port}", process, log, studies, models=work / "models")
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
        # the leader is gone; make sure nothing else of the group is left
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        return


def _multipart(response) -> dict[str, bytes]:
    """Parts of MONAI Label's multipart infer answer (``output=all``): name -> bytes."""
    header = f"Content-Type: {response.headers['content-type']}\r\n\r\n".encode()
    message = email.parser.BytesParser().parsebytes(header + response.content)
    return {
        part.get_param("name", header="content-disposition"): part.get_payload(decode=True)
        for part in message.get_payload()
    }


def _infer(server: Server, study: str, tmp_path: Path) -> tuple[nib.Nifti1Image, dict]:
    response = server.post(f"/infer/{MODEL}", params={"image": study, "output": "all"})
    assert response.status_code == 200, f"{response.status_code} {response.text[:500]}\n{server.log_tail()}"
    parts = _multipart(response)
    params = json.loads(parts["params"])
    label_file = tmp_path / f"{study}_label.nii.gz"
    label_file.write_bytes(parts["image"])
    return nib.load(str(label_file)), params


def _train(server: Server, **params) -> dict:
    """POST /train/ and wait for the task to finish; returns the finished task."""
    response = server.post("/train/", json={MODEL: params})
    assert response.status_code == 200, response.text
    task_id = response.json()[MODEL]["result"]["id"]
    deadline = time.monotonic() + TRAIN_S
    while time.monotonic() < deadline:
        tasks = server.get("/train/", params={"all": True}).json()
        task = next(t for t in tasks if t["id"] == task_id)
        if task["status"] in ("DONE", "ERROR", "STOPPED"):
            assert task["status"] == "DONE", "training failed:\n" + "\n".join(task.get("details", []))
            return task
        time.sleep(2)
    requests.delete(server.url + "/train/", timeout=REQUEST_S)
    pytest.fail(f"training did not finish in {TRAIN_S} s:\n{server.log_tail()}")


def _mark_studies(server: Server, tmp_path: Path) -> None:
    """Two studies normal (Slicer's way: an empty submitted label; the API way: image info), one abnormal."""
    empty = tmp_path / "empty.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros(STUDY_SHAPE, np.uint8), STUDY_AFFINE), str(empty))
    lesion = np.zeros(STUDY_SHAPE, np.uint8)
    lesion[20:26, 18:24, 2] = 1
    lesion_file = tmp_path / "lesion.nii.gz"
    nib.save(nib.Nifti1Image(lesion, STUDY_AFFINE), str(lesion_file))

    with open(empty, "rb") as f:
        assert (
            server.put("/datastore/label", params={"image": "study_0"}, files={"label": f}).status_code == 200
        )
    info = {"info": json.dumps({"normal": True})}
    assert server.put("/datastore/image/info", params={"image": "study_1"}, data=info).status_code == 200
    with open(lesion_file, "rb") as f:
        assert (
            server.put("/datastore/label", params={"image": "study_2"}, files={"label": f}).status_code == 200
        )


def test_slicer_workflow_on_the_real_server(server: Server, tmp_path: Path):
    # The Slicer module's first call: the model and its one segment.
    info = server.get("/info/").json()
    assert MODEL in info["models"] and MODEL in info["trainers"]
    assert info["models"][MODEL]["labels"] == {"anomaly": 1}
    assert "anomaly" in info["labels"]

    # Before any training: a clear error, not a crash.
    response = server.post(f"/infer/{MODEL}", params={"image": "study_3"})
    assert response.status_code == 409 and "train" in response.json()["detail"]

    # Wrong or unreadable study: clear HTTP errors, and the server keeps serving.
    response = server.post(f"/infer/{MODEL}", params={"image": "no_such_study"})
    assert response.status_code == 404 and "no_such_study" in response.json()["detail"]
    response = server.post(f"/infer/{MODEL}", params={"image": "corrupt"})
    assert response.status_code == 422 and "corrupt.nii.gz" in response.json()["detail"]
    assert server.get("/info/").status_code == 200

    # Few-shot training on the studies marked normal makes a model live.
    _mark_studies(server, tmp_path)
    _train(server, epochs=1, k_shot=2, seed=0)
    model_file = server.models / "model.pt"
    assert model_file.is_file()
    stats = server.get("/info/").json()["train_stats"][MODEL]
    assert stats["normal_studies"] == 2  # study_0 (empty label) and study_1 (info); not study_2 (lesion)

    study = nib.load(str(server.studies / "study_3.nii.gz"))
    label, params = _infer(server, "study_3", tmp_path)
    assert label.shape == study.shape
    np.testing.assert_allclose(label.affine, study.affine, atol=1e-4)
    values = np.unique(np.asarray(label.dataobj))
    assert set(values.tolist()) <= {0, 1}
    assert params["label_names"] == {"anomaly": 1}
    assert 0.0 <= params["score"] <= 1.0
    anomaly_map = nib.load(params["anomaly_map"])
    assert anomaly_map.shape == study.shape
    np.testing.assert_allclose(anomaly_map.affine, study.affine, atol=1e-4)
    first_map = np.asarray(anomaly_map.dataobj, dtype=np.float32)
    assert first_map.min() >= 0.0 and first_map.max() <= 1.0
    # the image score by the calibrated model's rule (a mean of its top foreground values), and its decision
    assert params["score"] <= first_map.max() + 1e-6
    assert params["decision"] == ("abnormal" if params["score"] >= params["image_threshold"] else "normal")
    # the mask is the map at the (calibrated) threshold
    np.testing.assert_array_equal(np.asarray(label.dataobj) > 0, first_map >= params["threshold"])
    # the map is kept in the datastore beside the study, downloadable by any client
    response = server.get("/datastore/label", params={"label": "study_3", "tag": params["anomaly_map_tag"]})
    assert response.status_code == 200 and len(response.content) > 0

    # Training again (another seed) replaces the live model; the next inference uses it.
    before = model_file.stat().st_mtime_ns
    _train(server, epochs=1, k_shot=2, seed=1)
    assert model_file.stat().st_mtime_ns != before
    label_2, params_2 = _infer(server, "study_3", tmp_path)
    second_map = np.asarray(nib.load(params_2["anomaly_map"]).dataobj, dtype=np.float32)
    assert label_2.shape == study.shape
    assert np.abs(second_map - first_map).max() > 1e-4, "inference still uses the old weights"
    assert server.process.poll() is None

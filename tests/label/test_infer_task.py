"""The MONAI Label infer task runs inference.json's recipe: the same maps and masks as a batch run, an edit
of the recipe (or the app's override of it) reaches it without a code change, and one request is answered
by one model from start to end, even when training replaces model.pt in the middle of it.

The task runs in the MONAI Label environment (see conftest.py).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from mediclip_monai.networks.extra_state import encode_extra_state, extra_state

from ..bundle.conftest import REPO
from ..bundle.test_inference import brain_like_volume, infer, oblique_affine
from .conftest import needs_label_env, run_in_label_env

pytestmark = [pytest.mark.slow, needs_label_env]

# One process for every run (importing MONAI Label takes seconds): a JSON list of task runs in, results out.
RUN_TASKS = """
import json, sys
from mediclip_monai.label.infer_task import AnomalyInferTask
results = []
for run in json.loads(sys.argv[1]):
    task = AnomalyInferTask(bundle_dir=run["bundle"], model_path=run["model"], device="cpu", overrides=run["overrides"])
    label, result = task({"image": run["study"]})
    result.pop("latencies", None)
    results.append({"label": label, **result})
    if "then_threshold" in run:  # edit inference.json while the task lives, then ask again
        recipe_file = run["bundle"] + "/configs/inference.json"
        with open(recipe_file) as f:
            recipe = json.load(f)
        recipe["threshold"] = run["then_threshold"]
        with open(recipe_file, "w") as f:
            json.dump(recipe, f)
        label, result = task({"image": run["study"]})
        result.pop("latencies", None)
        results.append({"label": label, **result})
print("RESULT " + json.dumps(results))
"""


def run_tasks(*runs) -> list[dict]:
    """Run the label task on each ``(bundle, model, study, overrides[, {"then_threshold": t}])`` in the MONAI Label
    environment; with ``then_threshold``, the same task runs again after inference.json is edited to it."""
    runs = [
        {"bundle": str(b), "model": str(m), "study": str(s), "overrides": o, **(then[0] if then else {})}
        for b, m, s, o, *then in runs
    ]
    return run_in_label_env(RUN_TASKS, json.dumps(runs))


def voxels(path) -> np.ndarray:
    return np.asarray(nib.load(str(path)).dataobj)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    path = tmp_path_factory.mktemp("study") / "oblique.nii.gz"
    nib.save(nib.Nifti1Image(brain_like_volume((20, 24, 10)), oblique_affine()), str(path))
    return path


@pytest.fixture(scope="module")
def edited_bundle(tmp_path_factory):
    """A copy of the bundle whose inference.json says threshold 0.25."""
    bundle = tmp_path_factory.mktemp("edited") / "bundle"
    shutil.copytree(Path(REPO) / "bundle" / "configs", bundle / "configs")
    recipe_file = bundle / "configs" / "inference.json"
    recipe = json.loads(recipe_file.read_text())
    recipe["threshold"] = 0.25
    recipe_file.write_text(json.dumps(recipe))
    return bundle


@pytest.fixture(scope="module")
def label_results(trained, study, edited_bundle):
    model = Path(trained) / "model.pt"
    as_shipped, edited, overridden = run_tasks(
        (Path(REPO) / "bundle", model, study, {}),
        (edited_bundle, model, study, {}),
        (edited_bundle, model, study, {"threshold": "0.75"}),  # --conf threshold 0.75
    )
    return {"as shipped": as_shipped, "edited": edited, "overridden": overridden}


def test_label_task_gives_the_batch_runs_map_and_mask(trained, study, label_results, tmp_path):
    infer(trained, study, tmp_path / "out", num_workers=0)
    case = tmp_path / "out" / "oblique"
    result = label_results["as shipped"]
    np.testing.assert_array_equal(voxels(result["anomaly_map"]), voxels(case / "oblique_anomaly_map.nii.gz"))
    np.testing.assert_array_equal(voxels(result["label"]), voxels(case / "oblique_anomaly_mask.nii.gz"))
    written = json.loads((case / "oblique_case.json").read_text())
    for key in ("score", "max_slice", "threshold", "image_threshold", "decision"):
        assert result[key] == written[key], key


def test_an_edit_of_inference_json_reaches_the_label_task_and_the_app_override_wins(label_results):
    for name, threshold in (("edited", 0.25), ("overridden", 0.75)):
        result = label_results[name]
        assert result["threshold"] == threshold, name
        np.testing.assert_array_equal(voxels(result["label"]) > 0, voxels(result["anomaly_map"]) >= threshold)
    # the three runs differ in their threshold only
    np.testing.assert_array_equal(
        voxels(label_results["edited"]["anomaly_map"]), voxels(label_results["overridden"]["anomaly_map"])
    )


def test_an_edit_of_inference_json_reaches_a_running_task_at_its_next_request(trained, study, tmp_path):
    bundle = tmp_path / "bundle"
    shutil.copytree(Path(REPO) / "bundle" / "configs", bundle / "configs")
    first, second = run_tasks((bundle, Path(trained) / "model.pt", study, {}, {"then_threshold": 0.3}))
    assert first["threshold"] != 0.3 and second["threshold"] == 0.3
    np.testing.assert_array_equal(voxels(second["label"]) > 0, voxels(second["anomaly_map"]) >= 0.3)


# Training publishes another model.pt (os.replace, as it does) right after the map was computed and before the
# thresholds, mask and decision are: the two points where a request used to load the model.
SWAP_MID_REQUEST = """
import json, os, shutil, sys
from monailabel.tasks.infer.basic_infer import CallBackTypes
from mediclip_monai.label.infer_task import AnomalyInferTask
bundle, model, other, study = sys.argv[1:5]
task = AnomalyInferTask(bundle_dir=bundle, model_path=model, device="cpu")

def publish_other_model(data):
    shutil.copyfile(other, model + ".new")
    os.replace(model + ".new", model)
    return data

results = []
for callbacks in ({CallBackTypes.INFERER: publish_other_model}, {}):
    label, result = task({"image": study}, callbacks)
    results.append({"label": label, **{k: v for k, v in result.items() if k != "latencies"}})
print("RESULT " + json.dumps(results))
"""


def test_one_request_uses_one_model_when_training_replaces_it_in_the_middle(trained, study, tmp_path):
    first = tmp_path / "model.pt"
    shutil.copyfile(Path(trained) / "model.pt", first)
    # the other model: the same weights with other calibrated thresholds, so what a request used is visible
    state = torch.load(first, map_location="cpu", weights_only=True)
    identity = extra_state(state)
    calibration = identity["calibration"]
    branch = calibration["default_branch"]
    first_threshold = calibration["pixel_threshold"][branch]
    for name in calibration["pixel_threshold"]:
        calibration["pixel_threshold"][name] = 0.999
        calibration["image_threshold"][name] = 0.001
    calibration["image_level"]["threshold"] = 0.001
    other = tmp_path / "other_model.pt"
    torch.save({**state, "_extra_state": encode_extra_state(identity)}, other)

    during, after = run_in_label_env(SWAP_MID_REQUEST, Path(REPO) / "bundle", first, other, study)

    # the request that was running when model.pt changed: the first model's thresholds, mask and decision
    assert during["threshold"] == pytest.approx(first_threshold) and first_threshold < 0.99
    np.testing.assert_array_equal(voxels(during["label"]) > 0, voxels(during["anomaly_map"]) >= first_threshold)
    assert during["decision"] == ("abnormal" if during["score"] >= during["image_threshold"] else "normal")
    assert during["image_threshold"] != 0.001
    # the next request: the new model, whole
    assert after["threshold"] == 0.999 and after["image_threshold"] == 0.001 and after["decision"] == "abnormal"
    np.testing.assert_array_equal(voxels(after["label"]) > 0, voxels(after["anomaly_map"]) >= 0.999)

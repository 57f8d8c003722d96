"""The training data: settings check, where data comes from, the fixed validation set."""

import json
import os

import nibabel as nib
import numpy as np
import pytest
import torch

from mediclip_monai.data.datalists import load_datalist, sample_k_shot
from mediclip_monai.data.resolve import resolve_datalist
from mediclip_monai.errors import ConfigValueError, DataError
from mediclip_monai.settings import check_settings
from mediclip_monai.workflows.training import make_validation_set, prepare_few_shot_data


@pytest.mark.parametrize("tasks", [None, {"CutPaste": 0.5, "Identity": 0.5}, {"Identity": 1.0}])
def test_validation_pairs_every_normal_slice_with_a_synthetic_anomaly(tasks):
    torch.manual_seed(0)
    slices = [{"image": torch.rand(1, 48, 48), "name": f"s{i}"} for i in range(5)]
    validation = make_validation_set(slices, [s["image"] for s in slices], tasks, seed=3)
    assert [case["name"] for case in validation[:2]] == ["s0", "s0_synthetic"]
    normal, anomalous = validation[0::2], validation[1::2]
    assert all(case["label"].sum() == 0 and torch.equal(case["image"], s["image"]) for case, s in zip(normal, slices))
    assert all(case["label"].sum() > 0 for case in anomalous)
    again = make_validation_set(slices, [s["image"] for s in slices], tasks, seed=3)
    assert all(torch.equal(a["image"], b["image"]) for a, b in zip(validation, again))


def test_a_folder_of_scans_becomes_a_training_datalist(tmp_path):
    scans = tmp_path / "normals"
    scans.mkdir()
    for name in ("a.nii.gz", "b.nii.gz"):
        nib.save(nib.Nifti1Image(np.random.rand(16, 16).astype(np.float32), np.eye(4)), str(scans / name))
    (scans / ".hidden").write_text("ignored")
    path = resolve_datalist("", str(scans), str(tmp_path / "demo"), str(tmp_path / "runs"))
    assert path.startswith(str(tmp_path / "runs"))
    training = json.load(open(path))["training"]
    assert [entry["image"] for entry in training] == [str(scans / "a.nii.gz"), str(scans / "b.nii.gz")]
    # an explicit datalist wins, then <dataset_dir>/datalist.json
    assert resolve_datalist("given.json", str(scans), "demo", "runs") == "given.json"
    (scans / "datalist.json").write_text("{}")
    assert resolve_datalist("", str(scans), "demo", "runs") == str(scans / "datalist.json")


def test_an_empty_or_missing_dataset_dir_is_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no image"):
        resolve_datalist("", str(tmp_path / "empty"), str(tmp_path / "demo"), str(tmp_path))
    with pytest.raises(DataError, match="no such folder"):
        resolve_datalist("", str(tmp_path / "missing"), str(tmp_path / "demo"), str(tmp_path))


GOOD_SETTINGS = dict(epochs=2, batch_size=4, k_shot=0, lr=1e-3, val_interval=1, num_workers=0)


@pytest.mark.parametrize(
    "override, expected",
    [
        ({"epochs": 0}, "--epochs 0: must be a whole number >= 1"),
        ({"epochs": 2.5}, "--epochs 2.5: must be a whole number >= 1"),
        ({"epochs": "ten"}, "--epochs 'ten': must be a whole number >= 1"),
        ({"batch_size": 0}, "--batch_size 0: must be a whole number >= 1"),
        ({"batch_size": True}, "--batch_size True: must be a whole number >= 1"),
        ({"k_shot": -1}, "--k_shot -1: must be a whole number >= 0"),
        ({"lr": 0}, "--lr 0: must be a number > 0"),
        ({"lr": float("nan")}, "--lr nan: must be a number > 0"),
        ({"num_workers": -2}, "--num_workers -2: must be a whole number >= 0"),
        ({"val_interval": 3}, "--val_interval 3 is more than --epochs 2: no validation round would run"),
    ],
)
def test_settings_that_cannot_work_are_refused_by_key(override, expected):
    check_settings(**GOOD_SETTINGS)
    with pytest.raises(ConfigValueError) as error:
        check_settings(**{**GOOD_SETTINGS, **override})
    assert str(error.value).startswith(expected)


def test_several_bad_settings_are_listed_at_once():
    with pytest.raises(ConfigValueError) as error:
        check_settings(**{**GOOD_SETTINGS, "epochs": 0, "batch_size": 0})
    lines = str(error.value).splitlines()
    assert lines[0] == "2 problems with the config values:"
    assert lines[1].startswith("  --epochs 0") and lines[2].startswith("  --batch_size 0")


def test_a_missing_file_among_the_images_not_drawn_is_reported_before_training(tmp_path):
    for i in range(4):
        nib.save(nib.Nifti1Image(np.random.rand(16, 16).astype(np.float32), np.eye(4)), str(tmp_path / f"n{i}.nii.gz"))
    names = ["n0.nii.gz", "lost_in_copy.nii.gz", "n1.nii.gz", "n2.nii.gz", "n3.nii.gz"]
    datalist = tmp_path / "datalist.json"
    datalist.write_text(json.dumps({"training": [{"image": n} for n in names], "validation": [{"image": "n0.nii.gz"}]}))
    # seed 0 draws 2 shots of 5 that are not the lost file, and validation has its own section: nothing reads it
    shots = sample_k_shot(load_datalist(str(datalist), "training"), 2, 0)
    assert [os.path.basename(shot["image"]) for shot in shots] == ["n1.nii.gz", "n3.nii.gz"]
    with pytest.raises(DataError, match="lost_in_copy.nii.gz: file not found"):
        prepare_few_shot_data(str(datalist), k_shot=2, seed=0, image_size=32)
    (tmp_path / "lost_in_copy.nii.gz").write_bytes((tmp_path / "n0.nii.gz").read_bytes())
    assert len(prepare_few_shot_data(str(datalist), k_shot=2, seed=0, image_size=32).train) == 2

"""The training glue: where data comes from, and the fixed validation set."""

import json

import nibabel as nib
import numpy as np
import pytest
import torch

from mediclip_monai.data.datalists import DataError
from mediclip_monai.data.resolve import resolve_datalist
from mediclip_monai.training import make_validation_set


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

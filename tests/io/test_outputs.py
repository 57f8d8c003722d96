"""The inference output folder: case folders all or none, names never stolen, one index for many runs."""

import csv
import json
import multiprocessing
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from mediclip_monai.data.cases import Case
from mediclip_monai.data.datalists import DataError
from mediclip_monai.decisions import BranchDecisions
from mediclip_monai.errors import ConfigValueError
from mediclip_monai.io import writers
from mediclip_monai.io.outputs import SaveCaseOutputsd, assign_output_names, is_complete, rebuild_index
from mediclip_monai.transforms import AnomalyScored


def postprocessed(name, source, seed=0, shape=(6, 5, 4), threshold=0.5):
    """A case as the postprocessing hands it to the writer: map, mask, score, decision."""
    anomaly_map = torch.as_tensor(np.random.default_rng(seed).random((1, *shape)), dtype=torch.float32)
    data = {"pred": MetaTensor(anomaly_map, affine=torch.diag(torch.tensor([2.0, 1.0, 3.0, 1.0]))), "name": name}
    return AnomalyScored("pred", BranchDecisions("mediclip", threshold, threshold))({**data, "source": source})


def files_of(folder):
    return sorted(p for p in os.listdir(folder))


def test_a_case_is_written_whole_with_its_manifest_last(tmp_path):
    out = tmp_path / "out"
    result = SaveCaseOutputsd(str(out), identity={"model": "abc"})(postprocessed("brain", "/data/brain.nii.gz"))
    assert result["case_folder"] == str(out / "brain")
    assert files_of(out / "brain") == [
        "brain_anomaly.seg.nrrd",
        "brain_anomaly_map.nii.gz",
        "brain_anomaly_mask.nii.gz",
        "brain_case.json",
    ]
    manifest = json.loads((out / "brain" / "brain_case.json").read_text())
    assert manifest["source"] == "/data/brain.nii.gz" and manifest["model"] == "abc"
    assert manifest["score"] == pytest.approx(result["score"]) and manifest["decision"] == result["decision"]
    written = nib.load(str(out / "brain" / "brain_anomaly_map.nii.gz"))
    np.testing.assert_allclose(written.get_fdata(), result["pred"][0].numpy(), atol=1e-6)
    assert is_complete(out / "brain", "/data/brain.nii.gz", {"model": "abc", "threshold": 0.5})
    assert not is_complete(out / "brain", "/data/brain.nii.gz", {"model": "other"})
    assert not is_complete(out / "brain", "/data/elsewhere.nii.gz")
    os.remove(out / "brain" / "brain_anomaly.seg.nrrd")
    assert not is_complete(out / "brain", "/data/brain.nii.gz")


def test_the_outputs_named_are_written_and_a_new_one_is_one_registered_function(tmp_path, request):
    request.addfinalizer(lambda: writers.CASE_WRITERS.pop("voxel_count"))

    @writers.case_writer("voxel_count", "_voxels.txt")
    def voxel_count(path, case):
        Path(path).write_text(str(int(case.mask.sum())))

    out = tmp_path / "out"
    result = SaveCaseOutputsd(str(out), outputs=["anomaly_mask", "voxel_count"])(postprocessed("b", "/data/b.nii.gz"))
    assert files_of(out / "b") == ["b_anomaly_mask.nii.gz", "b_case.json", "b_voxels.txt"]
    assert (out / "b" / "b_voxels.txt").read_text() == str(int(result["mask"].sum()))
    manifest = json.loads((out / "b" / "b_case.json").read_text())
    assert manifest["outputs"] == ["b_anomaly_mask.nii.gz", "b_voxels.txt"]
    with pytest.raises(ConfigValueError, match=r"--outputs \['nifti_map'\]: not a case output; the outputs are"):
        SaveCaseOutputsd(str(out), outputs=["anomaly_map", "nifti_map"])


def test_a_case_failing_half_way_leaves_nothing(tmp_path):
    out = tmp_path / "out"
    not_a_series = tmp_path / "ct"  # a folder source gets a DICOM SEG, the last writer; it holds no DICOM
    not_a_series.mkdir()
    with pytest.raises(DataError, match="no DICOM image"):
        SaveCaseOutputsd(str(out))(postprocessed("ct", str(not_a_series)))
    assert os.listdir(out) == []  # no case folder, no staging folder


def test_a_name_held_by_another_source_is_never_reused(tmp_path):
    out = tmp_path / "out"
    SaveCaseOutputsd(str(out))(postprocessed("t1", "/site1/t1.nii.gz"))
    (out / "t1_2").mkdir()  # something else, without a manifest: not ours to touch either
    cases = [Case("t1", "/site2/t1.nii.gz"), Case("t1_3", "/elsewhere/t1_3.nii.gz"), Case("t1", "/site1/t1.nii.gz")]
    assert [c.name for c in assign_output_names(cases, out)] == ["t1_4", "t1_3", "t1"]
    # a concurrent run may take the name after it was assigned: the commit then moves on
    result = SaveCaseOutputsd(str(out))(postprocessed("t1", "/site2/t1.nii.gz"))
    assert result["name"] == "t1_3" and os.path.exists(out / "t1_3" / "t1_3_anomaly_map.nii.gz")
    assert json.loads((out / "t1" / "t1_case.json").read_text())["source"] == "/site1/t1.nii.gz"
    assert json.loads((out / "t1_3" / "t1_3_case.json").read_text())["name"] == "t1_3"


def test_rewriting_a_case_of_the_same_source_replaces_it(tmp_path):
    out = tmp_path / "out"
    first = SaveCaseOutputsd(str(out))(postprocessed("a", "/a.nii.gz", seed=1))
    second = SaveCaseOutputsd(str(out))(postprocessed("a", "/a.nii.gz", seed=2))
    assert second["name"] == "a" and sorted(os.listdir(out)) == ["a"]
    manifest = json.loads((out / "a" / "a_case.json").read_text())
    assert manifest["score"] == pytest.approx(second["score"]) != pytest.approx(first["score"])


def _write_cases(out, worker, n_cases):
    save = SaveCaseOutputsd(out)
    for i in range(n_cases):
        save(postprocessed(f"case{i}", f"/worker{worker}/case{i}.nii.gz", seed=worker * 100 + i, shape=(4, 4, 2)))
        rebuild_index(out)


def test_runs_sharing_a_folder_at_the_same_time_end_with_one_index_of_every_case(tmp_path):
    out = str(tmp_path / "out")
    os.makedirs(out)
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_write_cases, args=(out, w, 4)) for w in range(3)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
        assert worker.exitcode == 0
    rebuild_index(out)
    rows = list(csv.DictReader(open(os.path.join(out, "scores.csv"))))
    folders = sorted(e for e in os.listdir(out) if os.path.isdir(os.path.join(out, e)))
    assert len(folders) == 12  # same names, other sources: nothing overwritten
    assert sorted(r["name"] for r in rows) == folders
    cases = json.load(open(os.path.join(out, "cases.json")))
    assert sorted(cases) == folders
    assert sorted(c["source"] for c in cases.values()) == sorted(
        f"/worker{w}/case{i}.nii.gz" for w in range(3) for i in range(4)
    )
    assert not [e for e in os.listdir(out) if e.startswith(".")]

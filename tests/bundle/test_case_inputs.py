"""What becomes a case, run through the inference CLI as a user runs it: inputs whose names would make
hidden case folders, and a folder of sub-folders searched recursively."""

import csv
import json
import os

import nibabel as nib
import numpy as np
import pytest

from tests.dicom_series import write_series

from .conftest import INFERENCE, cli, layered


def nifti(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in (16, 16, 3)], indexing="ij"))
    nib.save(nib.Nifti1Image((np.clip(1 - (grid**2).sum(0), 0, None) * 800).astype(np.float32), np.eye(4)), path)
    return path


def infer(trained, input_path, output_dir):
    return cli(
        ["-m", "monai.bundle", "run", "--config_file", layered(INFERENCE), "--input", str(input_path),
         "--output_dir", str(output_dir), "--ckpt_dir", trained, "--device", "cpu", "--num_workers", "0"],
        timeout=300,
    )  # fmt: skip


def listed(output_dir):
    """(name, source) of each row of scores.csv, with cases.json's source; and the folders in output_dir."""
    names = [row["name"] for row in csv.DictReader(open(output_dir / "scores.csv"))]
    sources = json.loads((output_dir / "cases.json").read_text())
    return [(name, sources[name]["source"]) for name in names], sorted(os.listdir(output_dir))


@pytest.mark.slow
def test_inputs_named_like_hidden_files_get_visible_cases(trained, tmp_path):
    data = tmp_path / "data"
    names = ("..nii.gz", "...nii.gz", ".scan.nii.gz")
    for name in names:
        nifti(data / name)
    datalist = tmp_path / "datalist.json"
    datalist.write_text(json.dumps({"test": [{"image": f"data/{name}"} for name in names]}))

    result = infer(trained, datalist, tmp_path / "out")

    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows, folders = listed(tmp_path / "out")
    assert rows == [
        ("scan", str(data / ".scan.nii.gz")),
        ("unnamed_nii_gz", str(data / "...nii.gz")),
        ("unnamed_nii_gz_2", str(data / "..nii.gz")),
    ]
    assert folders == ["cases.json", "scan", "scores.csv", "unnamed_nii_gz", "unnamed_nii_gz_2"]  # none hidden
    assert os.path.isfile(tmp_path / "out" / "scan" / "scan_anomaly_map.nii.gz")


@pytest.mark.slow
def test_a_folder_of_sub_folders_is_searched_and_each_series_folder_is_one_case(trained, tmp_path):
    scans = tmp_path / "scans"
    for path in ("site1/t1.nii.gz", "site2/t1.nii.gz", "site2/followup/t1.nii.gz", "site2/followup/flair.nii.gz"):
        nifti(scans / path)
    write_series(scans / "site3" / "ct", rows=16, columns=16)
    nifti(scans / "site3" / ".t1.nii.gz")  # hidden: left out, and said so

    result = infer(trained, scans, tmp_path / "out")

    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows, _ = listed(tmp_path / "out")
    assert rows == [
        ("ct", str(scans / "site3" / "ct")),
        ("flair", str(scans / "site2" / "followup" / "flair.nii.gz")),
        ("site1_t1", str(scans / "site1" / "t1.nii.gz")),
        ("site2_followup_t1", str(scans / "site2" / "followup" / "t1.nii.gz")),
        ("site2_t1", str(scans / "site2" / "t1.nii.gz")),
    ]
    assert os.path.isfile(tmp_path / "out" / "ct" / "ct_anomaly_seg.dcm")  # the series, read as one volume
    assert "1 hidden image file(s) left out (site3/.t1.nii.gz)" in result.stdout + result.stderr

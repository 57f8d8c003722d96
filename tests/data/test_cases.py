"""The one case-naming rule of inference and evaluation: unique, deterministic, readable names."""

import json
import os

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from mediclip_monai.data.cases import case_names, datalist_cases, find_cases


def _nifti(path, shape=(8, 8, 3)):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.random.default_rng(0).random(shape).astype(np.float32), np.eye(4)), str(path))
    return str(path)


def test_distinct_stems_keep_their_plain_names():
    assert case_names(["/d/a.nii.gz", "/d/b.png", "/e/series"]) == ["a", "b", "series"]


def test_same_stem_in_different_folders_is_prefixed_with_the_folders_that_differ():
    names = case_names(["/data/site1/t1.nii.gz", "/data/site2/t1.nii.gz", "/data/site2/flair.nii.gz"])
    assert names == ["site1_t1", "site2_t1", "flair"]
    deeper = case_names(["/x/a/scans/t1.nii.gz", "/x/b/scans/t1.nii.gz"])
    assert deeper == ["a_scans_t1", "b_scans_t1"]


def test_same_stem_in_one_folder_gets_its_format(tmp_path):
    series = tmp_path / "scan"
    series.mkdir()
    names = case_names([str(tmp_path / "scan.nii.gz"), str(tmp_path / "scan.png"), str(series)])
    assert names == ["scan_nii_gz", "scan_png", "scan_dicom"]


def test_names_ignore_case_and_never_repeat():
    names = case_names(["/d/Scan.png", "/d/scan.png", "/d/scan.png", "/d/scan_png_2.png"])
    assert len({n.lower() for n in names}) == 4, names


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_names_do_not_depend_on_the_order_of_the_sources(seed):
    sources = ["/d/site1/t1.nii.gz", "/d/site2/t1.nii.gz", "/d/scan.nii.gz", "/d/scan.png", "/d/other.png"]
    expected = dict(zip(sources, case_names(sources)))
    shuffled = list(np.random.default_rng(seed).permutation(sources))
    assert dict(zip(shuffled, case_names(shuffled))) == expected


def test_a_folder_with_same_stems_gives_distinct_cases(tmp_path):
    _nifti(tmp_path / "in" / "scan.nii.gz")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "in" / "scan.png")
    cases = find_cases(str(tmp_path / "in"))
    assert [(c.name, os.path.basename(c.source)) for c in cases] == [
        ("scan_nii_gz", "scan.nii.gz"),
        ("scan_png", "scan.png"),
    ]


def test_datalist_cases_use_the_same_rule_and_drop_empty_labels(tmp_path):
    _nifti(tmp_path / "site1" / "t1.nii.gz")
    _nifti(tmp_path / "site2" / "t1.nii.gz")
    (tmp_path / "datalist.json").write_text(
        json.dumps(
            {
                "test": [
                    {"image": "site1/t1.nii.gz", "label": None, "abnormal": 0},
                    {"image": "site2/t1.nii.gz", "label": "site2/t1.nii.gz", "abnormal": 1},
                ]
            }
        )
    )
    cases = datalist_cases(str(tmp_path / "datalist.json"))
    assert [c["name"] for c in cases] == ["site1_t1", "site2_t1"]
    assert "label" not in cases[0] and cases[1]["label"] == str(tmp_path / "site2" / "t1.nii.gz")
    assert cases[0]["source"] == cases[0]["image"] == str(tmp_path / "site1" / "t1.nii.gz")
    assert [c.name for c in find_cases(str(tmp_path / "datalist.json"))] == ["site1_t1", "site2_t1"]

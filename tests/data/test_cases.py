"""The one case-naming rule of inference and evaluation: unique, deterministic, readable names."""

import json
import logging
import os

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from mediclip_monai.data.cases import case_names, datalist_cases, find_cases
from tests.dicom_series import write_series


def _folder(path):
    path.mkdir(parents=True, exist_ok=True)
    return path


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


def test_hidden_and_nameless_files_get_visible_names(tmp_path):
    sources = ["/d/..nii.gz", "/d/...nii.gz", "/d/.scan.nii.gz", "/d/.nii.gz", "/d/.cache/t1.nii.gz", "/d/b/t1.nii.gz"]
    assert case_names(sources) == [
        "unnamed_nii_gz_2",  # no name before the suffix; the three such files then differ by number alone
        "unnamed_nii_gz",
        "scan",
        "unnamed_nii_gz_3",
        "cache_t1",  # a hidden folder's name, without its dot
        "b_t1",
    ]
    hidden = _nifti(tmp_path / ".scan.nii.gz")
    assert [c.name for c in find_cases(hidden)] == ["scan"]


def test_a_folder_is_searched_recursively_and_a_series_folder_stays_one_case(tmp_path, caplog):
    root = tmp_path / "scans"
    for path in ("site1/t1.nii.gz", "site2/t1.nii.gz", "site2/followup/t1.nii.gz", "site2/followup/flair.nii.gz"):
        _nifti(root / path)
    write_series(root / "site3" / "ct")
    (root / "site3" / "ct" / "notes.txt").write_text("a non-image file in a series folder is not a case")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(_folder(root / "site3" / "ct" / "key_images") / "xray.png")
    _nifti(root / ".hidden.nii.gz")  # hidden: left out, with a warning
    _nifti(root / ".git" / "t1.nii.gz")  # in a hidden folder: left out
    _folder(root / "empty")  # nothing to search: a case, whose reading reports the empty folder
    (root / "site1" / "loop").symlink_to(root)  # a link back up the tree is not searched again

    with caplog.at_level(logging.WARNING, logger="mediclip_monai.data.cases"):
        cases = find_cases(str(root))

    assert [(c.name, os.path.relpath(c.source, root)) for c in cases] == [
        ("empty", "empty"),
        ("site1_t1", "site1/t1.nii.gz"),
        ("site2_t1", "site2/t1.nii.gz"),
        ("flair", "site2/followup/flair.nii.gz"),
        ("site2_followup_t1", "site2/followup/t1.nii.gz"),
        ("ct", "site3/ct"),
        ("xray", "site3/ct/key_images/xray.png"),
    ]
    assert "1 hidden image file(s) left out (.hidden.nii.gz)" in caplog.text
    assert find_cases(str(root)) == cases  # deterministic

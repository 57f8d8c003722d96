"""Datalist reading, k-shot sampling and file checks (mediclip_monai.data.datalists)."""

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from mediclip_monai.data.datalists import DataError, check_entries, load_datalist, sample_k_shot


def _nifti(path: Path, shape=(8, 9), value=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.random.default_rng(0).random(shape).astype(np.float32) if value is None else value
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(path))
    return path


def _write(path: Path, content) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


def test_relative_paths_resolve_against_the_datalist_folder(tmp_path):
    _nifti(tmp_path / "data" / "normal" / "a.nii.gz")
    datalist = _write(
        tmp_path / "data" / "lists" / "datalist.json",
        {
            "training": [{"image": "../normal/a.nii.gz"}],
            "test": [
                {"image": "../normal/a.nii.gz", "label": "../masks/m.nii.gz", "abnormal": 1},
                {"image": str(tmp_path / "abs.nii.gz"), "abnormal": 0},
            ],
        },
    )
    train = load_datalist(datalist, "training")
    assert train == [{"image": str(tmp_path / "data" / "normal" / "a.nii.gz")}]
    assert Path(train[0]["image"]).is_file()
    test = load_datalist(str(datalist), "test")
    assert test[0]["label"] == str(tmp_path / "data" / "masks" / "m.nii.gz")
    assert test[0]["abnormal"] == 1
    assert test[1]["image"] == str(tmp_path / "abs.nii.gz")  # absolute paths stay as they are
    assert "label" not in test[1]


@pytest.mark.parametrize(
    "content, section, expected",
    [
        (None, "training", "datalist file not found"),
        ("{not json", "training", "not valid JSON"),
        ({"test": [{"image": "a.nii.gz"}]}, "training", "no section 'training'"),
        ({"training": []}, "training", "section 'training' is empty"),
        ({"training": {"image": "a.nii.gz"}}, "training", "must be a list"),
        ([{"image": "a.nii.gz"}], "training", "JSON object"),
    ],
)
def test_datalist_errors_name_the_file_and_the_problem(tmp_path, content, section, expected):
    path = tmp_path / "datalist.json"
    if content is not None:
        _write(path, content)
    with pytest.raises(DataError, match=expected) as info:
        load_datalist(path, section)
    assert str(path) in str(info.value)


def test_entries_without_image_are_all_listed_at_once(tmp_path):
    path = _write(
        tmp_path / "datalist.json",
        {"training": [{"image": "ok.nii.gz"}, {"label": "m.nii.gz"}, "just-a-string", {"image": ""}]},
    )
    with pytest.raises(DataError) as info:
        load_datalist(path, "training")
    message = str(info.value)
    assert message.startswith("3 problems")
    assert "[training][1]" in message and "[training][2]" in message and "[training][3]" in message
    assert "[training][0]" not in message


def test_k_shot_is_seeded_and_reproducible():
    items = [{"image": f"{i}.nii.gz"} for i in range(20)]
    a = sample_k_shot(items, 5, seed=3)
    assert a == sample_k_shot(items, 5, seed=3)
    assert len(a) == 5 and len({x["image"] for x in a}) == 5
    assert a != sample_k_shot(items, 5, seed=4)
    # datalist order kept, and a smaller k from the same seed is a subset of a larger one
    assert [items.index(x) for x in a] == sorted(items.index(x) for x in a)
    assert all(x in sample_k_shot(items, 10, seed=3) for x in a)


@pytest.mark.parametrize("k", [None, 0, -1])
def test_k_shot_none_or_non_positive_keeps_everything(k):
    items = [{"image": f"{i}"} for i in range(4)]
    assert sample_k_shot(items, k, seed=0) == items


def test_k_shot_larger_than_available_says_how_many_there_are():
    with pytest.raises(DataError, match="only|available") as info:
        sample_k_shot([{"image": "a"}, {"image": "b"}, {"image": "c"}], 16, seed=0)
    assert "3" in str(info.value) and "16" in str(info.value)


def test_check_entries_lists_every_bad_entry_in_one_message(tmp_path):
    good = _nifti(tmp_path / "good.nii.gz")
    text = _write(tmp_path / "notes.nii.gz", "this is a text file, not an image")
    four_d = _nifti(tmp_path / "fmri.nii.gz", value=np.ones((4, 4, 3, 5), np.float32))
    one_d = _nifti(tmp_path / "line.nii.gz", value=np.ones((7,), np.float32))
    missing = tmp_path / "missing.nii.gz"
    odd = _write(tmp_path / "table.csv", "a,b\n1,2\n")
    items = [{"image": str(p)} for p in (good, text, four_d, missing, one_d, odd)]
    with pytest.raises(DataError) as info:
        check_entries(items)
    lines = str(info.value).splitlines()
    assert lines[0].startswith("5 problems")
    body = "\n".join(lines[1:])
    assert str(good) not in body
    by_file = {
        p: next(line for line in lines[1:] if str(p) in line) for p in (text, four_d, missing, one_d, odd)
    }
    assert "not a readable NIfTI" in by_file[text]
    assert "5 time points" in by_file[four_d]
    assert "not found" in by_file[missing]
    assert "1D" in by_file[one_d]
    assert "not a supported image file" in by_file[odd]


def test_check_entries_checks_labels_and_their_shape(tmp_path):
    image = _nifti(tmp_path / "img.nii.gz", shape=(8, 9))
    small_mask = _nifti(tmp_path / "mask.nii.gz", value=np.zeros((4, 4), np.uint8))
    items = [
        {"image": str(image), "label": str(small_mask), "abnormal": 1},
        {"image": str(image), "abnormal": 0},  # no label: fine
        {"image": str(image), "label": str(tmp_path / "nope.nii.gz")},
    ]
    check_entries(items)  # images only: all fine
    with pytest.raises(DataError) as info:
        check_entries(items, keys=("image", "label"))
    message = str(info.value)
    assert message.startswith("2 problems")
    assert "does not match image shape" in message and "nope.nii.gz: file not found" in message


def test_exist_only_entries_are_checked_without_being_read(tmp_path):
    good = _nifti(tmp_path / "good.nii.gz")
    broken_but_present = _write(tmp_path / "broken.nii.gz", "not read, so not found out")
    series_folder = tmp_path / "series"
    series_folder.mkdir()
    check_entries(
        [{"image": str(good)}], exist_only=[{"image": str(broken_but_present)}, {"image": str(series_folder)}]
    )
    with pytest.raises(DataError) as error:
        check_entries(
            [{"image": str(good)}],
            exist_only=[{"image": str(tmp_path / "gone.nii.gz")}, {"image": str(_write(tmp_path / "notes.txt", "x"))}],
        )
    assert str(error.value).splitlines() == [
        "2 problems with the datalist entries:",
        f"  {tmp_path / 'gone.nii.gz'}: file not found",
        f"  {tmp_path / 'notes.txt'}: not a supported image file (NIfTI, DICOM, PNG/JPEG/BMP/TIFF, NRRD/MHA)",
    ]

"""scripts/slicer_review.py outside Slicer: argument parsing, finding and pairing a run's case files."""

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from mediclip_monai.io import write_anomaly_map, write_anomaly_mask, write_slicer_segmentation

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "slicer_review.py"


@pytest.fixture(scope="module")
def review():
    spec = importlib.util.spec_from_file_location("slicer_review", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["slicer_review"] = module  # the standard recipe: dataclasses look their module up here
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop("slicer_review", None)


def test_importing_the_script_does_not_need_slicer(review):
    assert "slicer" not in sys.modules
    assert callable(review.main)


@pytest.mark.parametrize(
    "argv",
    [
        ["scripts/slicer_review.py", "--", "/data/out", "--case", "brain_2"],
        ["scripts/slicer_review.py", "/data/out", "--case", "brain_2"],
    ],
)
def test_parse_args_after_double_dash_or_script(review, argv):
    args = review.parse_args(argv)
    assert args.output_dir == Path("/data/out")
    assert args.case == "brain_2"
    assert review.parse_args(["x.py", "--", "/o"]).case is None


def _write_case(output_dir, name, with_mask=True, with_segmentation=True):
    folder = output_dir / name
    mask = np.zeros((4, 4, 2), dtype=np.uint8)
    mask[1, 1, 0] = 1
    write_anomaly_map(folder / f"{name}_anomaly_map.nii.gz", mask * 0.9, np.eye(4))
    if with_mask:
        write_anomaly_mask(folder / f"{name}_anomaly_mask.nii.gz", mask, np.eye(4))
    if with_segmentation:
        write_slicer_segmentation(folder / f"{name}_anomaly.seg.nrrd", mask, np.eye(4))
    return folder


@pytest.fixture
def run_dir(tmp_path):
    """An inference output folder: full case, map-only case with a DICOM source, a case whose source
    vanished, a folder that is not a case, and the run-level files."""
    out = tmp_path / "out"
    source_file = tmp_path / "inputs" / "brain_1.nii.gz"
    source_file.parent.mkdir(parents=True)
    source_file.write_bytes(b"stand-in")
    dicom_folder = tmp_path / "inputs" / "ct_series"
    dicom_folder.mkdir()
    _write_case(out, "brain_1")
    _write_case(out, "ct_series", with_mask=False, with_segmentation=False)
    _write_case(out, "gone")
    (out / "logs").mkdir()
    (out / "logs" / "logs_anomaly_map.txt").write_text("not a case")
    (out / "scores.csv").write_text("name,score,max_slice\n")
    (out / "cases.json").write_text(json.dumps({
        "brain_1": {"source": str(source_file)},
        "ct_series": {"source": str(dicom_folder)},
        "gone": {"source": str(tmp_path / "deleted.nii.gz")},
    }))
    return out, source_file, dicom_folder


def test_find_cases_pairs_files_and_sources(review, run_dir):
    out, source_file, dicom_folder = run_dir
    cases = review.find_cases(out)
    assert [c.name for c in cases] == ["brain_1", "ct_series", "gone"]
    brain, ct, gone = cases

    assert brain.anomaly_map == out / "brain_1" / "brain_1_anomaly_map.nii.gz"
    assert brain.mask == out / "brain_1" / "brain_1_anomaly_mask.nii.gz"
    assert brain.segmentation == out / "brain_1" / "brain_1_anomaly.seg.nrrd"
    assert brain.source == source_file and not brain.source_is_dicom_folder

    assert ct.mask is None and ct.segmentation is None
    assert ct.source == dicom_folder and ct.source_is_dicom_folder

    assert gone.source is None  # a stale path in cases.json is not offered to Slicer
    assert gone.segmentation is not None


def test_find_cases_without_cases_json_shows_maps_only(review, run_dir):
    out, _, _ = run_dir
    (out / "cases.json").unlink()
    cases = review.find_cases(out)
    assert [c.name for c in cases] == ["brain_1", "ct_series", "gone"]
    assert all(c.source is None for c in cases)


def test_relative_source_is_relative_to_the_output_folder(review, tmp_path):
    out = tmp_path / "out"
    _write_case(out, "a")
    (out / "a" / "input.nii.gz").write_bytes(b"x")
    (out / "cases.json").write_text(json.dumps({"a": {"source": "a/input.nii.gz"}}))
    assert review.find_cases(out)[0].source == out / "a" / "input.nii.gz"


def test_case_index_and_description(review, run_dir):
    out, _, _ = run_dir
    cases = review.find_cases(out)
    assert review.case_index(cases, None) == 0
    assert review.case_index(cases, "gone") == 2
    with pytest.raises(KeyError, match="brain_1"):
        review.case_index(cases, "missing")
    text = review.describe_cases(cases, current=1)
    assert text.splitlines()[0] == "3 MediCLIP case(s):"
    assert text.splitlines()[2].startswith(">") and "ct_series" in text.splitlines()[2]
    assert "no source image" in text.splitlines()[3]


def test_main_outside_slicer_explains_how_to_run(review, run_dir, capsys):
    out, _, _ = run_dir
    assert review.main(["slicer_review.py", "--", str(out)]) == 2
    assert "Slicer --python-script" in capsys.readouterr().err


def test_each_case_says_which_scale_its_map_is_in(review, run_dir):
    out, _, _ = run_dir
    manifest = {"name": "brain_1", "map_scale": "normalised", "map_mask_level": 0.5, "threshold": 0.0961}
    (out / "brain_1" / "brain_1_case.json").write_text(json.dumps(manifest))
    (out / "gone" / "gone_case.json").write_text(json.dumps({"name": "gone", "threshold": 0.43}))  # older manifest
    brain, ct, gone = review.find_cases(out)
    assert (brain.map_scale, brain.mask_level) == ("normalised", 0.5)
    assert (gone.map_scale, gone.mask_level) == ("probability", 0.43)
    assert (ct.map_scale, ct.mask_level) == ("probability", None)  # no manifest
    lines = review.describe_cases([brain, ct, gone]).splitlines()
    assert "(normalised map, mask at 0.5, segmentation;" in lines[1]
    assert "(probability map;" in lines[2] and "(probability map, mask at 0.43, segmentation;" in lines[3]
    assert review.MAP_VISIBLE_FROM["normalised"] < 0.5  # a normalised map's threshold is never hidden

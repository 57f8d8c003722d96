"""DICOM inputs a user brings, run through inference.json as a user runs it: an anonymised export gets its
DICOM SEG; a series with a missing slice is refused with the reason while the other case is written."""

import os

import highdicom as hd
import nibabel as nib
import pydicom
import pytest

from tests.dicom_series import PATIENT_AND_STUDY, strip, write_series

from .conftest import INFERENCE, TRAIN, cli, run_workflow, small_training


@pytest.fixture(scope="module")
def trained(demo_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("trained_dicom")
    run_workflow(TRAIN, **small_training(demo_dir, root, epochs=1))
    return str(root / "models")


@pytest.mark.slow
def test_anonymised_series_gets_its_seg_and_a_gapped_series_is_refused(trained, tmp_path):
    inputs = tmp_path / "inputs"
    positions = [(-40.0, -60.0, 20.0 + 2.5 * k) for k in range(6)]
    anonymised = write_series(inputs / "anonymised", positions=positions, rows=24, columns=20)
    strip(anonymised, PATIENT_AND_STUDY)  # no SliceThickness either: write_series leaves it out
    gapped = write_series(inputs / "gapped", positions=positions, rows=24, columns=20)
    gapped[3].unlink()

    result = cli(
        ["-m", "monai.bundle", "run", "--config_file", INFERENCE, "--input", str(inputs),
         "--output_dir", str(tmp_path / "out"), "--ckpt_dir", trained, "--device", "cpu", "--threshold", "0.0"],
        timeout=300,
    )  # fmt: skip

    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert f"{inputs / 'gapped'}: slices are not evenly spaced: slices 3-4 (s2.dcm, s4.dcm) are 5 mm apart" in output
    assert not (tmp_path / "out" / "gapped").exists()
    case = tmp_path / "out" / "anonymised"
    seg = hd.seg.segread(case / "anonymised_anomaly_seg.dcm")
    referenced = {r.ReferencedSOPInstanceUID for r in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert referenced == {pydicom.dcmread(f).SOPInstanceUID for f in anonymised}
    assert int(seg.NumberOfFrames) == len(anonymised)  # threshold 0: every slice has a frame
    assert nib.load(case / "anonymised_anomaly_map.nii.gz").shape == (20, 24, 6)
    assert sorted(os.listdir(case)) == [
        "anonymised_anomaly.seg.nrrd",
        "anonymised_anomaly_map.nii.gz",
        "anonymised_anomaly_mask.nii.gz",
        "anonymised_anomaly_seg.dcm",
        "anonymised_case.json",  # the case's manifest, written last (io.outputs)
    ]

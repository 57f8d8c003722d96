"""The case report (JSON and one-page PDF) of a finished case folder says what the case's files say."""

import json
import re

import numpy as np
import pydicom
import pytest
import torch
from monai.data import MetaTensor

from mediclip_monai.data.loading import read_image
from mediclip_monai.decisions import BranchDecisions
from mediclip_monai.decisions.map_scale import MapScale
from mediclip_monai.io.outputs import SaveCaseOutputsd
from mediclip_monai.reporting.case_report import INTENDED_USE, write_case_report
from mediclip_monai.transforms import AnomalyScored
from tests.dicom_series import write_series

pytestmark = pytest.mark.filterwarnings("ignore:NvImgCodecPydicomReader")


@pytest.fixture
def dicom_case(tmp_path):
    """A DICOM series inferred as inference.json would: map = pixel / 200, normalised around 0.4."""
    files = write_series(tmp_path / "series", rows=12, columns=10, spacing=(0.8, 0.7))
    image = read_image(tmp_path / "series")
    anomaly_map = MetaTensor(torch.as_tensor(np.asarray(image) / 200.0, dtype=torch.float32), affine=image.affine)
    scale = MapScale("normalised", threshold=0.4, span=0.8)
    data = AnomalyScored("pred", BranchDecisions("fused", scale.mask_threshold, scale.mask_threshold))(
        {"pred": anomaly_map, "image": image, "name": "series", "source": str(tmp_path / "series")}
    )
    SaveCaseOutputsd(str(tmp_path / "out"), identity={"model": "0123abcd", "anomaly_branch": "fused"},
                     map_scale=scale)(data)  # fmt: skip
    return files, tmp_path / "out" / "series", data


def test_the_report_says_what_the_case_files_say(dicom_case, tmp_path):
    files, case, data = dicom_case
    json_path, pdf_path = write_case_report(case, tmp_path / "reports")

    assert (json_path.name, pdf_path.name) == ("series_report.json", "series_report.pdf")
    report = json.loads(json_path.read_text())
    manifest = json.loads((case / "series_case.json").read_text())
    for key in ("decision", "score", "image_threshold", "map_scale", "map_mask_level", "anomaly_branch", "model"):
        assert report[key] == manifest[key], key
    assert report["slice_of_score"] == manifest["max_slice"] == data["max_slice"]
    assert report["mask_threshold"] == 0.4 and report["map_mask_level"] == 0.5
    assert report["window"] == "0 to 1, centre 0.5 = the mask threshold"
    anomalous = int(np.asarray(data["mask"]).sum())
    assert anomalous > 0 and report["anomalous_voxels"] == anomalous  # the pattern pixels (>= 100): 0.5 and up
    assert report["anomalous_volume_ml"] == pytest.approx(anomalous * 0.8 * 0.7 * 2.5 / 1000, abs=1e-3)
    first = pydicom.dcmread(files[0])
    assert report["series"]["SeriesInstanceUID"] == first.SeriesInstanceUID
    assert report["series"]["StudyInstanceUID"] == first.StudyInstanceUID
    assert report["series"]["PatientID"] == "T1" and report["series"]["Modality"] == "MR"
    assert report["intended_use"] == INTENDED_USE
    assert "series_anomaly_map.dcm" in report["outputs"] and "series_anomaly_seg.dcm" in report["outputs"]

    pdf = pdf_path.read_bytes()
    assert pdf.startswith(b"%PDF") and len(re.findall(rb"/Type /Page\b", pdf)) == 1  # one page


def test_a_folder_that_is_no_finished_case_is_refused(tmp_path):
    (tmp_path / "half").mkdir()
    with pytest.raises(FileNotFoundError, match="no case manifest"):
        write_case_report(tmp_path / "half", tmp_path / "reports")

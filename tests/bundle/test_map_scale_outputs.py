"""inference.json with ``--map_scale normalised`` and ``--sensitivity`` on a DICOM series, as a user runs it:
every map file is in the normalised scale and says so, its 0.5 iso-line is the calibrated mask, the
Parametric Map holds the same values, and sensitivity moves the mask monotonically."""

import json

import nibabel as nib
import nrrd
import numpy as np
import pydicom
import pytest

from mediclip_monai.decisions.map_scale import MapScale
from mediclip_monai.networks import load_mediclip
from tests.dicom_series import pixel_positions, voxel_indices, write_series

from .test_inference import infer

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore:NvImgCodecPydicomReader")]


def read_case(output_dir, name="series"):
    """Every output of the case, read now (a later run may replace the files)."""
    case = output_dir / name
    anomaly_map = nib.load(case / f"{name}_anomaly_map.nii.gz")
    return {
        "manifest": json.loads((case / f"{name}_case.json").read_text()),
        "map": np.asarray(anomaly_map.dataobj),
        "map_lps_affine": np.diag([-1.0, -1.0, 1.0, 1.0]) @ anomaly_map.get_sform(),
        "map_description": anomaly_map.header["descrip"].tobytes().rstrip(b"\0").decode(),
        "mask": np.asarray(nib.load(case / f"{name}_anomaly_mask.nii.gz").dataobj).astype(bool),
        "nrrd": nrrd.read_header(str(case / f"{name}_anomaly.seg.nrrd")),
        "pm": pydicom.dcmread(case / f"{name}_anomaly_map.dcm"),
    }


def test_the_normalised_map_is_cut_at_half_by_the_calibrated_mask_in_every_file(trained, tmp_path):
    series = tmp_path / "inputs" / "series"
    files = write_series(series, positions=[(-40.0, -60.0, 20.0 + 2.5 * k) for k in range(6)], rows=24, columns=20)
    calibration = load_mediclip(f"{trained}/model.pt").decisions.calibration
    branch = calibration["default_branch"]
    threshold = calibration["pixel_threshold"][branch]
    span = calibration["map_range"][branch]["max"] - calibration["map_range"][branch]["min"]

    infer(trained, series, tmp_path / "out", num_workers=0)
    probability = read_case(tmp_path / "out")
    infer(trained, series, tmp_path / "out", num_workers=0, map_scale="normalised")  # a new scale: redone
    normalised = read_case(tmp_path / "out")

    assert probability["manifest"]["map_scale"] == "probability"
    manifest = normalised["manifest"]
    assert manifest["map_scale"] == "normalised" and manifest["map_mask_level"] == 0.5
    assert manifest["threshold"] == threshold  # sensitivity 0.5: the calibrated threshold itself
    assert manifest["normalisation"] == {"threshold": threshold, "span": pytest.approx(span)}
    values, raw = normalised["map"], probability["map"]
    np.testing.assert_array_equal(normalised["mask"], probability["mask"])  # the scale does not move the mask
    np.testing.assert_array_equal(values >= 0.5, normalised["mask"])  # the 0.5 iso-line is the calibrated mask
    np.testing.assert_allclose(values, MapScale("normalised", threshold, span).normalise(raw), atol=1e-6)
    assert 0 < normalised["mask"].sum() < normalised["mask"].size or values.min() < 0.5 < values.max()

    # every file says which scale it is in
    assert normalised["map_description"] == f"MediCLIP anomaly, normalised: 0.5 = threshold {threshold:.4g}"
    assert probability["map_description"] == "MediCLIP anomaly probability"
    assert normalised["nrrd"]["MediCLIP_map_scale"] == "normalised"
    assert probability["nrrd"]["MediCLIP_map_scale"] == "probability"
    assert float(probability["nrrd"]["MediCLIP_map_mask_level"]) == pytest.approx(threshold)
    mapping = normalised["pm"].SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence[0]
    assert mapping.LUTLabel == "ANOMALY_NORM"
    assert probability["pm"].SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence[0].LUTLabel == (
        "ANOMALY_PROB"
    )
    # the Parametric Map holds the NIfTI map's values: each frame those of the voxels at its instance's pixels
    frames = {}
    for index, item in enumerate(normalised["pm"].PerFrameFunctionalGroupsSequence):
        uid = item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        frames[uid] = normalised["pm"].pixel_array.reshape(-1, 24, 20)[index]
    assert len(frames) == len(files)
    for path in files:
        points, _ = pixel_positions(path)
        index = voxel_indices(points, normalised["map_lps_affine"], values.shape)
        np.testing.assert_array_equal(frames[pydicom.dcmread(path).SOPInstanceUID], values[index])

def test_sensitivity_moves_the_mask_monotonically(trained, tmp_path):
    series = tmp_path / "inputs" / "series"
    write_series(series, positions=[(-40.0, -60.0, 20.0 + 2.5 * k) for k in range(6)], rows=24, columns=20)
    masks, levels = [], []
    for sensitivity in (0.0, 0.5, 1.0):
        out = tmp_path / f"out_{sensitivity}"
        infer(trained, series, out, num_workers=0, map_scale="normalised", sensitivity=sensitivity)
        case = read_case(out)
        masks.append(case["mask"])
        levels.append(case["manifest"]["map_mask_level"])
        values = case["map"]
        inside = np.abs(values - levels[-1]) > 1e-5  # away from the cut, where float rounding decides
        np.testing.assert_array_equal((values >= levels[-1])[inside], case["mask"][inside])
    assert levels == [1.0, 0.5, 0.0]
    for smaller, larger in zip(masks, masks[1:]):
        assert np.all(larger[smaller])  # each mask contains the one of the lower sensitivity
    assert masks[0].sum() < masks[2].sum()

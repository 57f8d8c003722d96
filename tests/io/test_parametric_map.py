"""DICOM Parametric Map of the anomaly map: written from MONAI's array order, read back with pydicom and
highdicom: float values on their source instances, frames at the instances' positions (a tilted series
included), references to the source series, UIDs of its own, and the scale named in its value mapping."""

import random

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.uid import ParametricMapStorage

from mediclip_monai.data.loading import read_image
from mediclip_monai.decisions.map_scale import MapScale
from mediclip_monai.io.parametric_map import write_parametric_map
from tests.dicom_series import write_series, write_tilted_series

from .test_dicom_seg import load_with_monai, make_series, read_series

pytestmark = pytest.mark.filterwarnings("ignore:NvImgCodecPydicomReader")

SCALE = 250.0  # the map is each source pixel / SCALE: every value tells its instance and pixel


def frames_by_source(ds) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(frame values, frame position) keyed by the SOPInstanceUID each frame says it was derived from."""
    pixels = ds.pixel_array.reshape(-1, ds.Rows, ds.Columns)
    frames = {}
    for index, item in enumerate(ds.PerFrameFunctionalGroupsSequence):
        uid = item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        position = np.asarray(item.PlanePositionSequence[0].ImagePositionPatient, float)
        frames[uid] = (pixels[index], position)
    return frames


@pytest.mark.parametrize("descending_numbers", [False, True])
@pytest.mark.parametrize("pass_affine", [False, True])
def test_values_references_and_geometry_read_back(tmp_path, descending_numbers, pass_affine):
    folder = tmp_path / "series"
    make_series(folder, descending_numbers)  # oblique, anisotropic, rows != columns
    volume = load_with_monai(folder)
    anomaly_map = np.asarray(volume, dtype=np.float32) / SCALE
    source = read_series(folder)
    random.Random(0).shuffle(source)  # the writer must not rely on the order it is given

    path = write_parametric_map(tmp_path / "out" / "case_anomaly_map.dcm", anomaly_map, source,
                                affine=volume.affine if pass_affine else None)  # fmt: skip

    ds = pydicom.dcmread(path)
    first = source[0]
    assert ds.SOPClassUID == ParametricMapStorage and ds.Modality == "OT"
    assert ds.StudyInstanceUID == first.StudyInstanceUID and ds.FrameOfReferenceUID == first.FrameOfReferenceUID
    assert ds.SeriesInstanceUID not in {s.SeriesInstanceUID for s in source}  # a series of its own
    assert ds.SOPInstanceUID not in {s.SOPInstanceUID for s in source}
    assert int(ds.SeriesNumber) == int(first.SeriesNumber) + 1001
    assert ds.PatientID == first.PatientID
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == first.SeriesInstanceUID
    referenced = {item.ReferencedSOPInstanceUID for item in ds.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert referenced == {s.SOPInstanceUID for s in source}
    assert ds.pixel_array.dtype == np.float32  # Float Pixel Data, not rescaled integers

    frames = frames_by_source(ds)
    assert set(frames) == referenced  # one frame per instance
    for s in source:
        values, position = frames[s.SOPInstanceUID]
        np.testing.assert_array_equal(values, (s.pixel_array / np.float32(SCALE)).astype(np.float32))
        np.testing.assert_allclose(position, np.asarray(s.ImagePositionPatient, float), atol=1e-4)

    # highdicom reads the same values back by source instance
    parametric_map = hd.pm.ParametricMap.from_dataset(ds)
    uids = [s.SOPInstanceUID for s in source]
    by_source = parametric_map.get_pixels_by_source_instance(uids)
    assert by_source.shape == (len(uids), *first.pixel_array.shape)
    for s, pixels in zip(source, by_source):
        np.testing.assert_allclose(pixels, s.pixel_array / SCALE, rtol=1e-6)


def test_a_tilted_series_gets_frames_at_its_instances_positions(tmp_path):
    files = write_tilted_series(tmp_path / "tilted", degrees=20.0, slices=8)
    volume = read_image(tmp_path / "tilted")  # what inference reads: the sheared grid
    anomaly_map = np.asarray(volume[0]) / SCALE

    write_parametric_map(tmp_path / "map.dcm", anomaly_map, tmp_path / "tilted", affine=np.asarray(volume.affine))

    ds = pydicom.dcmread(tmp_path / "map.dcm")
    frames = frames_by_source(ds)
    sources = [pydicom.dcmread(f) for f in files]
    assert len(frames) == len(sources)
    for source in sources:  # the last slice included, where an unsheared grid is furthest off
        values, position = frames[source.SOPInstanceUID]
        np.testing.assert_allclose(position, np.asarray(source.ImagePositionPatient, float), atol=1e-4)
        np.testing.assert_allclose(values, source.pixel_array / SCALE, rtol=1e-6)
    shared = ds.SharedFunctionalGroupsSequence[0]
    np.testing.assert_allclose([float(v) for v in shared.PlaneOrientationSequence[0].ImageOrientationPatient],
                               [float(v) for v in sources[0].ImageOrientationPatient], atol=1e-6)  # fmt: skip


@pytest.mark.parametrize(
    "scale, label, explanation",
    [
        (MapScale("normalised", 0.431, 0.9), "ANOMALY_NORM", "MediCLIP anomaly, normalised: 0.5 = threshold 0.431"),
        (MapScale("probability", 0.431, 0.9), "ANOMALY_PROB", "MediCLIP anomaly probability"),
    ],
)
def test_the_value_mapping_and_window_say_which_scale(tmp_path, scale, label, explanation):
    files = write_series(tmp_path / "series")
    volume = read_image(tmp_path / "series")

    write_parametric_map(tmp_path / "map.dcm", np.asarray(volume[0]) / 1000, tmp_path / "series",
                         affine=np.asarray(volume.affine), scale=scale)  # fmt: skip

    ds = pydicom.dcmread(tmp_path / "map.dcm")
    mapping = ds.SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence[0]
    assert mapping.LUTLabel == label and mapping.LUTExplanation == explanation
    assert (mapping.RealWorldValueSlope, mapping.RealWorldValueIntercept) == (1.0, 0.0)
    assert mapping.MeasurementUnitsCodeSequence[0].CodeValue == "1"  # UCUM: no units
    window = ds.SharedFunctionalGroupsSequence[0].FrameVOILUTSequence[0]
    assert (float(window.WindowCenter), float(window.WindowWidth)) == (0.5, 1.0)
    assert ds.ContentDescription == explanation
    assert len(ds.PerFrameFunctionalGroupsSequence) == len(files)


def test_a_map_off_the_series_grid_or_not_finite_is_refused(tmp_path):
    write_series(tmp_path / "series")
    volume = read_image(tmp_path / "series")
    values = np.asarray(volume[0]) / 1000
    with pytest.raises(ValueError, match="does not cover the DICOM series grid"):
        write_parametric_map(tmp_path / "map.dcm", values[:, :, 1:], tmp_path / "series",
                             affine=np.asarray(volume.affine))  # fmt: skip
    values[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite"):
        write_parametric_map(tmp_path / "map.dcm", values, tmp_path / "series", affine=np.asarray(volume.affine))
    assert not (tmp_path / "map.dcm").exists()

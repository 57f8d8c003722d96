"""The DICOM series scanner (mediclip_monai.data.dicom) on real files: which files, which order, which grid."""

import os
import shutil

import numpy as np
import pydicom
import pytest
from monai.transforms import LoadImage
from pydicom.data import get_testdata_file

from mediclip_monai.data.datalists import DataError
from mediclip_monai.data.dicom import scan_dicom_series, series_from_datasets
from mediclip_monai.io.writers import write_dicom_seg
from tests.dicom_series import write_series

pytestmark = pytest.mark.filterwarnings("ignore:NvImgCodecPydicomReader")

TEST_FILES = os.path.dirname(get_testdata_file("CT_small.dcm"))


def z_positions(*z):
    return [(10.0, 20.0, float(v)) for v in z]


def test_scan_keeps_the_series_images_in_position_order_and_skips_everything_else(tmp_path):
    folder = tmp_path / "series"
    # Numbered against the positions, and file names that sort neither way.
    files = write_series(folder, positions=z_positions(5.0, -2.5, 7.5, 0.0, 2.5), numbers=[2, 5, 1, 4, 3])
    (folder / "README.txt").write_text("not DICOM")
    (folder / ".DS_Store").write_bytes(b"\0" * 200)
    shutil.copy(os.path.join(TEST_FILES, "dicomdirtests", "DICOMDIR"), folder / "DICOMDIR")
    shutil.copy(get_testdata_file("test-SR.dcm"), folder / "report.dcm")
    shutil.copy(get_testdata_file("rtstruct.dcm"), folder / "contours.dcm")
    mask = np.zeros((7, 6, 5), np.uint8)  # a SEG of this very series, written beside it
    write_dicom_seg(folder / "seg.dcm", mask, [pydicom.dcmread(f) for f in files])

    series = scan_dicom_series(folder)

    by_position = [files[i] for i in (1, 3, 4, 0, 2)]
    assert list(series.files) == by_position
    assert [ds.SOPInstanceUID for ds in series.datasets] == [pydicom.dcmread(f).SOPInstanceUID for f in by_position]
    assert series.folder == folder and series.uid == series.datasets[0].SeriesInstanceUID
    assert series.grid_problem == "" and series.shape == (7, 6, 5)
    assert "PixelData" not in series.datasets[0]  # headers only, unless asked
    assert "PixelData" in scan_dicom_series(folder, pixels=True).datasets[0]
    # voxel (column c, row r, slice k) sits at IPP_k + c * 0.7 mm along x + r * 0.8 mm along y (LPS)
    c, r, k = 6, 5, 3
    lps = np.array([10.0 + c * 0.7, 20.0 + r * 0.8, -2.5 + 2.5 * k])
    np.testing.assert_allclose(series.affine @ [c, r, k, 1], [*(lps * [-1, -1, 1]), 1], atol=1e-6)


def test_scan_refuses_folders_without_one_image_series(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("nothing")
    shutil.copy(get_testdata_file("test-SR.dcm"), empty / "report.dcm")
    with pytest.raises(DataError, match=f"{empty}: folder holds no DICOM image files"):
        scan_dicom_series(empty)
    two = tmp_path / "two"
    write_series(two / "a")
    write_series(two / "b")
    for f in (two / "a").iterdir():
        f.rename(two / f"a_{f.name}")
    for f in (two / "b").iterdir():
        f.rename(two / f"b_{f.name}")
    with pytest.raises(DataError, match=f"{two}: folder holds 2 DICOM series .*give one series per folder"):
        scan_dicom_series(two)
    with pytest.raises(DataError, match="not a folder"):
        scan_dicom_series(tmp_path / "missing")


@pytest.mark.parametrize(
    "positions, expected",
    [
        # 2.5 mm apart, the slice at 7.5 missing
        (
            z_positions(0, 2.5, 5, 10, 12.5),
            r"slices 3-4 \(s2.dcm, s3.dcm\) are 5 mm apart, the others 2.5 mm \(1 slice",
        ),
        (z_positions(0, 2.5, 5, 8.5, 11), r"slices 3-4 \(s2.dcm, s3.dcm\) are 3.5 mm apart, the others 2.5 mm;"),
        (z_positions(0, 2.0, 4.5, 7.5, 11.0), r"the spacing varies from 2 to 3.5 mm"),
        (z_positions(0, 2.5, 2.5, 5), r"s1.dcm and s2.dcm lie at the same position .*one of them per folder"),
        ([(10, 20, 0), (10, 20, 2.5), (11, 20, 5), (10, 20, 7.5)], r"shifted in-plane .*s2.dcm by 1.4 pixels"),
    ],
)
def test_a_series_off_a_regular_grid_is_judged_with_the_reason(tmp_path, positions, expected):
    write_series(tmp_path / "series", positions=positions)
    series = scan_dicom_series(tmp_path / "series")
    assert series.affine is None
    with pytest.raises(DataError, match=f"^{tmp_path / 'series'}: .*{expected}"):
        series.check_regular_grid()


def test_mixed_sizes_orientations_and_missing_geometry_are_judged(tmp_path):
    write_series(tmp_path / "sizes", positions=z_positions(0, 2.5))
    write_series(tmp_path / "sizes", positions=z_positions(5), rows=9)  # overwrites s0.dcm, other series UID
    for f in (tmp_path / "sizes").iterdir():
        ds = pydicom.dcmread(f)
        ds.SeriesInstanceUID = "1.2.3"
        ds.save_as(f)
    assert (
        "slices differ in size (rows x columns): 9x7 (1 files), 6x7 (1 files)"
        in scan_dicom_series(tmp_path / "sizes").grid_problem
    )
    files = write_series(tmp_path / "tilted_one", positions=z_positions(0, 2.5, 5))
    ds = pydicom.dcmread(files[1])
    ds.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]  # a localizer mixed in
    ds.save_as(files[1])
    assert "s1.dcm differs from s0.dcm" in scan_dicom_series(tmp_path / "tilted_one").grid_problem
    files = write_series(tmp_path / "no_geometry", positions=z_positions(0, 2.5, 5))
    ds = pydicom.dcmread(files[2])
    del ds.ImagePositionPatient
    ds.save_as(files[2])
    assert "s2.dcm has no ImagePositionPatient" in scan_dicom_series(tmp_path / "no_geometry").grid_problem


def test_rounded_positions_and_gantry_tilt_are_regular(tmp_path):
    jitter = np.random.default_rng(0).uniform(-0.02, 0.02, 6)  # positions rounded to a few hundredths
    write_series(tmp_path / "rounded", positions=z_positions(*(2.5 * np.arange(6) + jitter)))
    assert scan_dicom_series(tmp_path / "rounded").grid_problem == ""
    # Gantry tilt: each slice moves 0.4 mm along y as well; the grid is sheared, and still regular.
    write_series(tmp_path / "tilt", positions=[(10.0, 20.0 + 0.4 * k, 2.5 * k) for k in range(5)])
    tilted = scan_dicom_series(tmp_path / "tilt")
    assert tilted.grid_problem == ""
    np.testing.assert_allclose(tilted.affine[:3, 2], [0.0, -0.4, 2.5])  # RAS


@pytest.mark.parametrize(
    "numbers, expected",
    [
        ([1, 2, 3, 4, 5], ""),
        ([50, 40, 30, 20, 10], ""),  # descending along the positions stacks in (reversed) order too
        ([3, 1, 4, 2, 5], "InstanceNumbers do not follow the slice positions"),
        ([1, 2, None, 4, 5], "s2.dcm has no InstanceNumber"),
        ([1, 2, 2, 4, 5], "InstanceNumber 2 is used by several slices"),
    ],
)
def test_numbering_verdict(tmp_path, numbers, expected):
    write_series(tmp_path / "series", numbers=numbers)
    series = scan_dicom_series(tmp_path / "series")
    assert series.grid_problem == ""
    assert series.numbering_problem == expected


def test_datasets_in_memory_get_the_same_order_and_names(tmp_path):
    files = write_series(tmp_path / "series", positions=z_positions(5, 0, 10, 2.5, 7.5, 12.5))
    datasets = [pydicom.dcmread(f) for f in files]
    series = series_from_datasets(datasets)
    assert list(series.files) == [files[i] for i in (1, 3, 0, 4, 2, 5)]
    assert series.folder == tmp_path / "series"
    np.testing.assert_allclose(series.affine, scan_dicom_series(tmp_path / "series").affine)
    del datasets[5]  # the slice at 12.5 mm: no gap, the series just ends earlier
    assert series_from_datasets(datasets).grid_problem == ""
    del datasets[0]  # the slice at 5 mm: a gap
    assert "slices 2-3 (s3.dcm, s4.dcm) are 5 mm apart" in series_from_datasets(datasets).grid_problem


def test_voxel_order_maps_a_reader_volume_onto_the_series_grid(tmp_path):
    write_series(tmp_path / "series", numbers=[5, 4, 3, 2, 1])
    series = scan_dicom_series(tmp_path / "series", pixels=True)
    volume = LoadImage(reader="PydicomReader", image_only=True)(str(tmp_path / "series"))  # slices reversed
    axes, flipped = series.voxel_order(volume.affine, volume.shape)
    assert (axes, flipped) == ((0, 1, 2), (2,))
    on_grid = np.transpose(np.flip(np.asarray(volume), flipped), axes)
    for k, ds in enumerate(series.datasets):
        np.testing.assert_array_equal(on_grid[:, :, k], ds.pixel_array.T)
    shifted = np.asarray(volume.affine).copy()
    shifted[:3, 3] += shifted[:3, 0]  # one column off
    with pytest.raises(ValueError, match="grid"):
        series.voxel_order(shifted, volume.shape)

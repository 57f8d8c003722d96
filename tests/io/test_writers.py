"""NIfTI map and mask, .seg.nrrd and scores.csv: written, read back with other libraries, same geometry."""

import csv

import nibabel as nib
import nrrd
import numpy as np
import pytest
import SimpleITK as sitk
import torch
from monai.data import MetaTensor

from mediclip_monai.data.loading import read_image
from mediclip_monai.io import (
    write_anomaly_map,
    write_anomaly_mask,
    write_scores_csv,
    write_slicer_segmentation,
)
from tests.dicom_series import pixel_positions, voxel_indices, write_series


def _rotation(ax: float, ay: float, az: float) -> np.ndarray:
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


@pytest.fixture
def oblique_affine():
    """Oblique, anisotropic and not RAS-oriented: the first axis runs right-to-left (det < 0)."""
    affine = np.eye(4)
    affine[:3, :3] = _rotation(0.3, -0.2, 0.5) @ np.diag([-0.7, 1.3, 2.9])
    affine[:3, 3] = [12.5, -40.0, 7.25]
    return affine


# Voxels whose world positions are compared between readers (corners and an interior point).
VOXELS = [(0, 0, 0), (5, 0, 0), (0, 4, 0), (0, 0, 2), (5, 4, 2), (2, 3, 1)]


def _ras_of(affine, ijk):
    return (affine @ np.array([*ijk, 1.0]))[:3]


def _lps_to_ras(point):
    return np.array([-point[0], -point[1], point[2]])


def test_anomaly_map_3d_geometry_in_nibabel_and_simpleitk(tmp_path, oblique_affine):
    rng = np.random.default_rng(0)
    anomaly_map = rng.uniform(-0.5, 1.5, size=(6, 5, 3))  # out-of-range values get clipped
    path = write_anomaly_map(tmp_path / "c" / "c_anomaly_map.nii.gz", anomaly_map, oblique_affine)

    image = nib.load(path)
    assert image.shape == (6, 5, 3)
    assert image.get_data_dtype() == np.float32
    np.testing.assert_allclose(image.affine, oblique_affine, atol=1e-5)
    sform, sform_code = image.get_sform(coded=True)
    qform, qform_code = image.get_qform(coded=True)
    assert (int(sform_code), int(qform_code)) == (1, 1)
    np.testing.assert_allclose(sform, oblique_affine, atol=1e-5)
    np.testing.assert_allclose(qform, oblique_affine, atol=1e-4)
    data = np.asarray(image.dataobj)
    np.testing.assert_allclose(data, np.clip(anomaly_map, 0, 1).astype(np.float32))
    assert data.min() == 0.0 and data.max() == 1.0

    itk_image = sitk.ReadImage(str(path))
    assert itk_image.GetSize() == (6, 5, 3)
    np.testing.assert_allclose(sitk.GetArrayFromImage(itk_image).transpose(2, 1, 0), data)
    for ijk in VOXELS:
        lps = itk_image.TransformIndexToPhysicalPoint(ijk)
        np.testing.assert_allclose(_lps_to_ras(lps), _ras_of(image.affine, ijk), atol=1e-3)


def test_anomaly_mask_3d_is_uint8_binary_with_the_same_geometry(tmp_path, oblique_affine):
    mask = np.zeros((6, 5, 3), dtype=np.int64)
    mask[1:4, 2:4, 1] = 7  # any non-zero is anomalous
    path = write_anomaly_mask(tmp_path / "c_anomaly_mask.nii.gz", mask, oblique_affine)

    image = nib.load(path)
    assert image.get_data_dtype() == np.uint8
    data = np.asarray(image.dataobj)
    assert data.dtype == np.uint8
    np.testing.assert_array_equal(data, (mask > 0).astype(np.uint8))
    np.testing.assert_allclose(image.affine, oblique_affine, atol=1e-5)

    itk_image = sitk.ReadImage(str(path))
    for ijk in VOXELS:
        np.testing.assert_allclose(
            _lps_to_ras(itk_image.TransformIndexToPhysicalPoint(ijk)), _ras_of(oblique_affine, ijk), atol=1e-3
        )


def test_2d_array_gives_a_2d_nifti_of_the_same_size(tmp_path):
    affine = np.diag([0.5, 0.8, 1.0, 1.0])
    anomaly_map = np.linspace(0, 1, 7 * 4).reshape(7, 4)
    map_path = write_anomaly_map(tmp_path / "x_anomaly_map.nii.gz", anomaly_map, affine)
    mask_path = write_anomaly_mask(tmp_path / "x_anomaly_mask.nii.gz", anomaly_map > 0.5, affine)
    for path in (map_path, mask_path):
        image = nib.load(path)
        assert image.shape == (7, 4)
        assert image.header["dim"][0] == 2
        assert sitk.ReadImage(str(path)).GetSize() == (7, 4)
    np.testing.assert_allclose(np.asarray(nib.load(map_path).dataobj), anomaly_map.astype(np.float32))


def test_writers_take_monai_metatensors(tmp_path, oblique_affine):
    """What the inferer hands over: a MetaTensor (float32, maybe a torch dtype) and its torch affine."""
    anomaly_map = MetaTensor(torch.rand(6, 5, 3), affine=torch.as_tensor(oblique_affine))
    path = write_anomaly_map(tmp_path / "m.nii.gz", anomaly_map, anomaly_map.affine)
    np.testing.assert_allclose(nib.load(path).affine, oblique_affine, atol=1e-5)
    np.testing.assert_allclose(np.asarray(nib.load(path).dataobj), anomaly_map.numpy())
    path = write_slicer_segmentation(tmp_path / "m.seg.nrrd", anomaly_map > 0.5, anomaly_map.affine)
    np.testing.assert_array_equal(nrrd.read(str(path))[0], (anomaly_map > 0.5).numpy())


def test_map_refuses_channel_axis_and_nan(tmp_path):
    with pytest.raises(ValueError, match="channel"):
        write_anomaly_map(tmp_path / "a.nii.gz", np.zeros((1, 4, 4, 2)), np.eye(4))
    with pytest.raises(ValueError, match="NaN"):
        write_anomaly_map(tmp_path / "a.nii.gz", np.full((4, 4), np.nan), np.eye(4))
    assert list(tmp_path.iterdir()) == []


def test_seg_nrrd_reads_back_with_slicer_keys_and_the_niftis_world_points(tmp_path, oblique_affine):
    mask = np.zeros((6, 5, 3), dtype=bool)
    mask[2:5, 1:3, 0:2] = True
    mask[0, 4, 2] = True
    seg_path = write_slicer_segmentation(tmp_path / "c" / "c_anomaly.seg.nrrd", mask, oblique_affine)
    nifti_path = write_anomaly_mask(tmp_path / "c" / "c_anomaly_mask.nii.gz", mask, oblique_affine)

    data, header = nrrd.read(str(seg_path))
    np.testing.assert_array_equal(data, mask.astype(np.uint8))
    assert data.dtype == np.uint8
    assert header["space"] == "left-posterior-superior"
    assert list(header["kinds"]) == ["domain", "domain", "domain"]
    assert header["Segment0_Name"] == "anomaly"
    assert header["Segment0_ID"]
    assert int(header["Segment0_LabelValue"]) == 1
    assert int(header["Segment0_Layer"]) == 0
    assert [float(c) for c in header["Segment0_Color"].split()] == pytest.approx([1.0, 0.2, 0.2])
    assert header["Segment0_ColorAutoGenerated"] in ("0", "1")
    assert [int(v) for v in header["Segment0_Extent"].split()] == [0, 5, 0, 4, 0, 2]
    assert "Segment0_Tags" in header
    assert header["Segmentation_MasterRepresentation"] == "Binary labelmap"
    assert header["Segmentation_ContainedRepresentationNames"] == "Binary labelmap|"
    assert header["Segmentation_ReferenceImageExtentOffset"] == "0 0 0"

    nifti_affine = nib.load(nifti_path).affine
    directions, origin = np.asarray(header["space directions"]), np.asarray(header["space origin"])
    for ijk in VOXELS:
        lps = origin + directions.T @ np.asarray(ijk, dtype=float)
        np.testing.assert_allclose(_lps_to_ras(lps), _ras_of(nifti_affine, ijk), atol=1e-4)

    # SimpleITK (what Slicer's reader is built on) agrees on the geometry too.
    itk_image = sitk.ReadImage(str(seg_path))
    for ijk in VOXELS:
        np.testing.assert_allclose(
            _lps_to_ras(itk_image.TransformIndexToPhysicalPoint(ijk)), _ras_of(nifti_affine, ijk), atol=1e-4
        )


def test_seg_nrrd_2d_mask_is_one_slice_volume_and_custom_segment(tmp_path):
    affine = np.diag([0.5, 0.8, 1.0, 1.0])
    affine[:3, 3] = [3.0, 4.0, 5.0]
    mask = np.zeros((7, 4), dtype=np.uint8)
    mask[2, 1] = 1
    path = write_slicer_segmentation(tmp_path / "x.seg.nrrd", mask, affine, segment_name="lesion", color=(0, 1, 0))
    data, header = nrrd.read(str(path))
    assert data.shape == (7, 4, 1)
    np.testing.assert_array_equal(data[..., 0], mask)
    assert header["Segment0_Name"] == "lesion"
    assert [float(c) for c in header["Segment0_Color"].split()] == [0.0, 1.0, 0.0]
    np.testing.assert_allclose(np.asarray(header["space directions"]), np.diag([-0.5, -0.8, 1.0]))
    np.testing.assert_allclose(header["space origin"], [-3.0, -4.0, 5.0])


def test_seg_nrrd_empty_mask_has_empty_extent(tmp_path):
    path = write_slicer_segmentation(tmp_path / "e.seg.nrrd", np.zeros((3, 3, 2)), np.eye(4))
    data, header = nrrd.read(str(path))
    assert not data.any()
    assert header["Segment0_Extent"] == "0 -1 0 -1 0 -1"


def test_scores_csv(tmp_path):
    rows = [
        {"name": "brain_001", "score": np.float32(0.875), "max_slice": 12, "threshold": 0.31, "image_threshold": 0.4,
         "decision": "abnormal"},
        {"name": "xray_7", "score": 0.25, "max_slice": None, "threshold": 0.31, "image_threshold": 0.4,
         "decision": "normal"},
        {"name": "us_3", "score": 1.0, "max_slice": ""},
    ]  # fmt: skip
    path = write_scores_csv(tmp_path / "run" / "scores.csv", rows)
    lines = path.read_text().splitlines()
    # The columns evaluation's cases.csv shares come first, named alike; the decision in words, as there.
    assert lines[0] == "name,score,max_slice,decision,threshold,image_threshold"
    with open(path, newline="") as handle:
        read = list(csv.DictReader(handle))
    assert [r["name"] for r in read] == ["brain_001", "xray_7", "us_3"]
    assert [float(r["score"]) for r in read] == [0.875, 0.25, 1.0]
    assert [r["max_slice"] for r in read] == ["12", "", ""]
    # the decision and the thresholds used; empty when a row does not know them
    assert [(r["decision"], r["threshold"], r["image_threshold"]) for r in read] == [
        ("abnormal", "0.31", "0.4"),
        ("normal", "0.31", "0.4"),
        ("", "", ""),
    ]


def test_an_oblique_single_dicom_image_gets_a_2d_map_that_every_transform_puts_on_its_pixels(tmp_path):
    # MONAI's PydicomReader gives a 2D image the patient's z axis as third column, not the plane's normal
    row = np.array([0.9, 0.3, 0.1]) / np.linalg.norm([0.9, 0.3, 0.1])
    column = np.cross([0.0, -0.2, 1.0], row)
    column /= np.linalg.norm(column)
    (file,) = write_series(tmp_path / "one", positions=[(1.0, 2.0, 3.0)], orientation=(*row, *column))
    image = read_image(file)
    write_anomaly_map(tmp_path / "map.nii.gz", np.asarray(image[0]) / 1000, np.asarray(image.affine))

    written = nib.load(tmp_path / "map.nii.gz")
    data = np.asarray(written.dataobj)
    points, pixels = pixel_positions(file)
    for affine, code in (written.get_sform(coded=True), written.get_qform(coded=True)):
        assert int(code) == 1  # both, equal: whichever a reader takes
        index = voxel_indices(points, np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine, (*data.shape, 1))
        np.testing.assert_allclose(data[index[:2]], pixels / 1000, atol=1e-6)

"""Image reading, intensity scaling and slicing (mediclip_monai.data.loading), on real files."""

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from monai.data import MetaTensor
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

from mediclip_monai.data.datalists import DataError
from mediclip_monai.data.loading import (
    axial_axis,
    case_name,
    load_training_slices,
    read_image,
    scale_intensity,
    slices_to_volume,
    volume_to_slices,
)


def _save_nifti(path, data, affine=None):
    nib.save(nib.Nifti1Image(np.asarray(data), np.eye(4) if affine is None else affine), str(path))
    return path


def _ras_volume(shape=(6, 7, 5), seed=0):
    """A random RAS-ordered volume (axis 0 +x right, 1 +y anterior, 2 +z superior), 2 mm voxels."""
    data = np.random.default_rng(seed).random(shape).astype(np.float32) + 1.0
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = [-5.0, -6.0, -4.0]
    return data, affine


def _write_series(folder, stored, spacing=(0.8, 0.7), gap=2.0, slope=0.5, intercept=-10.0, numbers=None):
    """Axial DICOM series, slices stored (rows, cols) = stored[k], written by pydicom directly."""
    folder.mkdir(parents=True, exist_ok=True)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    for k, pixels in enumerate(stored):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
        ds.file_meta.MediaStorageSOPInstanceUID = sop = generate_uid()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = MRImageStorage, sop, "MR"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.PatientID, ds.PatientName = "TEST", "Test^Series"
        ds.InstanceNumber = k + 1 if numbers is None else numbers[k]
        ds.ImagePositionPatient = [10.0, 20.0, -30.0 + gap * k]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = list(spacing)
        ds.SliceThickness = gap
        ds.Rows, ds.Columns = pixels.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
        ds.PixelData = pixels.astype("<i2").tobytes()
        pydicom.dcmwrite(folder / f"slice{k:03d}.dcm", ds, enforce_file_format=True)
    (folder / "README.txt").write_text("not a DICOM file; must be ignored")
    return folder


# --------------------------------------------------------------------------------------------- reading


def test_read_2d_and_3d_nifti(tmp_path):
    data, affine = _ras_volume()
    vol = read_image(_save_nifti(tmp_path / "vol.nii.gz", data, affine))
    assert isinstance(vol, MetaTensor) and vol.dtype == torch.float32
    assert tuple(vol.shape) == (1, 6, 7, 5)
    np.testing.assert_allclose(vol[0].numpy(), data)
    np.testing.assert_allclose(vol.affine.numpy(), affine)
    assert vol.meta["filename_or_obj"] == str(tmp_path / "vol.nii.gz")

    img = read_image(_save_nifti(tmp_path / "slice.nii", data[:, :, 0].astype(np.int16)))
    assert tuple(img.shape) == (1, 6, 7) and img.dtype == torch.float32
    np.testing.assert_allclose(img[0].numpy(), data[:, :, 0].astype(np.int16))

    one_time_point = read_image(_save_nifti(tmp_path / "t1.nii.gz", data[..., None], affine))
    assert tuple(one_time_point.shape) == (1, 6, 7, 5)


def test_read_png_gray_keeps_row_0_on_top_and_rgb_becomes_luminance(tmp_path):
    rng = np.random.default_rng(1)
    gray = rng.integers(0, 255, (5, 8), dtype=np.uint8)  # H != W catches a transposed reader
    Image.fromarray(gray).save(tmp_path / "gray.png")
    img = read_image(tmp_path / "gray.png")
    assert tuple(img.shape) == (1, 5, 8)
    np.testing.assert_array_equal(img[0].numpy(), gray)

    rgb = rng.integers(0, 255, (5, 8, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    Image.fromarray(np.dstack([rgb, np.full((5, 8), 128, np.uint8)])).save(tmp_path / "rgba.png")
    luminance = rgb @ np.array([0.299, 0.587, 0.114])
    for name in ("rgb.png", "rgba.png"):
        img = read_image(tmp_path / name)
        assert tuple(img.shape) == (1, 5, 8)
        np.testing.assert_allclose(img[0].numpy(), luminance, atol=1e-3)

    Image.fromarray(rgb).save(tmp_path / "photo.jpg", quality=95)
    assert tuple(read_image(tmp_path / "photo.jpg").shape) == (1, 5, 8)


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm"])
def test_read_single_dicom_file(name):
    path = get_testdata_file(name)
    ds = pydicom.dcmread(path)
    img = read_image(path)
    assert tuple(img.shape) == (1, ds.Rows, ds.Columns)  # DICOM rows x columns, row 0 on top
    expected = ds.pixel_array * float(getattr(ds, "RescaleSlope", 1)) + float(getattr(ds, "RescaleIntercept", 0))
    np.testing.assert_allclose(img[0].numpy(), expected)
    # pixel (row 0, column 0) sits at ImagePositionPatient (LPS), i.e. (-x, -y, z) in RAS
    ipp = np.array([float(v) for v in ds.ImagePositionPatient])
    np.testing.assert_allclose(img.affine.numpy()[:3, 3], ipp * [-1, -1, 1], atol=1e-4)
    # one row down moves along the column direction cosines by the row spacing
    col_dir = np.array([float(v) for v in ds.ImageOrientationPatient[3:]]) * [-1, -1, 1]
    np.testing.assert_allclose(img.affine.numpy()[:3, 0], col_dir * float(ds.PixelSpacing[0]), atol=1e-4)
    assert img.meta["filename_or_obj"] == str(path)


def test_read_dicom_series_folder(tmp_path):
    rng = np.random.default_rng(2)
    stored = rng.integers(0, 1000, (4, 5, 6)).astype(np.int16)  # 4 slices of 5 rows x 6 columns
    folder = _write_series(tmp_path / "series", stored)
    vol = read_image(folder)
    # MONAI layout: (columns, rows, slices) with a RAS affine, rescale applied
    assert tuple(vol.shape) == (1, 6, 5, 4)
    np.testing.assert_allclose(vol[0].numpy(), stored.transpose(2, 1, 0) * 0.5 - 10.0)
    assert vol.meta["filename_or_obj"] == str(folder)
    # voxel (column c, row r, slice k) is at IPP_k + c * 0.7 * x + r * 0.8 * y (LPS)
    c, r, k = 5, 4, 3
    lps = np.array([10.0 + c * 0.7, 20.0 + r * 0.8, -30.0 + 2.0 * k])
    np.testing.assert_allclose(vol.affine.numpy() @ [c, r, k, 1], [*(lps * [-1, -1, 1]), 1], atol=1e-4)
    assert axial_axis(vol.affine) == 2

    # slices numbered out of order: the series is still stacked by position (SimpleITK fallback)
    shuffled = read_image(_write_series(tmp_path / "shuffled", stored, numbers=[3, 1, 4, 2]))
    world = vol.affine.numpy() @ [1, 2, 3, 1]
    index = np.linalg.solve(shuffled.affine.numpy(), world)[:3].round().astype(int)
    assert vol[0, 1, 2, 3] == shuffled[0, index[0], index[1], index[2]]


def test_dicom_folder_problems(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("nothing here")
    with pytest.raises(DataError, match="no DICOM image files"):
        read_image(empty)
    two = tmp_path / "two"
    _write_series(two / "a", np.zeros((2, 4, 4), np.int16))
    _write_series(two / "b", np.zeros((2, 4, 4), np.int16))
    for f in (two / "b").glob("*.dcm"):
        f.rename(two / f"b_{f.name}")
    for f in (two / "a").glob("*.dcm"):
        f.rename(two / f"a_{f.name}")
    with pytest.raises(DataError, match="2 DICOM series"):
        read_image(two)


def test_unreadable_files_raise_data_error_naming_the_file(tmp_path):
    (tmp_path / "fake.png").write_bytes(b"not a png at all")
    with pytest.raises(DataError, match="fake.png: not a readable picture"):
        read_image(tmp_path / "fake.png")
    (tmp_path / "fake.dcm").write_bytes(b"\x00" * 64)
    with pytest.raises(DataError, match="fake.dcm: not a DICOM file"):
        read_image(tmp_path / "fake.dcm")
    with pytest.raises(DataError, match="missing.nii.gz: file not found"):
        read_image(tmp_path / "missing.nii.gz")


def test_case_name():
    assert case_name("/a/b/brain_01.nii.gz") == "brain_01"
    assert case_name("/a/b/x.PNG") == "x"
    assert case_name("/a/series_folder") == "series_folder"


# ------------------------------------------------------------------------------------------- intensity


@pytest.mark.parametrize("kind", ["numpy", "torch", "metatensor"])
def test_scale_intensity_constant_gives_zeros_never_nan(kind):
    data = np.full((1, 4, 5), 7.0, np.float32)
    img = {"numpy": data, "torch": torch.from_numpy(data), "metatensor": MetaTensor(data, meta={"k": "v"})}[kind]
    out = scale_intensity(img)
    assert type(out) is type(img)
    assert np.all(np.asarray(out) == 0)
    if kind == "metatensor":
        assert out.meta["k"] == "v"


@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_scale_intensity_is_robust_to_outliers_and_nan(kind):
    data = np.linspace(0.0, 100.0, 1001).astype(np.float32)
    data[0], data[1], data[-1] = -1e6, np.nan, 1e6  # outliers and a NaN
    img = torch.from_numpy(data.copy()) if kind == "torch" else data.copy()
    out = np.asarray(scale_intensity(img))
    assert out.dtype == np.float32
    assert not np.isnan(out).any() and out.min() == 0.0 and out.max() == 1.0
    # the middle of the range is not squashed by the outliers
    assert abs(out[500] - 0.5) < 0.02
    assert out[1] == 0.0


def test_scale_intensity_sparse_image_falls_back_to_min_max():
    data = np.zeros((100, 100), np.float32)
    data[0, 0] = 5.0  # 0.01 % of pixels: both percentiles are 0
    out = scale_intensity(data)
    assert out[0, 0] == 1.0 and out.sum() == 1.0


# ----------------------------------------------------------------------------------------- orientation


def _marker_volume():
    """RAS volume whose only bright voxel is anterior-right on slice 3; slices 0 and 4 are empty."""
    data = np.zeros((6, 8, 5), np.float32)
    data[1:5, 1:7, 1:4] = 1.0  # a box of tissue
    data[5, 7, 3] = 5.0  # most right (+x), most anterior (+y)
    affine = np.diag([1.5, 1.0, 3.0, 1.0])
    return data, affine


def test_volume_to_slices_skips_empty_slices_and_gives_radiological_views():
    data, affine = _marker_volume()
    vol = MetaTensor(torch.from_numpy(data[None]), affine=torch.as_tensor(affine), meta={"filename_or_obj": "v"})
    slices = volume_to_slices(vol, min_foreground=0.05)
    assert [k for k, _ in slices] == [1, 2, 3]
    assert [k for k, _ in volume_to_slices(vol, min_foreground=0)] == [0, 1, 2, 3, 4]
    view = dict(slices)[3]
    # rows = anterior -> posterior (8 voxels in y), columns = patient right -> left (6 voxels in x)
    assert tuple(view.shape) == (1, 8, 6)
    assert view[0, 0, 0] == 5.0  # the anterior-right marker is at the top left
    assert view.meta["slice_index"] == 3 and view.meta["filename_or_obj"] == "v"
    # the slice affine maps display pixels to the same world points as the volume affine
    np.testing.assert_allclose(view.affine.numpy() @ [0, 0, 0, 1], affine @ [5, 7, 3, 1])
    np.testing.assert_allclose(view.affine.numpy() @ [7, 5, 0, 1], affine @ [0, 0, 3, 1])


def test_slices_do_not_depend_on_how_the_volume_is_stored():
    data, affine = _ras_volume(shape=(6, 7, 5))
    ras = MetaTensor(torch.from_numpy(data[None]), affine=torch.as_tensor(affine))
    # the same physical volume stored LPS-flipped and with the superior axis first
    flip = np.array([[-1, 0, 0, 5], [0, -1, 0, 6], [0, 0, 1, 0], [0, 0, 0, 1.0]])
    perm = np.array([[0, 1, 0, 0], [0, 0, 1, 0], [1, 0, 0, 0], [0, 0, 0, 1.0]])  # (z, x, y) -> (x, y, z)
    other_data = data[::-1, ::-1, :].transpose(2, 0, 1).copy()
    other = MetaTensor(torch.from_numpy(other_data[None]), affine=torch.as_tensor(affine @ flip @ perm))
    assert axial_axis(ras.affine) == 2 and axial_axis(other.affine) == 0
    a, b = volume_to_slices(ras, 0), volume_to_slices(other, 0)
    assert [k for k, _ in a] == [k for k, _ in b]
    for (_, sa), (_, sb) in zip(a, b):
        torch.testing.assert_close(sa.as_tensor(), sb.as_tensor())
        np.testing.assert_allclose(sa.affine.numpy(), sb.affine.numpy(), atol=1e-9)
    # and the per-slice results go back to each volume's own layout
    for vol in (ras, other):
        back = slices_to_volume([(k, s * 2.0) for k, s in volume_to_slices(vol, 0)], vol)
        torch.testing.assert_close(back.as_tensor(), vol.as_tensor() * 2.0)
        np.testing.assert_allclose(back.affine.numpy(), vol.affine.numpy())


def test_slices_to_volume_fills_skipped_slices():
    data, affine = _marker_volume()
    vol = MetaTensor(torch.from_numpy(data[None]), affine=torch.as_tensor(affine))
    maps = [(k, torch.ones_like(s)) for k, s in volume_to_slices(vol, min_foreground=0.05)]
    back = slices_to_volume(maps, vol)
    assert tuple(back.shape) == (1, 6, 8, 5)
    assert back[..., 0].sum() == 0 and back[..., 4].sum() == 0 and back[..., 2].min() == 1


def test_2d_image_is_one_slice_unless_it_is_empty_or_constant_like_a_volume_slice():
    img = MetaTensor(torch.rand(1, 5, 6))
    ((k, s),) = volume_to_slices(img)
    assert k == 0 and s is img
    for blank in (torch.zeros(1, 5, 6), torch.full((1, 5, 6), 128.0)):
        assert volume_to_slices(MetaTensor(blank)) == []  # the rule that skips an empty slice of a volume
        assert len(volume_to_slices(MetaTensor(blank), min_foreground=0.0)) == 1


# -------------------------------------------------------------------------------------------- training


def test_load_training_slices_from_2d_and_3d(tmp_path):
    rng = np.random.default_rng(3)
    _save_nifti(tmp_path / "flat.nii.gz", rng.random((30, 20)).astype(np.float32) * 500)
    data, affine = _marker_volume()
    _save_nifti(tmp_path / "vol.nii.gz", data, affine)
    Image.fromarray(rng.integers(0, 255, (12, 9, 3), dtype=np.uint8)).save(tmp_path / "pic.png")
    items = [{"image": str(tmp_path / n)} for n in ("flat.nii.gz", "vol.nii.gz", "pic.png")]
    out = load_training_slices(items, image_size=32)
    assert [o["name"] for o in out] == ["flat", "vol_z1", "vol_z2", "vol_z3", "pic"]
    assert [o["entry"] for o in out] == [0, 1, 1, 1, 2]  # the item each slice comes from
    for o in out:
        assert type(o["image"]) is torch.Tensor  # plain tensor, cheap to pickle
        assert o["image"].dtype == torch.float32 and tuple(o["image"].shape) == (1, 32, 32)
        assert 0.0 <= float(o["image"].min()) and float(o["image"].max()) <= 1.0
    assert float(out[0]["image"].max()) > 0.9  # scaled to the full [0, 1] range


def test_load_training_slices_reports_all_bad_items_at_once(tmp_path):
    _save_nifti(tmp_path / "ok.nii.gz", np.random.default_rng(0).random((8, 8)).astype(np.float32))
    _save_nifti(tmp_path / "empty.nii.gz", np.zeros((8, 8, 3), np.float32))
    Image.fromarray(np.full((8, 8), 128, np.uint8)).save(tmp_path / "grey.png")
    (tmp_path / "bad.nii.gz").write_text("text")
    names = ("ok.nii.gz", "bad.nii.gz", "empty.nii.gz", "grey.png", "gone.png")
    with pytest.raises(DataError) as info:
        load_training_slices([{"image": str(tmp_path / n)} for n in names], image_size=16)
    message = str(info.value)
    assert message.startswith("4 problems")
    assert "bad.nii.gz: not a readable NIfTI" in message
    assert "empty.nii.gz: every slice has less than 5% foreground (empty, constant or nearly black)" in message
    assert "grey.png: the image has less than 5% foreground (empty, constant or nearly black)" in message
    assert "gone.png: file not found" in message


def test_read_nrrd_matches_the_same_nifti(tmp_path):
    import SimpleITK as sitk

    data, affine = _ras_volume()
    affine[:3, :3] = affine[:3, :3] @ np.array([[0, 1, 0], [1, 0, 0], [0, 0, 1.0]])  # not axis-ordered
    nifti = _save_nifti(tmp_path / "v.nii.gz", data, affine)
    sitk.WriteImage(sitk.ReadImage(str(nifti)), str(tmp_path / "v.nrrd"))
    a, b = read_image(nifti), read_image(tmp_path / "v.nrrd")
    assert a.shape == b.shape
    torch.testing.assert_close(a.as_tensor(), b.as_tensor())
    np.testing.assert_allclose(a.affine.numpy(), b.affine.numpy(), atol=1e-5)


def test_dicom_series_with_a_missing_slice_or_uneven_spacing_is_refused_with_the_reason(tmp_path, caplog):
    stored = np.random.default_rng(3).integers(0, 1000, (6, 5, 4)).astype(np.int16)
    gap = _write_series(tmp_path / "gap", stored, gap=2.5)
    (gap / "slice003.dcm").unlink()
    with caplog.at_level("DEBUG", logger="mediclip_monai"):
        with pytest.raises(DataError) as error:
            read_image(gap)
    message = str(error.value)
    assert message.startswith(f"{gap}: ")
    assert "slices 3-4 (slice002.dcm, slice004.dcm) are 5 mm apart, the others 2.5 mm (1 slice missing?)" in message
    assert "export the complete series again" in message
    assert not [r for r in caplog.records if "InstanceNumber" in r.getMessage()]  # no misleading reason

    uneven = _write_series(tmp_path / "uneven", stored, gap=2.5)
    for f in sorted(uneven.glob("*.dcm"))[4:]:  # the last two slices 1 mm further on
        ds = pydicom.dcmread(f)
        ds.ImagePositionPatient[2] = float(ds.ImagePositionPatient[2]) + 1.0
        ds.save_as(f)
    with pytest.raises(DataError, match=r"uneven: .*slices 4-5 \(slice003.dcm, slice004.dcm\) are 3.5 mm apart"):
        read_image(uneven)


@pytest.mark.parametrize("numbers", [[3, 1, 4, 2], [1, 2, None, 4]], ids=["shuffled", "one_missing"])
def test_dicom_series_numbered_out_of_position_order_reads_on_the_right_grid(tmp_path, caplog, numbers):
    stored = np.random.default_rng(4).integers(0, 1000, (4, 5, 6)).astype(np.int16)
    ordered = read_image(_write_series(tmp_path / "ordered", stored))
    folder = _write_series(tmp_path / "numbered", stored, numbers=numbers)
    if None in numbers:
        ds = pydicom.dcmread(folder / "slice002.dcm")
        del ds.InstanceNumber
        ds.save_as(folder / "slice002.dcm")
    with caplog.at_level("INFO", logger="mediclip_monai"):
        volume = read_image(folder)
    # SimpleITK in position order gives exactly PydicomReader's volume of the well-numbered series.
    np.testing.assert_allclose(volume.affine.numpy(), ordered.affine.numpy(), atol=1e-5)
    np.testing.assert_array_equal(volume.numpy(), ordered.numpy())
    reason = "InstanceNumbers do not follow the slice positions" if None not in numbers else "has no InstanceNumber"
    assert any(reason in r.getMessage() and "SimpleITK" in r.getMessage() for r in caplog.records)


def test_tilted_dicom_series_reads_on_its_sheared_grid_or_is_refused(tmp_path):
    """Gantry tilt: each slice is also shifted along y. PydicomReader's affine holds the shear; an ITK image
    cannot, so a tilted series that needs SimpleITK (numbers out of order) is refused, not misplaced."""
    stored = np.random.default_rng(5).integers(0, 1000, (4, 5, 6)).astype(np.int16)
    folder = _write_series(tmp_path / "tilted", stored)
    for k, f in enumerate(sorted(folder.glob("*.dcm"))):
        ds = pydicom.dcmread(f)
        ds.ImagePositionPatient = [10.0, 20.0 + 0.5 * k, -30.0 + 2.0 * k]
        ds.save_as(f)
    volume = read_image(folder)
    np.testing.assert_allclose(volume.affine.numpy() @ [0, 0, 3, 1], [-10.0, -21.5, -24.0, 1], atol=1e-5)
    for f, number in zip(sorted(folder.glob("*.dcm")), [3, 1, 4, 2]):
        ds = pydicom.dcmread(f)
        ds.InstanceNumber = number
        ds.save_as(f)
    with pytest.raises(DataError, match="tilted: SimpleITK's volume of this series does not lie on its slice"):
        read_image(folder)


def test_volume_to_views_stacks_the_slices_of_volume_to_slices_and_inverts():
    from mediclip_monai.data.loading import views_to_volume, volume_to_views

    rng = np.random.default_rng(3)
    for _ in range(10):
        linear = np.linalg.qr(rng.normal(size=(3, 3)))[0] @ np.diag(rng.uniform(0.5, 3, 3))
        affine = np.eye(4)
        affine[:3, :3], affine[:3, 3] = linear, rng.normal(size=3)
        volume = MetaTensor(torch.rand(1, 5, 6, 7), affine=torch.as_tensor(affine))
        views = volume_to_views(volume)
        slices = volume_to_slices(volume, min_foreground=0.0)
        assert views.shape[0] == len(slices)
        for k, view in slices:
            torch.testing.assert_close(views[k], view.as_tensor())
        torch.testing.assert_close(views_to_volume(views, volume.affine), volume.as_tensor())
    picture = torch.rand(1, 4, 5)
    assert volume_to_views(picture).shape == (1, 1, 4, 5)
    torch.testing.assert_close(views_to_volume(volume_to_views(picture), None), picture)


def test_one_voxel_thick_volume_across_the_slice_plane_says_what_would_work(tmp_path):
    pixels = np.random.default_rng(0).random((1, 40, 30)).astype(np.float32)
    path = _save_nifti(tmp_path / "flat.nii.gz", pixels)  # identity affine: axis 2 is superior-inferior
    with pytest.raises(DataError) as error:
        read_image(path)
    message = str(error.value)
    assert str(path) in message and "1 x 40 x 30" in message and "1 x 40 pixels" in message
    assert "2D image of 40 x 30 pixels" in message and "40 x 30 x 1 volume" in message
    # what the message proposes works, and so does the same array when its affine makes axis 0 the slice axis
    for name, data, affine in [
        ("as_2d.nii.gz", pixels[0], np.eye(4)),
        ("slice_last.nii.gz", pixels[0][..., None], np.eye(4)),
        ("axis0_axial.nii.gz", pixels, np.array([[0, 0, 1, 0], [0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1.0]])),
    ]:
        slices = load_training_slices([{"image": str(_save_nifti(tmp_path / name, data, affine))}], image_size=32)
        assert len(slices) == 1 and slices[0]["image"].shape == (1, 32, 32), name

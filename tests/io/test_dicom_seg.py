"""DICOM SEG: a synthetic MR series loaded by MONAI, a mask in MONAI's array order, the SEG read back with
highdicom: every instance referenced, every frame on the right source slice."""

import random

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest
from monai.transforms import LoadImage
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

from mediclip_monai.data.datalists import DataError
from mediclip_monai.data.dicom import scan_dicom_series
from mediclip_monai.data.loading import read_image
from mediclip_monai.io import write_anomaly_mask, write_dicom_seg
from tests.dicom_series import PATIENT_AND_STUDY, strip

ROWS, COLS, N_SLICES = 12, 16, 4  # rows != columns, so a transposed mask cannot pass
PIXEL_SPACING = (0.8, 1.3)  # (between rows, between columns), anisotropic on purpose
SLICE_GAP = 2.5
FLAG = 100  # pixels >= FLAG carry the slice's truth pattern

# MONAI warns that the optional GPU DICOM decoder is missing; irrelevant here.
pytestmark = pytest.mark.filterwarnings("ignore:NvImgCodecPydicomReader")


def _unit(v):
    v = np.asarray(v, dtype=float)
    return v / np.linalg.norm(v)


def make_series(folder, descending_numbers: bool = False) -> list[Dataset]:
    """An oblique MR series in LPS. Each slice holds its own random pattern (value >= FLAG) and the
    slice id in the low digits, so a pixel tells which instance it came from."""
    folder.mkdir(parents=True, exist_ok=True)
    row_dir = _unit([0.9, 0.3, 0.1])
    col_dir = _unit(np.cross(_unit([0.1, -0.2, 1.0]), row_dir))
    normal = np.cross(row_dir, col_dir)
    origin = np.array([-30.0, 12.0, 40.0])
    study, series, frame_of_reference = generate_uid(), generate_uid(), generate_uid()
    rng = np.random.default_rng(7)
    datasets = []
    for k in range(N_SLICES):
        pattern = rng.random((ROWS, COLS)) < 0.3
        pixels = (pattern * FLAG + k + 1).astype(np.uint16)
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MRImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = MRImageStorage
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame_of_reference
        ds.Modality = "MR"
        ds.PatientID, ds.PatientName, ds.PatientBirthDate, ds.PatientSex = "P1", "Test^Patient", "", "O"
        ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "20240101", "120000", "1", ""
        ds.ReferringPhysicianName = ""
        ds.SeriesNumber = 3
        ds.InstanceNumber = N_SLICES - k if descending_numbers else k + 1
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in (*row_dir, *col_dir)]
        ds.ImagePositionPatient = [f"{v:.6f}" for v in origin + k * SLICE_GAP * normal]
        ds.PixelSpacing = list(PIXEL_SPACING)
        ds.SliceThickness = SLICE_GAP
        ds.Rows, ds.Columns = ROWS, COLS
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.PixelData = pixels.tobytes()
        ds.save_as(folder / f"slice_{k:02d}.dcm", enforce_file_format=True)
        datasets.append(ds)
    return datasets


def load_with_monai(folder):
    return LoadImage(reader="PydicomReader", image_only=True)(str(folder))


def by_instance_number(folder):
    return sorted((pydicom.dcmread(p) for p in folder.glob("*.dcm")), key=lambda ds: int(ds.InstanceNumber))


@pytest.mark.parametrize("descending_numbers", [False, True])
def test_monai_pydicom_reader_axis_order(tmp_path, descending_numbers):
    """The fact write_dicom_seg relies on: slices by InstanceNumber, each pixel_array transposed."""
    make_series(tmp_path / "series", descending_numbers)
    volume = np.asarray(load_with_monai(tmp_path / "series"))
    assert volume.shape == (COLS, ROWS, N_SLICES)
    for k, ds in enumerate(by_instance_number(tmp_path / "series")):
        np.testing.assert_array_equal(volume[:, :, k], ds.pixel_array.T)


def read_series(folder):
    """The series' datasets with pixels, sorted along the slice normal, as the SEG writer reads them."""
    return list(scan_dicom_series(folder, pixels=True).datasets)


def test_the_series_scanner_sorts_along_the_normal_and_skips_non_dicom(tmp_path):
    made = make_series(tmp_path / "series", descending_numbers=True)
    (tmp_path / "series" / "notes.txt").write_text("not dicom")
    series = read_series(tmp_path / "series")
    assert [ds.SOPInstanceUID for ds in series] == [ds.SOPInstanceUID for ds in made]  # made ascending


def _seg_frames_by_source(seg) -> dict[str, np.ndarray]:
    """Frame pixels keyed by the SOPInstanceUID each frame says it was derived from."""
    frames = {}
    pixels = seg.pixel_array.reshape(-1, ROWS, COLS)
    for index, item in enumerate(seg.PerFrameFunctionalGroupsSequence):
        uid = item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        frames[uid] = pixels[index]
    return frames


@pytest.mark.parametrize("descending_numbers", [False, True])
@pytest.mark.parametrize("pass_affine", [False, True])
def test_seg_frames_land_on_their_source_instances(tmp_path, descending_numbers, pass_affine):
    folder = tmp_path / "series"
    make_series(folder, descending_numbers)
    volume = load_with_monai(folder)
    mask = np.asarray(volume) >= FLAG  # each slice's own pattern, in MONAI's array order
    source = read_series(folder)
    random.Random(0).shuffle(source)  # the writer must not rely on the order it is given

    path = write_dicom_seg(tmp_path / "out" / "case_anomaly_seg.dcm", mask, source,
                           affine=volume.affine if pass_affine else None)

    seg = hd.seg.segread(path)
    assert seg.SegmentationType == "BINARY"
    assert seg.SegmentSequence[0].SegmentLabel == "anomaly"
    assert seg.SegmentSequence[0].SegmentAlgorithmType == "AUTOMATIC"
    assert seg.SegmentSequence[0].SegmentAlgorithmName == "MediCLIP"
    assert seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0].AlgorithmName == "MediCLIP"
    assert seg.FrameOfReferenceUID == source[0].FrameOfReferenceUID
    referenced = {item.ReferencedSOPInstanceUID
                  for item in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert referenced == {ds.SOPInstanceUID for ds in source}
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == source[0].SeriesInstanceUID

    truth = {ds.SOPInstanceUID: ds.pixel_array >= FLAG for ds in source}
    frames = _seg_frames_by_source(seg)
    assert set(frames) == set(truth)
    for uid, frame in frames.items():
        np.testing.assert_array_equal(frame, truth[uid])

    # highdicom's own lookup agrees, and each frame sits at its source slice's position.
    uids = [ds.SOPInstanceUID for ds in source]
    by_source = seg.get_pixels_by_source_instance(uids, segment_numbers=[1])
    for uid, pixels in zip(uids, by_source):
        np.testing.assert_array_equal(pixels[..., 0], truth[uid])
    positions = {ds.SOPInstanceUID: np.asarray(ds.ImagePositionPatient, float) for ds in source}
    for item in seg.PerFrameFunctionalGroupsSequence:
        uid = item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        frame_position = np.asarray(item.PlanePositionSequence[0].ImagePositionPatient, float)
        np.testing.assert_allclose(frame_position, positions[uid], atol=1e-3)


def test_seg_matches_geometrically_when_another_reader_reorders_axes(tmp_path):
    """A reader giving (rows, columns, slices) with the slice axis reversed, plus its affine, works too."""
    folder = tmp_path / "series"
    make_series(folder)
    volume = load_with_monai(folder)
    mask = np.asarray(volume) >= FLAG
    # Re-index: new[j, i, k'] = old[i, j, n-1-k']; the affine follows the same index change.
    other = np.flip(mask.transpose(1, 0, 2), axis=2)
    index_change = np.array([[0, 1, 0, 0], [1, 0, 0, 0], [0, 0, -1, N_SLICES - 1], [0, 0, 0, 1]], dtype=float)
    other_affine = np.asarray(volume.affine) @ index_change
    source = read_series(folder)

    path = write_dicom_seg(tmp_path / "seg.dcm", other, source, affine=other_affine)
    frames = _seg_frames_by_source(hd.seg.segread(path))
    for ds in source:
        np.testing.assert_array_equal(frames[ds.SOPInstanceUID], ds.pixel_array >= FLAG)


def test_empty_slices_are_omitted_and_an_empty_mask_still_writes(tmp_path):
    folder = tmp_path / "series"
    make_series(folder)
    source = read_series(folder)
    mask = np.zeros((COLS, ROWS, N_SLICES), dtype=np.uint8)
    mask[3, 5, 1] = 1
    seg = hd.seg.segread(write_dicom_seg(tmp_path / "one.dcm", mask, source))
    assert int(seg.NumberOfFrames) == 1
    referenced = {item.ReferencedSOPInstanceUID
                  for item in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert referenced == {ds.SOPInstanceUID for ds in source}
    # MONAI order: slice 1 by InstanceNumber (= position here), pixel (row 5, column 3).
    frame = _seg_frames_by_source(seg)[source[1].SOPInstanceUID]
    assert frame[5, 3] == 1 and frame.sum() == 1

    empty = hd.seg.segread(write_dicom_seg(tmp_path / "empty.dcm", np.zeros_like(mask), source))
    assert not empty.pixel_array.any()


def test_single_image_2d_mask(tmp_path):
    """A single DICOM file loads as 2D (columns, rows); its 2D mask becomes a one-frame SEG."""
    make_series(tmp_path / "series")
    single = tmp_path / "single"
    single.mkdir()
    (tmp_path / "series" / "slice_02.dcm").rename(single / "image.dcm")
    image = load_with_monai(single / "image.dcm")
    assert image.shape == (COLS, ROWS)
    source = read_series(single)
    seg = hd.seg.segread(write_dicom_seg(tmp_path / "seg.dcm", np.asarray(image) >= FLAG, source,
                                         affine=image.affine))
    np.testing.assert_array_equal(_seg_frames_by_source(seg)[source[0].SOPInstanceUID],
                                  source[0].pixel_array >= FLAG)


def test_seg_refuses_a_mask_that_is_not_on_the_series_grid(tmp_path):
    folder = tmp_path / "series"
    make_series(folder)
    source = read_series(folder)
    with pytest.raises(ValueError, match="grid"):
        write_dicom_seg(tmp_path / "bad.dcm", np.zeros((ROWS, COLS, N_SLICES)), source)  # not transposed
    shifted = np.asarray(load_with_monai(folder).affine).copy()
    shifted[:3, 3] += shifted[:3, 2]  # one slice off
    with pytest.raises(ValueError, match="grid"):
        write_dicom_seg(tmp_path / "bad.dcm", np.zeros((COLS, ROWS, N_SLICES)), source, affine=shifted)
    scrambled = list(source)
    scrambled[1].InstanceNumber, scrambled[2].InstanceNumber = 3, 2
    with pytest.raises(ValueError, match="InstanceNumber"):
        write_dicom_seg(tmp_path / "bad.dcm", np.zeros((COLS, ROWS, N_SLICES)), scrambled)
    assert not (tmp_path / "bad.dcm").exists()


# --- sources from anonymised or minimal exports, and series that are not one regular grid -------------

# The type 2 attributes issue 10 names, each alone, then every patient/study one at once.
ANONYMISED = ["PatientBirthDate", "PatientSex", "StudyTime", "AccessionNumber", "ReferringPhysicianName", "StudyID"]


@pytest.mark.parametrize(
    "removed", [[name] for name in ANONYMISED] + [list(PATIENT_AND_STUDY)], ids=[*ANONYMISED, "all"]
)
def test_an_anonymised_series_still_gets_a_seg_on_its_instances(tmp_path, removed):
    folder = tmp_path / "series"
    make_series(folder)
    files = sorted(folder.glob("*.dcm"))
    strip(files, removed)
    on_disk = {f: f.read_bytes() for f in files}
    volume = load_with_monai(folder)
    mask = np.asarray(volume) >= FLAG

    path = write_dicom_seg(tmp_path / "from_folder.dcm", mask, folder, affine=volume.affine)  # a folder works too
    datasets = read_series(folder)
    path_2 = write_dicom_seg(tmp_path / "from_datasets.dcm", mask, datasets, affine=volume.affine)

    assert {f: f.read_bytes() for f in files} == on_disk  # the user's files are untouched
    assert not any(name in ds for ds in datasets for name in removed)  # and so are the datasets given
    for written in (path, path_2):
        seg = hd.seg.segread(written)
        references = seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence
        assert {item.ReferencedSOPInstanceUID for item in references} == {ds.SOPInstanceUID for ds in datasets}
        frames = _seg_frames_by_source(seg)
        for ds in datasets:
            np.testing.assert_array_equal(frames[ds.SOPInstanceUID], ds.pixel_array >= FLAG)
        raw = pydicom.dcmread(written)
        assert raw.StudyInstanceUID == datasets[0].StudyInstanceUID
        for name in removed:  # type 2: present and empty
            assert name in raw and raw[name].value in ("", None)


def test_a_source_without_the_uids_a_seg_references_is_a_clear_error(tmp_path):
    folder = tmp_path / "series"
    make_series(folder)
    strip([folder / "slice_02.dcm"], ["StudyInstanceUID"])
    with pytest.raises(DataError, match=r"slice_02.dcm: no StudyInstanceUID, which a DICOM SEG or Parametric Map"):
        write_dicom_seg(tmp_path / "seg.dcm", np.zeros((COLS, ROWS, N_SLICES)), folder)
    assert not (tmp_path / "seg.dcm").exists()


def test_a_series_with_a_missing_slice_gets_no_seg(tmp_path):
    folder = tmp_path / "series"
    make_series(folder)
    source = read_series(folder)
    (folder / "slice_01.dcm").unlink()
    for given in (folder, [ds for ds in source if ds.InstanceNumber != 2]):
        with pytest.raises(DataError, match=r"slices 1-2 \(slice_00.dcm, slice_02.dcm\) are 5 mm apart"):
            write_dicom_seg(tmp_path / "seg.dcm", np.zeros((COLS, ROWS, N_SLICES - 1)), given)
    assert not (tmp_path / "seg.dcm").exists()


def test_a_shuffled_series_read_by_simpleitk_gives_a_seg_and_a_nifti_that_agree(tmp_path):
    folder = tmp_path / "series"
    made = make_series(folder)
    for f, number in zip(sorted(folder.glob("*.dcm")), [3, 1, 4, 2]):
        ds = pydicom.dcmread(f)
        ds.InstanceNumber = number
        ds.save_as(f)
    volume = read_image(folder)  # SimpleITK, in position order
    mask = volume[0].numpy() >= FLAG
    seg = hd.seg.segread(write_dicom_seg(tmp_path / "seg.dcm", mask, folder, affine=volume.affine))
    nifti = nib.load(write_anomaly_mask(tmp_path / "mask.nii.gz", mask, volume.affine))
    truth = {ds.SOPInstanceUID: ds.pixel_array >= FLAG for ds in made}
    frames = _seg_frames_by_source(seg)
    to_voxel = np.linalg.inv(nifti.affine)
    nifti_mask = np.asarray(nifti.dataobj)
    for ds in made:
        np.testing.assert_array_equal(frames[ds.SOPInstanceUID], truth[ds.SOPInstanceUID])
        # the NIfTI voxel at each source pixel's world position holds that pixel's mask value
        row_dir, col_dir = np.asarray(ds.ImageOrientationPatient, float).reshape(2, 3)
        ipp = np.asarray(ds.ImagePositionPatient, float)
        for r, c in [(0, 0), (ROWS - 1, COLS - 1), (5, 3), (2, 11)]:
            lps = ipp + c * PIXEL_SPACING[1] * row_dir + r * PIXEL_SPACING[0] * col_dir
            index = (to_voxel @ [-lps[0], -lps[1], lps[2], 1.0])[:3]
            assert np.allclose(index, index.round(), atol=1e-3)
            assert nifti_mask[tuple(index.round().astype(int))] == truth[ds.SOPInstanceUID][r, c]

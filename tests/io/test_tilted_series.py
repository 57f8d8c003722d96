"""A gantry-tilted DICOM series (20 degrees): every output puts each voxel where the series' own tags put
its pixel, checked instance by instance from ImagePositionPatient/ImageOrientationPatient/PixelSpacing,
up to the last slice, where a grid that ignores the tilt is furthest off."""

import logging

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
import slicerio

from mediclip_monai.data.loading import read_image
from mediclip_monai.io import write_anomaly_map, write_anomaly_mask, write_dicom_seg, write_slicer_segmentation
from tests.dicom_series import FLAG, pixel_positions, voxel_indices, write_series, write_tilted_series

pytestmark = pytest.mark.filterwarnings("ignore:NvImgCodecPydicomReader")

RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def nifti_transforms(image) -> dict[str, np.ndarray]:
    """Each voxel-to-LPS transform a NIfTI reader may take: the sform and the qform, where their code is set."""
    transforms = {}
    for name, (affine, code) in (("sform", image.get_sform(coded=True)), ("qform", image.get_qform(coded=True))):
        if int(code) > 0:
            transforms[name] = RAS_TO_LPS @ affine
    return transforms


@pytest.fixture
def tilted(tmp_path, caplog):
    """The series' files (last = last slice) and the volume inference reads from it."""
    files = write_tilted_series(tmp_path / "tilted", degrees=20.0, slices=8)
    with caplog.at_level(logging.WARNING, logger="mediclip_monai.data.loading"):
        volume = read_image(tmp_path / "tilted")
    assert "the slices step 20.0 degrees off their normal (gantry tilt)" in caplog.text
    return files, volume


def test_nifti_map_and_mask_put_every_instance_pixel_at_its_tag_position(tilted, tmp_path):
    files, volume = tilted
    values = np.asarray(volume[0])
    affine = np.asarray(volume.affine)
    write_anomaly_map(tmp_path / "map.nii.gz", values / values.max(), affine)
    write_anomaly_mask(tmp_path / "mask.nii.gz", values >= FLAG, affine)

    for name, expected in (("map.nii.gz", lambda p: p / values.max()), ("mask.nii.gz", lambda p: p >= FLAG)):
        image = nib.load(tmp_path / name)
        data = np.asarray(image.dataobj)
        transforms = nifti_transforms(image)
        # a qform cannot shear: the file has the sform alone, so no reader takes a grid without the tilt
        assert list(transforms) == ["sform"]
        for path in files:  # each instance, the last slice included
            points, pixels = pixel_positions(path)
            index = voxel_indices(points, transforms["sform"], data.shape)
            np.testing.assert_allclose(data[index], expected(pixels), atol=1e-6, err_msg=f"{name}, {path.name}")
        # ITK-based readers, which cannot hold a sheared grid, refuse the file rather than misplace it
        with pytest.raises(RuntimeError, match="orthonormal"):
            sitk.ReadImage(str(tmp_path / name))


def test_seg_nrrd_read_with_slicerio_puts_every_instance_pixel_at_its_tag_position(tilted, tmp_path):
    files, volume = tilted
    values = np.asarray(volume[0])
    write_slicer_segmentation(tmp_path / "case.seg.nrrd", values >= FLAG, np.asarray(volume.affine))

    segmentation = slicerio.read_segmentation(str(tmp_path / "case.seg.nrrd"))
    segment = slicerio.segment_from_name(segmentation, "anomaly")
    voxels = segmentation["voxels"]
    for path in files:
        points, pixels = pixel_positions(path)
        index = voxel_indices(points, segmentation["ijkToLPS"], voxels.shape)
        np.testing.assert_array_equal(voxels[index] == segment["labelValue"], pixels >= FLAG, err_msg=path.name)


def test_dicom_seg_frames_have_the_positions_and_pixels_of_their_source_instances(tilted, tmp_path):
    files, volume = tilted
    values = np.asarray(volume[0])
    write_dicom_seg(tmp_path / "seg.dcm", values >= FLAG, files[0].parent, affine=np.asarray(volume.affine))

    seg = pydicom.dcmread(tmp_path / "seg.dcm")
    sources = {ds.SOPInstanceUID: ds for ds in map(pydicom.dcmread, files)}
    frames = seg.pixel_array.reshape(-1, *values.shape[1::-1])
    shared = seg.SharedFunctionalGroupsSequence[0]
    np.testing.assert_allclose(
        [float(v) for v in shared.PlaneOrientationSequence[0].ImageOrientationPatient],
        [float(v) for v in sources[seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0]
                                   .ReferencedSOPInstanceUID].ImageOrientationPatient],
    )  # fmt: skip
    seen = []
    for frame, item in zip(frames, seg.PerFrameFunctionalGroupsSequence):
        source = sources[item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID]
        np.testing.assert_allclose(
            [float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient],
            [float(v) for v in source.ImagePositionPatient],
            atol=1e-4,
        )
        np.testing.assert_array_equal(frame, source.pixel_array >= FLAG)
        seen.append(source.SOPInstanceUID)
    assert sorted(seen) == sorted(sources)  # one frame per instance, the last slice included
    # highdicom's own reading agrees
    by_source = hd.seg.segread(tmp_path / "seg.dcm").get_pixels_by_source_instance(list(sources), segment_numbers=[1])
    for ds, pixels in zip(sources.values(), by_source):
        np.testing.assert_array_equal(pixels[..., 0], ds.pixel_array >= FLAG)


def test_a_series_with_rounded_positions_keeps_its_qform_for_itk_readers(tmp_path):
    # positions rounded to a hundredth of a millimetre: a few hundredths of a voxel off a plain grid
    jitter = np.random.default_rng(0).uniform(-0.005, 0.005, (6, 3))
    files = write_series(tmp_path / "rounded", positions=[(10.0, 20.0, 2.5 * k) + jitter[k] for k in range(6)])
    volume = read_image(tmp_path / "rounded")
    write_anomaly_map(tmp_path / "map.nii.gz", np.asarray(volume[0]) / 1000, np.asarray(volume.affine))

    assert list(nifti_transforms(nib.load(tmp_path / "map.nii.gz"))) == ["sform", "qform"]
    itk_map = sitk.ReadImage(str(tmp_path / "map.nii.gz"))
    last, _ = pixel_positions(files[-1])
    for point in last.reshape(-1, 3):
        index = np.asarray(itk_map.TransformPhysicalPointToContinuousIndex(point))
        np.testing.assert_allclose(index, np.round(index), atol=0.05)

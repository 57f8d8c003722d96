"""Writing small, real DICOM series for tests: any slice positions, numbering, orientation or missing tags.

Every slice holds its own random pattern (values >= FLAG) plus its slice index + 1 in the low digits,
so a pixel tells which instance it came from.
"""

from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

FLAG = 100
# The type 2 patient/study attributes that anonymised or minimal exports often drop.
PATIENT_AND_STUDY = tuple(
    "PatientName PatientID PatientBirthDate PatientSex StudyDate StudyTime ReferringPhysicianName StudyID "
    "AccessionNumber".split()
)


def write_series(
    folder,
    positions=None,
    numbers=None,
    orientation=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
    rows=6,
    columns=7,
    spacing=(0.8, 0.7),
    seed=0,
) -> list[Path]:
    """Write one MR series, one file ``s<k>.dcm`` per entry of ``positions`` (LPS, mm).

    Args:
        positions: ImagePositionPatient of each slice; default five slices 2.5 mm apart along +z.
        numbers: InstanceNumber of each slice (``None`` entries leave the tag out); default 1, 2, ...
        orientation: ImageOrientationPatient shared by all slices.

    Returns:
        the files, in the order of ``positions``.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if positions is None:
        positions = [(10.0, 20.0, -30.0 + 2.5 * k) for k in range(5)]
    numbers = list(range(1, len(positions) + 1)) if numbers is None else numbers
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    rng = np.random.default_rng(seed)
    files = []
    for k, (position, number) in enumerate(zip(positions, numbers)):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
        ds.file_meta.MediaStorageSOPInstanceUID = sop = generate_uid()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = MRImageStorage, sop, "MR"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Test^Series", "T1", "19700101", "O"
        ds.StudyDate, ds.StudyTime, ds.ReferringPhysicianName = "20240101", "120000", "Ref^Doctor"
        ds.StudyID, ds.AccessionNumber, ds.SeriesNumber = "7", "ACC1", 3
        if number is not None:
            ds.InstanceNumber = number
        ds.ImagePositionPatient = [f"{float(v):.6f}" for v in position]
        ds.ImageOrientationPatient = [f"{float(v):.6f}" for v in orientation]
        ds.PixelSpacing = list(spacing)
        ds.Rows, ds.Columns = rows, columns
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        pixels = (rng.random((rows, columns)) < 0.3) * FLAG + k + 1
        ds.PixelData = pixels.astype("<u2").tobytes()
        path = folder / f"s{k}.dcm"
        pydicom.dcmwrite(path, ds, enforce_file_format=True)
        files.append(path)
    return files


def strip(files, attributes) -> None:
    """Remove ``attributes`` from every file, as an anonymiser or a minimal export would."""
    for path in files:
        ds = pydicom.dcmread(path)
        for name in attributes:
            if name in ds:
                delattr(ds, name)
        ds.save_as(path)


def write_tilted_series(folder, degrees=20.0, slices=8, rows=12, columns=10, step=2.5) -> list[Path]:
    """A CT series with a gantry tilt: image planes tilted by ``degrees`` about the patient's left-right
    axis, positions stepping along the table (z), so each slice steps ``degrees`` off its normal."""
    tilt = np.deg2rad(degrees)
    orientation = (1.0, 0.0, 0.0, 0.0, np.cos(tilt), -np.sin(tilt))
    positions = [(-4.0, -6.0, -30.0 + step * k) for k in range(slices)]
    return write_series(folder, positions=positions, orientation=orientation, rows=rows, columns=columns)


def pixel_positions(path) -> tuple[np.ndarray, np.ndarray]:
    """One instance's pixels and their LPS positions, from that instance's own tags alone.

    Returns:
        ``(points, pixels)``: ``points[r, c]`` is the position of row ``r``, column ``c`` (mm, LPS) from
        ImagePositionPatient, ImageOrientationPatient and PixelSpacing; ``pixels`` the pixel array.
    """
    ds = pydicom.dcmread(path)
    origin = np.asarray(ds.ImagePositionPatient, dtype=float)
    orientation = np.asarray(ds.ImageOrientationPatient, dtype=float)
    between_rows, between_columns = (float(v) for v in ds.PixelSpacing)
    r, c = np.meshgrid(np.arange(ds.Rows), np.arange(ds.Columns), indexing="ij")
    points = (
        origin
        + c[..., None] * between_columns * orientation[:3]  # along a row: the row direction
        + r[..., None] * between_rows * orientation[3:]  # down a column: the column direction
    )
    return points, ds.pixel_array


def voxel_indices(points, lps_affine, shape) -> tuple[np.ndarray, ...]:
    """The voxels that a voxel-to-LPS affine puts at ``points`` (..., 3), as an index tuple.

    Asserts that each point is a voxel centre (within 1e-3 voxels) inside a grid of ``shape``.
    """
    homogeneous = np.concatenate([points, np.ones((*points.shape[:-1], 1))], axis=-1)
    index = (homogeneous @ np.linalg.inv(lps_affine).T)[..., :3]
    np.testing.assert_allclose(index, np.round(index), atol=1e-3)  # on a voxel centre, not between voxels
    index = np.round(index).astype(int)
    assert (index >= 0).all() and (index < np.asarray(shape)).all()
    return tuple(np.moveaxis(index, -1, 0))

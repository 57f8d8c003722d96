"""Writers for MediCLIP's inference outputs: anomaly map and mask (NIfTI), 3D Slicer segmentation
(``.seg.nrrd``), DICOM SEG, and the run's ``scores.csv``; and the registry of a case's outputs
(`CASE_WRITERS`), from which inference.json's ``outputs`` and the MONAI Label app choose theirs: a new output
is one function registered with `case_writer` and its name in that list.

Arrays come in the *input's* voxel grid, as MONAI loaded it: 2D ``(H, W)`` or 3D ``(H, W, D)``, no
channel axis, plus the 4x4 voxel-to-world affine in MONAI's RAS convention (``MetaTensor.affine`` from
``LoadImage``, for NIfTI and DICOM alike). Each writer keeps that grid, so every output overlays the
source image in 3D Slicer, ITK-SNAP or OHIF without resampling. Files are written atomically
(:func:`mediclip_monai.io.atomic.atomic_write`) and parent folders are created.

Axis order of a DICOM series loaded by MONAI 1.6's ``PydicomReader`` (``LoadImage(reader="PydicomReader")``,
default ``swap_ij=True``), read from ``monai/data/image_reader.py``:

* the slices are stacked on the last axis in ascending **InstanceNumber** order (not by position);
  the affine's slice column is ``(IPP_last - IPP_first) / (n - 1)`` over that order, so ``k`` runs
  along or against the slice normal depending on how the scanner numbered the instances;
* each slice's ``pixel_array`` (rows, columns) is transposed: ``volume[i, j, k] ==
  pixel_array_of_instance_k[j, i]``, i.e. axis 0 is the **column** index (along the DICOM row
  direction, spacing ``PixelSpacing[1]``) and axis 1 the **row** index (along the column direction,
  spacing ``PixelSpacing[0]``);
* the affine is converted from LPS to RAS (x and y negated).

:func:`write_dicom_seg` undoes exactly this, and when given the volume's affine it matches the mask
grid to the series geometrically, so any reader's order works.
"""

from __future__ import annotations

import copy
import csv
import gzip
import importlib.metadata
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from monai.utils import convert_to_numpy

from ..data.dicom import DicomSeries, scan_dicom_series, series_from_datasets
from ..data.loading import SHEAR_TOLERANCE_VOXELS, shear_voxels
from ..decisions.map_scale import MapScale
from ..errors import DataError
from .atomic import atomic_write

__all__ = [
    "CASE_WRITERS",
    "CaseArrays",
    "CaseWriter",
    "case_writer",
    "write_anomaly_map",
    "write_anomaly_mask",
    "write_dicom_seg",
    "write_scores_csv",
    "write_slicer_segmentation",
]

# RAS <-> LPS: negate the first two world axes (the transform is its own inverse).
_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])

# One terminology for the anomaly segment in both formats: SNOMED CT "Morphologically abnormal
# structure" / "Lesion", the closest standard pair to "something the model finds abnormal".
_CATEGORY = ("SCT", "49755003", "Morphologically Abnormal Structure")
_TYPE = ("SCT", "52988006", "Lesion")


def _package_version() -> str:
    try:
        return importlib.metadata.version("mediclip-monai")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _check_spatial(array: np.ndarray, what: str) -> None:
    if array.ndim not in (2, 3):
        raise ValueError(
            f"{what} must be 2D (H, W) or 3D (H, W, D) without a channel axis, got shape {array.shape}; "
            "squeeze the channel first."
        )


def _affine_4x4(affine, ndim: int) -> np.ndarray:
    """The voxel-to-world affine as a float64 4x4; a 3x3 (2D) affine is embedded with a unit third axis."""
    affine = convert_to_numpy(affine).astype(np.float64)
    if affine.shape == (3, 3) and ndim == 2:
        full = np.eye(4)
        full[:2, :2] = affine[:2, :2]
        full[:2, 3] = affine[:2, 2]
        return full
    if affine.shape != (4, 4):
        raise ValueError(f"affine must be 4x4 (or 3x3 for a 2D array), got shape {affine.shape}")
    if not np.all(np.isfinite(affine)):
        raise ValueError("affine has non-finite values")
    return affine


# gzip level of the float anomaly map: 0 stores it in the gzip container uncompressed. A smooth float32 map
# hardly compresses (level 1: 12% smaller for 30x the time, 1.4 s for a 197 x 233 x 189 volume on one core,
# longer than the network takes for it on a GPU), while masks shrink 200x at level 1 in milliseconds.
MAP_GZIP_LEVEL = 0


def _normal_third_axis(affine: np.ndarray) -> np.ndarray:
    """A 2D grid's affine with the plane's unit normal as its third column (on the side the column points to).

    A 2D grid has no slice step, so no voxel's position depends on that column and readers fill it at will
    (MONAI's PydicomReader: the patient's z axis, whatever the plane). The normal keeps an oblique plane's
    grid unsheared, so a NIfTI qform and ITK hold it exactly.
    """
    affine = affine.copy()
    normal = np.cross(affine[:3, 0], affine[:3, 1])
    normal /= np.linalg.norm(normal)
    affine[:3, 2] = -normal if normal @ affine[:3, 2] < 0 else normal
    return affine


def _write_nifti(path, data: np.ndarray, affine: np.ndarray, gzip_level: int = 1, description: str = "") -> Path:
    if data.ndim == 2:
        affine = _normal_third_axis(affine)
    image = nib.Nifti1Image(data, affine)
    # Same geometry in sform and qform, both "scanner" (code 1): nibabel prefers the sform, ITK/SimpleITK
    # may take the qform; with both set and equal, every reader places the map on the source image.
    image.set_sform(affine, code=1)
    image.set_qform(affine, code=1)
    if shear_voxels(affine, data.shape) > SHEAR_TOLERANCE_VOXELS:
        # A qform cannot shear: the sheared grid (gantry tilt) lives in the sform alone. With a qform, ITK
        # readers would place the voxels on the nearest unsheared grid; without one they refuse the file.
        image.set_qform(None, code=0)
    image.set_data_dtype(data.dtype)
    image.header.set_xyzt_units("mm", "sec")
    image.header["descrip"] = description[:79]  # the header's one free-text field (80 bytes)
    path = Path(path)
    with atomic_write(path) as tmp:
        if path.name.endswith(".gz"):
            with gzip.open(tmp, "wb", compresslevel=gzip_level) as f:
                f.write(image.to_bytes())
        else:
            nib.save(image, tmp)
    return path


def write_anomaly_map(
    path: str | os.PathLike, anomaly_map, affine, gzip_level: int = MAP_GZIP_LEVEL, description: str = ""
) -> Path:
    """Write an anomaly probability map as float32 NIfTI.

    Args:
        path: destination, normally ``<name>/<name>_anomaly_map.nii.gz``.
        anomaly_map: ``(H, W)`` or ``(H, W, D)`` anomaly probabilities in the input's voxel grid; values
            are clipped to [0, 1]. NaN or inf is refused (it means a broken model output).
        affine: 4x4 voxel-to-world matrix in RAS millimetres (``MetaTensor.affine``).
        gzip_level: compression of a ``.nii.gz`` file, 0 (stored, the default: see `MAP_GZIP_LEVEL`) to 9.
        description: what the values are (``map_scale.MapScale.label``), in the header's ``descrip`` field.

    Returns:
        ``path`` as a Path. A 2D array gives a 2D NIfTI of exactly that shape.
    """
    data = convert_to_numpy(anomaly_map).astype(np.float32)
    _check_spatial(data, "anomaly_map")
    if not np.all(np.isfinite(data)):
        raise ValueError("anomaly_map has NaN or infinite values")
    data = np.clip(data, 0.0, 1.0)
    return _write_nifti(path, data, _affine_4x4(affine, data.ndim), gzip_level, description)


def write_anomaly_mask(path: str | os.PathLike, mask, affine) -> Path:
    """Write a binary anomaly mask as uint8 NIfTI (0 normal, 1 anomalous; any non-zero input is 1).

    Same shape and geometry rules as :func:`write_anomaly_map`.
    """
    data = (convert_to_numpy(mask) > 0).astype(np.uint8)
    _check_spatial(data, "mask")
    return _write_nifti(path, data, _affine_4x4(affine, data.ndim))


def _to_3d_grid(mask: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A 2D mask and its affine as a one-slice volume; the slice axis is the in-plane normal (1 mm)."""
    if mask.ndim == 3:
        return mask, affine
    return mask[..., None], _normal_third_axis(affine)


def write_slicer_segmentation(
    path: str | os.PathLike,
    mask,
    affine,
    segment_name: str = "anomaly",
    color: Sequence[float] = (1.0, 0.2, 0.2),
    fields: Mapping[str, str] | None = None,
) -> Path:
    """Write a binary mask as a 3D Slicer segmentation file (``.seg.nrrd``) with one segment.

    Follows what Slicer's ``vtkMRMLSegmentationStorageNode`` writes for a single-layer binary labelmap:
    a 3D unsigned-char NRRD in ``left-posterior-superior`` space, with ``Segment0_*`` and
    ``Segmentation_*`` keys, so Slicer loads it as a segmentation (name and colour kept), not as a
    volume.

    Args:
        path: destination, normally ``<name>/<name>_anomaly.seg.nrrd``.
        mask: ``(H, W)`` or ``(H, W, D)`` binary mask in the input's voxel grid (non-zero = anomalous).
            A 2D mask is written as a one-slice volume.
        affine: 4x4 voxel-to-world matrix in RAS millimetres; converted to LPS for the file.
        segment_name: the segment's name shown in Slicer.
        color: segment colour, RGB in [0, 1].
        fields: further header fields (NRRD key/value pairs, which Slicer keeps), e.g. the map's scale.
    """
    import nrrd  # pynrrd; imported here so the NIfTI writers do not need it

    data = (convert_to_numpy(mask) > 0).astype(np.uint8)
    _check_spatial(data, "mask")
    data, ras_affine = _to_3d_grid(data, _affine_4x4(affine, data.ndim))
    lps_affine = _RAS_TO_LPS @ ras_affine

    # Slicer writes the extent of the segment's labelmap, and "0 -1 0 -1 0 -1" for an empty segment.
    if data.any():
        extent = " ".join(f"0 {size - 1}" for size in data.shape)
    else:
        extent = "0 -1 0 -1 0 -1"
    category, seg_type = _CATEGORY, _TYPE
    terminology = (
        "Segmentation category and type - 3D Slicer General Anatomy list"
        f"~{category[0]}^{category[1]}^{category[2]}~{seg_type[0]}^{seg_type[1]}^{seg_type[2]}"
        "~^^~Anatomic codes - DICOM master list~^^~^^"
    )
    header = {
        "space": "left-posterior-superior",
        # pynrrd: one row per array axis, the world step of that axis (NRRD's "space directions").
        "space directions": lps_affine[:3, :3].T.copy(),
        "space origin": lps_affine[:3, 3].copy(),
        "kinds": ["domain", "domain", "domain"],
        "encoding": "gzip",
        "Segment0_ID": "Segment_1",
        "Segment0_Name": segment_name,
        "Segment0_NameAutoGenerated": "0",
        "Segment0_Color": " ".join(f"{float(c):g}" for c in color),
        "Segment0_ColorAutoGenerated": "0",
        "Segment0_Extent": extent,
        "Segment0_LabelValue": "1",
        "Segment0_Layer": "0",
        # "inprogress": a model's proposal that a reader still has to review.
        "Segment0_Tags": f"Segmentation.Status:inprogress|TerminologyEntry:{terminology}|",
        "Segmentation_MasterRepresentation": "Binary labelmap",
        "Segmentation_ContainedRepresentationNames": "Binary labelmap|",
        "Segmentation_ReferenceImageExtentOffset": "0 0 0",
        **(fields or {}),
    }
    path = Path(path)
    with atomic_write(path) as tmp:
        # Fortran index order: array axis 0 is NRRD's fastest axis, matching the rows of space directions.
        # gzip level 1, as nibabel's NIfTI: a mask compresses about as well and level 9 took 6x longer.
        nrrd.write(str(tmp), data, header, index_order="F", compression_level=1)
    return path


# --- DICOM -------------------------------------------------------------------------------------------


# Type 2 attributes (required, may be empty) of the Patient, General Study and Image Plane modules that
# highdicom's Segmentation reads from its first source image by plain attribute access; anonymised or
# minimal exports often drop them altogether.
_TYPE2_FROM_SOURCE = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
    "SliceThickness",
)
# Type 1 attributes without which a SEG cannot reference its source images.
_REFERENCE_ATTRIBUTES = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")


def _source_series(source) -> DicomSeries:
    if isinstance(source, DicomSeries):
        return source
    if isinstance(source, (str, os.PathLike)):
        return scan_dicom_series(source)
    return series_from_datasets(source)


def _check_source(series: DicomSeries) -> None:
    """The type 1 attributes a SEG or Parametric Map needs from its source images, on each (DataError otherwise)."""
    for i, ds in enumerate(series.datasets):
        missing = [name for name in _REFERENCE_ATTRIBUTES if not ds.get(name)]
        if "ImageOrientationPatient" in ds and not ds.get("PixelSpacing"):
            missing.append("PixelSpacing")  # a SEG's frames in patient space need it
        if missing:
            where = series.files[i] if series.files else series.name()
            raise DataError(
                f"{where}: no {', '.join(missing)}, which a DICOM SEG or Parametric Map takes from its source images"
            )


def _with_type2_attributes(datasets: Sequence) -> list:
    """The source datasets, the first one replaced by a copy holding empty values for absent type 2 attributes.

    highdicom reads these attributes from the first source image alone; the caller's datasets (and
    files) are never modified.
    """
    first = datasets[0]
    missing = [name for name in _TYPE2_FROM_SOURCE if name not in first]
    if not missing:
        return list(datasets)
    patched = copy.deepcopy(first)
    for name in missing:
        setattr(patched, name, "")
    return [patched, *datasets[1:]]


def _derivable_series(source) -> DicomSeries:
    """The source series of a derived object (SEG, Parametric Map), checked: one regular grid of single-frame
    images carrying the attributes it references."""
    series = _source_series(source)
    series.check_regular_grid()
    _check_source(series)
    if int(series.datasets[0].get("NumberOfFrames", 1) or 1) > 1:
        raise ValueError("multi-frame source images are not supported; give a series of single-frame images")
    return series


# Series numbers of the derived series: the source's number plus these, so a viewer lists them after it.
SEG_SERIES_OFFSET = 1000
PARAMETRIC_MAP_SERIES_OFFSET = 1001


def _derived_object(series: DicomSeries, offset: int) -> dict:
    """What a derived object (SEG, Parametric Map) of ``series`` says about itself, as highdicom arguments: its
    source images, new series and instance UIDs, its series number (the source's + ``offset``), the software."""
    import highdicom as hd

    number = series.datasets[0].get("SeriesNumber")
    return {
        "source_images": _with_type2_attributes(series.datasets),
        "series_instance_uid": hd.UID(),
        "series_number": (int(number) if number not in (None, "") else 0) + offset,
        "sop_instance_uid": hd.UID(),
        "instance_number": 1,
        "manufacturer": "mediclip-monai",
        "manufacturer_model_name": "MediCLIP",
        "software_versions": _package_version(),
        "device_serial_number": "none",
    }


def write_dicom_seg(
    path: str | os.PathLike,
    mask,
    source_datasets,
    segment_label: str = "anomaly",
    affine=None,
) -> Path:
    """Write a binary mask as a DICOM Segmentation (SEG) that references the source series.

    Args:
        path: destination, normally ``<name>/<name>_anomaly_seg.dcm``.
        mask: binary mask of the series in MONAI's array order, ``(columns, rows, slices)`` (see the
            module docstring); a single-image input may be 2D ``(columns, rows)``.
        source_datasets: the series: its folder, its `DicomSeries` (:func:`scan_dicom_series`), or its
            ``pydicom.Dataset`` objects in any order.
        segment_label: the segment's label.
        affine: optional 4x4 RAS affine of the volume the mask lives on (``MetaTensor.affine``). When
            given, mask slices are matched to source instances geometrically, so any reader's axis order
            works. When ``None``, the mask must be in MONAI PydicomReader's order (slices by
            InstanceNumber); it is still mapped to the instances by position along the slice normal.

    The SEG is BINARY with one segment (algorithm type AUTOMATIC, algorithm "MediCLIP"); each frame
    references the source instance it lies on, and empty frames are omitted (highdicom's default).
    Type 2 attributes that an anonymised or minimal source lacks (patient, study, SliceThickness) are
    written empty.

    Raises:
        DataError: the series is not one regular grid (missing slice, uneven spacing, ...), or its
            images lack type 1 attributes a SEG needs (UIDs, PixelSpacing).
        ValueError: the mask is not on the series' voxel grid.
    """
    import highdicom as hd
    from pydicom.sr.coding import Code

    series = _derivable_series(source_datasets)
    data = convert_to_numpy(mask) > 0
    _check_spatial(data, "mask")
    frames = series.frames(data, None if affine is None else _affine_4x4(affine, 3)).astype(np.uint8)
    description = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label=segment_label,
        segmented_property_category=Code(_CATEGORY[1], _CATEGORY[0], _CATEGORY[2]),
        segmented_property_type=Code(_TYPE[1], _TYPE[0], _TYPE[2]),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name="MediCLIP",
            family=Code("123110", "DCM", "Artificial Intelligence"),
            version=_package_version(),
        ),
    )
    seg = hd.seg.Segmentation(
        **_derived_object(series, SEG_SERIES_OFFSET),
        pixel_array=frames,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[description],
        series_description="MediCLIP anomaly",
        content_label="ANOMALY",
        content_description="MediCLIP anomaly mask",
    )
    path = Path(path)
    with atomic_write(path) as tmp:
        seg.save_as(tmp)
    return path


# --- scores ------------------------------------------------------------------------------------------


def _shortest(value) -> str:
    """Shortest text that reads back to the same value in the number's own precision."""
    return np.format_float_positional(convert_to_numpy(value), unique=True, trim="-")


def write_scores_csv(path: str | os.PathLike, rows: Iterable[Mapping]) -> Path:
    """Write the run's per-case scores as CSV: ``name,score,max_slice,decision,threshold,image_threshold``.

    Args:
        rows: dicts with ``name``, ``score`` (the image anomaly score, by the model's rule), ``max_slice``
            (index of the slice holding it for 3D inputs; ``None`` or ``""`` for 2D, written as an empty
            field) and, when known, ``decision`` (the model's verdict, ``abnormal`` when the score reaches
            the image threshold, else ``normal``), ``threshold`` (the mask threshold used) and
            ``image_threshold`` (the decision threshold used).
    """
    path = Path(path)
    with atomic_write(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["name", "score", "max_slice", "decision", "threshold", "image_threshold"])
        for row in rows:
            max_slice = row.get("max_slice")
            writer.writerow(
                [
                    row["name"],
                    _shortest(row["score"]),
                    "" if max_slice is None or max_slice == "" else int(max_slice),
                    row.get("decision") or "",
                    "" if row.get("threshold") is None else _shortest(row["threshold"]),
                    "" if row.get("image_threshold") is None else _shortest(row["image_threshold"]),
                ]
            )
    return path


# --- the outputs of a case -----------------------------------------------------------------------------


@dataclass(frozen=True)
class CaseArrays:
    """What a case's outputs are written from, on the input's voxel grid (no channel axis).

    Attributes:
        source: the case's image file or DICOM series folder.
        anomaly_map: ``(H, W[, D])`` float32 map in [0, 1], in the scale of ``scale``.
        mask: ``(H, W[, D])`` uint8 mask at the run's threshold.
        affine: 4x4 voxel-to-world matrix in RAS millimetres.
        scale: the scale the map is in (`MapScale`): what its values mean and where its mask is cut.
    """

    source: str
    anomaly_map: np.ndarray
    mask: np.ndarray
    affine: np.ndarray
    scale: MapScale = MapScale()


@dataclass(frozen=True)
class CaseWriter:
    """One output of a case: ``write(path, case)`` into ``<name><suffix>``, for the cases it ``applies`` to."""

    suffix: str
    write: Callable[[Path, CaseArrays], object]
    applies: Callable[[CaseArrays], bool]


# The outputs a case can have, by name (inference.json's ``outputs``), in registration order.
CASE_WRITERS: dict[str, CaseWriter] = {}


def case_writer(name: str, suffix: str, applies: Callable[[CaseArrays], bool] = lambda case: True):
    """Register ``write(path, case)`` as the case output ``name``, written to ``<case name><suffix>`` for the
    cases ``applies`` accepts (every case by default)."""

    def register(write: Callable[[Path, CaseArrays], object]):
        CASE_WRITERS[name] = CaseWriter(suffix, write, applies)
        return write

    return register


@case_writer("anomaly_map", "_anomaly_map.nii.gz")
def _anomaly_map(path: Path, case: CaseArrays) -> None:
    write_anomaly_map(path, case.anomaly_map, case.affine, description=case.scale.label())


@case_writer("anomaly_mask", "_anomaly_mask.nii.gz")
def _anomaly_mask(path: Path, case: CaseArrays) -> None:
    write_anomaly_mask(path, case.mask, case.affine)


@case_writer("slicer_segmentation", "_anomaly.seg.nrrd")
def _slicer_segmentation(path: Path, case: CaseArrays) -> None:
    fields = {"MediCLIP_map_scale": case.scale.name, "MediCLIP_map_mask_level": f"{case.scale.mask_level:g}"}
    write_slicer_segmentation(path, case.mask, case.affine, fields=fields)


def of_dicom_volume(case: CaseArrays) -> bool:
    """Whether a case is a DICOM series volume (the outputs that reference its source images apply)."""
    return os.path.isdir(case.source) and case.mask.ndim == 3


@case_writer("dicom_seg", "_anomaly_seg.dcm", applies=of_dicom_volume)
def _dicom_seg(path: Path, case: CaseArrays) -> None:
    write_dicom_seg(path, case.mask, case.source, affine=case.affine)

"""Output writers of MediCLIP inference: NIfTI anomaly map and mask, 3D Slicer .seg.nrrd, DICOM SEG and
Parametric Map, scores.csv; all written atomically in the input's voxel grid and physical space. A case's
outputs are chosen by name from `CASE_WRITERS` (a new one: a function registered with `case_writer`)."""

from .atomic import atomic_write
from .parametric_map import write_parametric_map
from .writers import (
    CASE_WRITERS,
    CaseArrays,
    case_writer,
    write_anomaly_map,
    write_anomaly_mask,
    write_dicom_seg,
    write_scores_csv,
    write_slicer_segmentation,
)

__all__ = [
    "CASE_WRITERS",
    "CaseArrays",
    "atomic_write",
    "case_writer",
    "write_anomaly_map",
    "write_anomaly_mask",
    "write_dicom_seg",
    "write_parametric_map",
    "write_scores_csv",
    "write_slicer_segmentation",
]

"""Output writers of MediCLIP inference: NIfTI anomaly map and mask, 3D Slicer .seg.nrrd, DICOM SEG and
Parametric Map, scores.csv; all written atomically in the input's voxel grid and physical space."""

from .atomic import atomic_write
from .parametric_map import write_parametric_map
from .writers import (
    read_dicom_series,
    write_anomaly_map,
    write_anomaly_mask,
    write_dicom_seg,
    write_scores_csv,
    write_slicer_segmentation,
)

__all__ = [
    "atomic_write",
    "read_dicom_series",
    "write_anomaly_map",
    "write_anomaly_mask",
    "write_dicom_seg",
    "write_parametric_map",
    "write_scores_csv",
    "write_slicer_segmentation",
]

"""The anomaly map as a DICOM Parametric Map, for PACS viewers, beside the DICOM SEG of its mask.

A Parametric Map (highdicom's ``ParametricMap``) stores float32 values, one frame per image of the source
series: frame k is derived from source instance k, references it, and lies at its ImagePositionPatient (a
gantry-tilted series included, whose frames keep its sheared grid). It is a series of its own (new series and
instance UIDs, series number the source's + 1001) in the source's study and frame of reference.

What the values mean travels with them: the Real World Value Mapping (identity, unit-less) is labelled with
the scale of the map (``mediclip_monai.decisions.map_scale``: anomaly probability, or the normalised scale whose 0.5 is
the mask threshold) and the window (centre 0.5, width 1) covers the scale's 0 to 1, so in the normalised scale
the middle of the window is the mask threshold on every model.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from monai.utils import convert_to_numpy

from ..decisions.map_scale import MapScale
from .atomic import atomic_write
from .writers import (
    PARAMETRIC_MAP_SERIES_OFFSET,
    CaseArrays,
    _affine_4x4,
    _check_spatial,
    _derivable_series,
    _derived_object,
    case_writer,
    of_dicom_volume,
)

__all__ = ["write_parametric_map"]

# Real World Value Mapping labels (DICOM LUT Label: at most 16 characters).
_LUT_LABELS = {"probability": "ANOMALY_PROB", "normalised": "ANOMALY_NORM"}


def write_parametric_map(
    path: str | os.PathLike,
    anomaly_map,
    source_datasets,
    affine=None,
    scale: MapScale | None = None,
) -> Path:
    """Write an anomaly map as a DICOM Parametric Map that references the source series.

    Args:
        path: destination, normally ``<name>/<name>_anomaly_map.dcm``.
        anomaly_map: the map in the scale ``scale`` names, values in [0, 1] (clipped), in MONAI's array order
            ``(columns, rows, slices)`` like `write_dicom_seg`'s mask; a single image may be 2D.
        source_datasets: the series: its folder, its `DicomSeries`, or its ``pydicom.Dataset`` objects.
        affine: optional 4x4 RAS affine of the map's volume (``MetaTensor.affine``): its slices are then
            matched to the source instances geometrically (see `write_dicom_seg`).
        scale: what the values are (`MapScale`); None: anomaly probability.

    Raises:
        DataError: the series is not one regular grid, or its images lack the attributes a derived object
            references (UIDs, PixelSpacing).
        ValueError: the map is not on the series' voxel grid, or holds NaN or infinite values.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    scale = scale or MapScale()
    series = _derivable_series(source_datasets)
    data = convert_to_numpy(anomaly_map).astype(np.float32)
    _check_spatial(data, "anomaly_map")
    if not np.all(np.isfinite(data)):
        raise ValueError("anomaly_map has NaN or infinite values")
    data = np.clip(data, 0.0, 1.0)
    frames = series.frames(data, None if affine is None else _affine_4x4(affine, 3))

    mapping = hd.pm.RealWorldValueMapping(
        lut_label=_LUT_LABELS[scale.name],
        lut_explanation=scale.label()[:64],
        unit=codes.UCUM.NoUnits,
        value_range=(0.0, 1.0),
        slope=1.0,
        intercept=0.0,
    )
    # one-item lists: highdicom 0.28 splits a plain string explanation into characters
    window = hd.VOILUTTransformation(
        window_center=[0.5],
        window_width=[1.0],
        window_explanation=["0.5 = mask threshold" if scale.name == "normalised" else "probability 0 to 1"],
    )
    parametric_map = hd.pm.ParametricMap(
        **_derived_object(series, PARAMETRIC_MAP_SERIES_OFFSET),
        pixel_array=frames,
        contains_recognizable_visual_features=False,
        real_world_value_mappings=[mapping],
        voi_lut_transformations=[window],
        content_label="ANOMALY_MAP",
        content_description=scale.label()[:64],
        series_description="MediCLIP anomaly map",
    )
    path = Path(path)
    with atomic_write(path) as tmp:
        parametric_map.save_as(tmp)
    return path


@case_writer("parametric_map", "_anomaly_map.dcm", applies=of_dicom_volume)
def _parametric_map(path: Path, case: CaseArrays) -> None:
    write_parametric_map(path, case.anomaly_map, case.source, case.affine, case.scale)

"""A case's result as a small report for the people who read it: ``<name>_report.json`` and ``<name>_report.pdf``.

Made from a finished case folder of inference (``io.outputs``: its manifest, map and mask, and the source image
it names), so it says exactly what the files say: the decision and the image score against the image threshold,
the slice of the score, the mask's size, the mask threshold, the scale of the map files and what their window
means, the model, and (for a DICOM source) which patient, study and series it belongs to. The PDF is one page:
those lines, and the slice of the score with the map over it and the mask outlined. The MONAI Deploy app
(``deploy/``) writes it beside the DICOM SEG and Parametric Map.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from ..data.loading import read_image, scale_intensity, volume_to_views
from ..io.atomic import atomic_write
from ..io.outputs import read_manifest

__all__ = ["INTENDED_USE", "case_report", "report_figure", "write_case_report"]

INTENDED_USE = (
    "Research use only, not for diagnosis. MediCLIP flags what departs from the normal scans it was given; "
    "its thresholds are calibrated on synthetic anomalies of held-out normal scans, not on real disease."
)
# What a DICOM source adds to the report (the series the result belongs to).
_SOURCE_ATTRIBUTES = (
    "PatientID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "Modality",
    "SeriesDescription",
    "SeriesNumber",
)


def case_report(case_folder: str | os.PathLike) -> dict:
    """The report of a finished case folder as a plain dict (what ``<name>_report.json`` holds)."""
    folder = Path(case_folder)
    manifest = read_manifest(folder)
    if manifest is None:
        raise FileNotFoundError(f"{folder}: no case manifest; not a finished inference case")
    mask = nib.load(folder / f"{manifest['name']}_anomaly_mask.nii.gz")
    voxel_ml = abs(float(np.linalg.det(mask.affine[:3, :3]))) / 1000.0
    anomalous = int(np.count_nonzero(np.asarray(mask.dataobj)))
    scale = manifest.get("map_scale", "probability")
    report = {
        "title": "MediCLIP anomaly detection",
        "intended_use": INTENDED_USE,
        "case": manifest["name"],
        "decision": manifest["decision"],
        "score": manifest["score"],
        "image_threshold": manifest["image_threshold"],
        "slice_of_score": manifest.get("max_slice"),
        "anomalous_voxels": anomalous,
        "anomalous_volume_ml": round(anomalous * voxel_ml, 3),
        "mask_threshold": manifest["threshold"],
        "anomaly_branch": manifest.get("anomaly_branch"),
        "map_scale": scale,
        "map_mask_level": manifest.get("map_mask_level", manifest["threshold"]),
        "window": (
            "0 to 1, centre 0.5 = the mask threshold" if scale == "normalised" else "0 to 1 (anomaly probability)"
        ),
        "model": manifest.get("model"),
        "outputs": list(manifest.get("outputs", [])),
        "source": manifest["source"],
    }
    source = Path(manifest["source"])
    if source.is_dir():
        from ..data.dicom import scan_dicom_series

        first = scan_dicom_series(source).datasets[0]
        report["series"] = {name: str(first.get(name, "")) for name in _SOURCE_ATTRIBUTES}
    return report


def _report_lines(report: dict) -> list[str]:
    lines = [
        f"Decision: {report['decision']} (image score {report['score']:.3f}, "
        f"image threshold {report['image_threshold']:.3f})",
        f"Mask: {report['anomalous_voxels']} voxels, {report['anomalous_volume_ml']:g} ml "
        f"(map >= {report['map_mask_level']:.3g} in the {report['map_scale']} scale; "
        f"anomaly probability >= {report['mask_threshold']:.3g})",
        f"Map window: {report['window']}",
        f"Branch: {report['anomaly_branch']}, model {report['model']}",
    ]
    if "series" in report:
        series = report["series"]
        lines.append(f"Patient {series['PatientID']}, {series['Modality']} series {series['SeriesNumber']}: "
                     f"{series['SeriesDescription']}")  # fmt: skip
        lines.append(f"Series UID {series['SeriesInstanceUID']}")
    return lines


def report_figure(report: dict, case_folder: str | os.PathLike):
    """The PDF page: the report's lines, and the slice of the score with the map and the mask outline."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    folder = Path(case_folder)
    name = report["case"]
    anomaly_map = nib.load(folder / f"{name}_anomaly_map.nii.gz")
    image = scale_intensity(read_image(report["source"]))
    affine = image.affine if image.ndim == 4 else None
    as_views = [torch.as_tensor(np.asarray(a, np.float32))[None] for a in (
        anomaly_map.dataobj, nib.load(folder / f"{name}_anomaly_mask.nii.gz").dataobj)]  # fmt: skip
    index = report["slice_of_score"] or 0
    image_view = volume_to_views(image, affine)[index, 0].numpy()
    map_view, mask_view = (volume_to_views(a, affine)[index, 0].numpy() for a in as_views)

    figure = Figure(figsize=(8.27, 11.69), dpi=100)  # A4 portrait
    FigureCanvasAgg(figure)
    figure.text(0.06, 0.96, f"{report['title']}: {name}", fontsize=15, weight="bold", va="top")
    text = "\n".join(_report_lines(report))
    figure.text(0.06, 0.92, text, fontsize=9, va="top", wrap=True)
    axes = figure.add_axes((0.08, 0.2, 0.84, 0.56))
    axes.set_axis_off()
    axes.imshow(image_view, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    drawn = axes.imshow(map_view, cmap="inferno", alpha=0.45, vmin=0, vmax=1, interpolation="bilinear")
    if mask_view.any() and not mask_view.all():
        axes.contour(mask_view, levels=[0.5], colors="cyan", linewidths=1)
    where = "" if report["slice_of_score"] is None else f", slice {index} (the slice of the score)"
    axes.set_title(f"{report['map_scale']} map over the image{where}; mask outlined in cyan", fontsize=9)
    figure.colorbar(drawn, ax=axes, fraction=0.03, pad=0.02)
    figure.text(0.06, 0.08, report["intended_use"], fontsize=8, style="italic", wrap=True)
    return figure


def write_case_report(case_folder: str | os.PathLike, output_dir: str | os.PathLike) -> tuple[Path, Path]:
    """Write ``<name>_report.json`` and ``<name>_report.pdf`` of a finished case folder into ``output_dir``.

    Returns:
        the paths of the JSON and the PDF.
    """
    report = case_report(case_folder)
    output_dir = Path(output_dir)
    json_path = output_dir / f"{report['case']}_report.json"
    pdf_path = output_dir / f"{report['case']}_report.pdf"
    with atomic_write(json_path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2)
    figure = report_figure(report, case_folder)
    with atomic_write(pdf_path) as tmp:
        figure.savefig(tmp, format="pdf")
    return json_path, pdf_path

"""Review MediCLIP inference outputs in 3D Slicer, case by case.

Run inside Slicer::

    Slicer --python-script scripts/slicer_review.py -- OUTPUT_DIR [--case NAME]

OUTPUT_DIR is an inference ``--output_dir``: one folder per case ``<name>/`` with
``<name>_anomaly_map.nii.gz``, ``<name>_anomaly_mask.nii.gz`` and ``<name>_anomaly.seg.nrrd``, and a
``cases.json`` (``{"<name>": {"source": "/abs/path/to/input"}}``) naming each case's source image. For
each case the script loads the source image (a file with ``slicer.util.loadVolume``, a DICOM series
folder through Slicer's DICOM database), the anomaly map as a coloured foreground overlay (opacity 0.4)
and the anomaly segmentation. Without a source, the map alone is shown.

Each case's manifest (``<name>_case.json``) says which scale its map is in (``map_scale``): ``probability``
(the branch's values) or ``normalised`` (0.5 = the mask threshold of the model, see
``mediclip_monai/decisions/map_scale.py``), and where its mask was cut in that scale (``map_mask_level``). The case
list prints both; the colour window is 0 to 1 for both scales, so on a normalised map the middle colour is
the threshold, and values below a quarter (normalised) or 0.05 (probability) are drawn transparent.

The first case (or ``--case NAME``) is loaded and the list of cases is printed; in Slicer's Python
console, ``next_case()`` moves on and ``show_case("name")`` jumps to a case.

The functions above ``main`` are plain Python (no Slicer import), so they are unit-tested outside
Slicer; only ``main`` and the loaders import ``slicer``.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

MAP_SUFFIX = "_anomaly_map.nii.gz"
MASK_SUFFIX = "_anomaly_mask.nii.gz"
SEGMENTATION_SUFFIX = "_anomaly.seg.nrrd"
CASES_FILE = "cases.json"
MANIFEST_SUFFIX = "_case.json"

# Slicer colour tables for the map, best first (IDs of the tables Slicer ships).
MAP_COLOR_NODE_IDS = (
    "vtkMRMLColorTableNodeFileInferno.txt",
    "vtkMRMLColorTableNodeFileColdToHotRainbow.txt",
    "vtkMRMLColorTableNodeRainbow",
)
MAP_OPACITY = 0.4
# Map values below this are drawn transparent, so the overlay does not tint normal tissue: per scale, as a
# normalised map puts normal tissue just under its 0.5 threshold.
MAP_VISIBLE_FROM = {"probability": 0.05, "normalised": 0.25}


@dataclass(frozen=True)
class ReviewCase:
    """The files of one case. ``mask``, ``segmentation`` and ``source`` are None when absent; ``map_scale`` and
    ``mask_level`` (the mask's threshold in that scale) come from the case's manifest."""

    name: str
    anomaly_map: Path
    mask: Path | None = None
    segmentation: Path | None = None
    source: Path | None = None
    map_scale: str = "probability"
    mask_level: float | None = None

    @property
    def source_is_dicom_folder(self) -> bool:
        return self.source is not None and self.source.is_dir()


def script_arguments(argv: list[str]) -> list[str]:
    """The script's own arguments from Slicer's ``sys.argv``: everything after ``--`` if present,
    else everything after the script path."""
    if "--" in argv:
        return argv[argv.index("--") + 1:]
    return argv[1:]


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Parse ``sys.argv`` as Slicer passes it (``[script, "--", OUTPUT_DIR, ...]`` or without ``--``)."""
    parser = argparse.ArgumentParser(prog="slicer_review.py", description="Review MediCLIP outputs in 3D Slicer.")
    parser.add_argument("output_dir", type=Path, help="inference output folder (holds cases.json and <name>/)")
    parser.add_argument("--case", default=None, help="name of the case to show first")
    return parser.parse_args(script_arguments(argv))


def read_sources(output_dir: Path) -> dict[str, Path]:
    """Case name -> source image path, from ``cases.json``; empty when the file is missing."""
    cases_file = Path(output_dir) / CASES_FILE
    if not cases_file.is_file():
        return {}
    entries = json.loads(cases_file.read_text(encoding="utf-8"))
    sources = {}
    for name, entry in entries.items():
        source = entry.get("source") if isinstance(entry, dict) else None
        if source:
            source = Path(source)
            # Relative sources are taken relative to the output folder, where cases.json lives.
            sources[name] = source if source.is_absolute() else (Path(output_dir) / source)
    return sources


def find_cases(output_dir: Path) -> list[ReviewCase]:
    """Every case folder ``<name>/`` of ``output_dir`` that holds ``<name>_anomaly_map.nii.gz``, by name.

    The mask and segmentation are paired when present; the source comes from ``cases.json`` and is
    dropped (None) if that path no longer exists.
    """
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        raise NotADirectoryError(f"not a folder: {output_dir}")
    sources = read_sources(output_dir)
    cases = []
    for folder in sorted(p for p in output_dir.iterdir() if p.is_dir()):
        name = folder.name
        anomaly_map = folder / f"{name}{MAP_SUFFIX}"
        if not anomaly_map.is_file():
            continue
        mask = folder / f"{name}{MASK_SUFFIX}"
        segmentation = folder / f"{name}{SEGMENTATION_SUFFIX}"
        source = sources.get(name)
        manifest = _read_json(folder / f"{name}{MANIFEST_SUFFIX}")
        cases.append(ReviewCase(
            name=name,
            anomaly_map=anomaly_map,
            mask=mask if mask.is_file() else None,
            segmentation=segmentation if segmentation.is_file() else None,
            source=source if source is not None and source.exists() else None,
            map_scale=manifest.get("map_scale", "probability"),
            mask_level=manifest.get("map_mask_level", manifest.get("threshold")),
        ))
    return cases


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def case_index(cases: list[ReviewCase], name: str | None) -> int:
    """Index of the case called ``name`` (0 for None)."""
    if name is None:
        return 0
    for index, case in enumerate(cases):
        if case.name == name:
            return index
    raise KeyError(f"no case named {name!r}; cases: {', '.join(c.name for c in cases)}")


def describe_cases(cases: list[ReviewCase], current: int | None = None) -> str:
    """A printable list of the cases, the current one marked with ``>``."""
    lines = [f"{len(cases)} MediCLIP case(s):"]
    for index, case in enumerate(cases):
        marker = ">" if index == current else " "
        parts = [f"{case.map_scale} map"]
        if case.mask_level is not None:
            parts[0] += f", mask at {case.mask_level:.3g}"
        if case.segmentation:
            parts.append("segmentation")
        source = f"source {case.source}" if case.source else "no source image"
        lines.append(f"{marker} {index:3d}  {case.name}  ({', '.join(parts)}; {source})")
    return "\n".join(lines)


# --- inside Slicer -----------------------------------------------------------------------------------


def _load_dicom_folder(folder: Path):
    """Import a DICOM series folder into a temporary DICOM database and load it; the first volume node."""
    import slicer
    from DICOMLib import DICOMUtils

    loaded_ids = []
    with DICOMUtils.TemporaryDICOMDatabase() as database:
        DICOMUtils.importDicom(str(folder), database)
        for patient_uid in database.patients():
            loaded_ids.extend(DICOMUtils.loadPatientByUID(patient_uid))
    for node_id in loaded_ids:
        node = slicer.mrmlScene.GetNodeByID(node_id)
        if node is not None and node.IsA("vtkMRMLScalarVolumeNode"):
            return node
    raise RuntimeError(f"no image volume loaded from DICOM folder {folder}")


def _style_map(map_node, map_scale: str) -> None:
    import slicer

    display = map_node.GetDisplayNode()
    for color_id in MAP_COLOR_NODE_IDS:
        if slicer.mrmlScene.GetNodeByID(color_id) is not None:
            display.SetAndObserveColorNodeID(color_id)
            break
    # Fixed [0, 1] window: colours mean the same value in every case (on a normalised map, 0.5 the threshold).
    display.AutoWindowLevelOff()
    display.SetWindowLevelMinMax(0.0, 1.0)
    display.AutoThresholdOff()
    display.SetLowerThreshold(MAP_VISIBLE_FROM.get(map_scale, MAP_VISIBLE_FROM["probability"]))
    display.SetUpperThreshold(1.0)
    display.ApplyThresholdOn()


def load_case(case: ReviewCase) -> None:
    """Clear the scene and show one case: source as background, map as overlay, segmentation on top."""
    import slicer

    slicer.mrmlScene.Clear(0)
    source_node = None
    if case.source is not None:
        if case.source_is_dicom_folder:
            source_node = _load_dicom_folder(case.source)
        else:
            source_node = slicer.util.loadVolume(str(case.source))
    map_name = f"{case.name} anomaly map ({case.map_scale})"
    map_node = slicer.util.loadVolume(str(case.anomaly_map), {"name": map_name, "show": False})
    _style_map(map_node, case.map_scale)
    if source_node is not None:
        slicer.util.setSliceViewerLayers(background=source_node, foreground=map_node,
                                         foregroundOpacity=MAP_OPACITY, fit=True)
    else:
        slicer.util.setSliceViewerLayers(background=map_node, foreground=None, fit=True)
    if case.segmentation is not None:
        segmentation_node = slicer.util.loadSegmentation(str(case.segmentation))
        segmentation_node.SetName(f"{case.name} anomaly")
        if source_node is not None:
            segmentation_node.SetReferenceImageGeometryParameterFromVolumeNode(source_node)
        # Outline only: the map underneath stays readable.
        display = segmentation_node.GetDisplayNode()
        display.SetVisibility2DFill(False)
        display.SetVisibility2DOutline(True)


class _Review:
    """The cases of this session and which one is shown (for next_case / show_case in the console)."""

    cases: ClassVar[list[ReviewCase]] = []
    current: ClassVar[int] = -1


def show_case(name_or_index: str | int) -> None:
    """Show a case by name or list index."""
    index = name_or_index if isinstance(name_or_index, int) else case_index(_Review.cases, name_or_index)
    _Review.current = index
    case = _Review.cases[index]
    print(f"Loading case {index}: {case.name}")
    load_case(case)


def next_case() -> None:
    """Show the next case (wraps around to the first)."""
    if not _Review.cases:
        print("No cases loaded.")
        return
    show_case((_Review.current + 1) % len(_Review.cases))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv if argv is None else argv)
    try:
        import slicer  # noqa: F401  (only available inside 3D Slicer)
    except ImportError:
        print("slicer_review.py runs inside 3D Slicer: Slicer --python-script scripts/slicer_review.py -- OUTPUT_DIR",
              file=sys.stderr)
        return 2
    cases = find_cases(args.output_dir)
    if not cases:
        print(f"No MediCLIP cases (<name>/<name>{MAP_SUFFIX}) found in {args.output_dir}", file=sys.stderr)
        return 1
    _Review.cases = cases
    first = case_index(cases, args.case)
    print(describe_cases(cases, current=first))
    print("In the Python console: next_case() for the next case, show_case('name') for a given one.")
    show_case(first)
    return 0


if __name__ == "__main__":
    # Inside Slicer, exiting would close the application: report, but keep Slicer open.
    status = main()
    if status and "slicer" not in sys.modules:
        sys.exit(status)

"""The one DICOM series scanner: which files of a folder form the series, in which order, on which grid.

Reading (`mediclip_monai.data.loading`) and DICOM SEG writing (`mediclip_monai.io.writers`) both
start here, so they agree on the series' files, its slice order and its voxel grid:

- `scan_dicom_series(folder)` lists a folder's DICOM image files (skipping non-DICOM files, DICOMDIR,
  SR, RTSTRUCT, SEG and other non-image objects), refuses a folder holding several series, sorts the
  slices along the slice normal and judges their geometry.
- `series_from_datasets(datasets)` does the same for datasets already in memory.

The result, a `DicomSeries`, holds the datasets and the geometry verdict: `grid_problem` says why the
slices do not make one regular voxel grid (a missing slice, uneven spacing, mixed sizes or
orientations, several slices at one position), and `numbering_problem` why MONAI's PydicomReader,
which stacks slices by InstanceNumber, would stack them out of position order. The grid itself is
`affine`: RAS millimetres of voxel ``(column, row, slice)`` with slices in position order, the layout
of MONAI's PydicomReader.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mediclip_monai.errors import DataError

__all__ = ["DicomSeries", "scan_dicom_series", "series_affine", "series_from_datasets"]

logger = logging.getLogger(__name__)

# RAS <-> LPS: negate the first two world axes (the transform is its own inverse).
_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])

# A slice may sit this far (in voxels, along any axis) from where the regular grid through the first
# and last slice puts it: a missing slice moves its neighbours by half a voxel or more, while positions
# rounded to a few hundredths of a millimetre stay well inside.
_GRID_TOLERANCE_VOXELS = 0.1

_RESAMPLE = (
    "; a volume needs evenly spaced slices: export the complete series again, or resample it (e.g. 3D "
    "Slicer: load it with 'Acquisition geometry regularization' on, save as NIfTI) and give that file"
)


@dataclass(frozen=True)
class DicomSeries:
    """One DICOM image series, its slices sorted along the slice normal, with its geometry verdict.

    Attributes:
        folder: where the series lies (``None`` for datasets that came without file names).
        uid: SeriesInstanceUID ("" when the files have none).
        files: the image files, in the order of `datasets` (empty for datasets without file names).
        datasets: the ``pydicom.Dataset`` of each slice (headers only unless scanned with pixels),
            ascending position along row direction x column direction when the geometry allows it,
            otherwise in InstanceNumber order.
        affine: 4x4 RAS voxel-to-world matrix of the ``(columns, rows, slices)`` volume with slices in
            `datasets` order; ``None`` when the slices carry no geometry or no single grid fits them.
        grid_problem: "" when the slices form one regular grid, else why not and what to do.
        numbering_problem: "" when InstanceNumbers are unique and run with the positions (so
            PydicomReader's stack is in position order), else why not.
    """

    folder: Path | None
    uid: str
    files: tuple[Path, ...]
    datasets: tuple
    affine: np.ndarray | None
    grid_problem: str
    numbering_problem: str

    @property
    def shape(self) -> tuple[int, int, int]:
        """The grid's size: (columns, rows, slices)."""
        first = self.datasets[0]
        return int(first.Columns), int(first.Rows), len(self.datasets)

    def name(self) -> str:
        """How messages name the series: its folder, or its UID."""
        return str(self.folder) if self.folder is not None else f"DICOM series {self.uid or '(no UID)'}"

    def check_regular_grid(self) -> None:
        """Raise `DataError` (series, what is wrong, what to do) unless the slices form one regular grid."""
        if self.grid_problem:
            raise DataError(f"{self.name()}: {self.grid_problem}")

    def voxel_order(self, affine, shape: Sequence[int]) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """How an array on grid ``affine`` maps onto the series grid, by axis swaps and flips only.

        Args:
            affine: 4x4 RAS voxel-to-world matrix of a 3D array (``MetaTensor.affine`` of any reader).
            shape: that array's 3D spatial shape.

        Returns:
            ``(axes, flipped)``: ``np.transpose(np.flip(array, flipped), axes)`` is the array on the
            series grid ``(columns, rows, slices)`` in `datasets` order.

        Raises:
            ValueError: the array is not the series' voxels up to axis order and direction (resampled,
                cropped, shifted, another series); nothing is ever silently misplaced.
        """
        if self.affine is None:
            raise ValueError(f"{self.name()}: the series has no single voxel grid ({self.grid_problem})")
        given = np.asarray(affine, dtype=np.float64)
        if len(self.datasets) == 1:
            # A single slice has no slice step; readers fill that column arbitrarily.
            given = given.copy()
            given[:3, 2] = self.affine[:3, 2]
        voxel_map = np.linalg.solve(self.affine, given)  # given voxel index -> series voxel index
        linear, offset = voxel_map[:3, :3], voxel_map[:3, 3]
        target = np.argmax(np.abs(linear), axis=0)  # for each given axis, the series axis it runs along
        signs = np.sign(linear[target, np.arange(3)])
        expected = np.zeros((3, 3))
        expected[target, np.arange(3)] = signs
        # Tolerances in voxels: loose enough for rounded DICOM positions and readers that estimate the
        # slice step differently, far too tight to accept another axis order or a one-voxel shift.
        if sorted(target.tolist()) != [0, 1, 2] or not np.allclose(linear, expected, atol=1e-2):
            raise ValueError("the given affine is not the DICOM series' voxel grid up to axis order and flips")
        series_shape = self.shape
        for axis, (to, sign) in enumerate(zip(target, signs)):
            start = 0.0 if sign > 0 else series_shape[to] - 1.0
            if int(shape[axis]) != series_shape[to] or abs(offset[to] - start) > 0.25:
                raise ValueError(
                    f"array of shape {tuple(int(s) for s in shape)} does not cover the DICOM series grid "
                    f"{series_shape} (columns, rows, slices)"
                )
        flipped = tuple(int(a) for a in np.flatnonzero(signs < 0))
        axes = tuple(int(a) for a in np.argsort(target))  # for each series axis, the array axis feeding it
        return axes, flipped

    def frames(self, volume, affine=None) -> np.ndarray:
        """A volume on this series' voxels as frames ``(slices, rows, columns)``, frame k on `datasets` [k].

        The frames of a DICOM object derived from the series (SEG, Parametric Map), each on its source image.

        Args:
            volume: ``(columns, rows, slices)`` array in MONAI's order (see `voxel_order`), any dtype; a
                single image may be 2D ``(columns, rows)``.
            affine: 4x4 RAS affine of ``volume`` (``MetaTensor.affine``); its slices are then matched to the
                instances geometrically, so any reader's axis order works. ``None``: the volume is in MONAI
                PydicomReader's order (slices by InstanceNumber).

        Raises:
            ValueError: the volume is not on the series' voxel grid, or (without ``affine``) the numbering
                does not let PydicomReader's order be known.
        """
        data = np.asarray(volume)
        if data.ndim == 2:
            data = data[..., None]
        if self.affine is not None:
            if affine is None:
                if self.numbering_problem:
                    raise ValueError(
                        f"{self.name()}: {self.numbering_problem}; MONAI's PydicomReader stacks slices by "
                        "InstanceNumber, so its volume does not match the series geometry. Load the series with "
                        "a reader that sorts by position (e.g. ITKReader) and pass that volume's `affine`."
                    )
                by_number = self.datasets
                if len(by_number) > 1:
                    by_number = sorted(by_number, key=lambda ds: int(ds.InstanceNumber))
                affine = series_affine(by_number)  # the affine PydicomReader gives the series
            axes, flipped = self.voxel_order(affine, data.shape)
            data = np.transpose(np.flip(data, flipped), axes)
        elif data.shape != self.shape:
            raise ValueError(f"volume of shape {data.shape} does not match the image (columns, rows) {self.shape}")
        return np.ascontiguousarray(np.transpose(data, (2, 1, 0)))


def scan_dicom_series(folder: str | os.PathLike, pixels: bool = False) -> DicomSeries:
    """Scan a folder (not recursively) for its one DICOM image series.

    Args:
        folder: the series folder.
        pixels: read pixel data too (default: headers only, which is all the geometry needs).

    Raises:
        DataError: naming the folder (or file) for: not a folder, an unreadable DICOM file, no DICOM
            image files, or several series (which one was meant is unknowable). Geometry problems
            are not raised here: they are the verdict's `grid_problem`.
    """
    import pydicom

    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: not a folder")
    found = []
    for file in sorted(folder.iterdir()):
        if not file.is_file() or file.name.startswith("."):
            continue
        try:
            ds = pydicom.dcmread(file, stop_before_pixels=not pixels)
        except pydicom.errors.InvalidDicomError:  # README files, thumbnails: not part of the series
            continue
        except Exception as e:  # noqa: BLE001 - a DICOM file that breaks while being parsed
            raise DataError(f"{file}: unreadable DICOM file ({type(e).__name__}: {e})"[:400]) from e
        if _is_image(ds):
            found.append((file, ds))
        else:
            logger.debug("%s: skipped, not an image (%s)", file, ds.get("Modality") or ds.get("SOPClassUID", "?"))
    if not found:
        raise DataError(f"{folder}: folder holds no DICOM image files")
    by_uid: dict[str, list] = {}
    for file, ds in found:
        by_uid.setdefault(str(ds.get("SeriesInstanceUID", "")), []).append((file, ds))
    if len(by_uid) > 1:
        desc = ", ".join(f"{len(v)} files of series ...{uid[-12:]}" for uid, v in by_uid.items())
        raise DataError(f"{folder}: folder holds {len(by_uid)} DICOM series ({desc}); give one series per folder")
    return _judge([ds for _, ds in found], [f for f, _ in found], folder)


def series_from_datasets(datasets: Sequence) -> DicomSeries:
    """The `DicomSeries` of datasets already read (one series; any order).

    Their file names (``FileDataset.filename``), when they have them, name the files in messages.

    Raises:
        DataError: no datasets, or datasets of several series.
    """
    datasets = list(datasets)
    if not datasets:
        raise DataError("no DICOM datasets given")
    uids = {str(ds.get("SeriesInstanceUID", "")) for ds in datasets}
    if len(uids) > 1:
        raise DataError(f"the datasets belong to {len(uids)} DICOM series; give one series")
    names = [getattr(ds, "filename", None) for ds in datasets]
    files = [Path(n) for n in names] if all(isinstance(n, (str, os.PathLike)) for n in names) else []
    return _judge(datasets, files, files[0].parent if files else None)


def series_affine(datasets: Sequence) -> np.ndarray:
    """The RAS affine of a ``(columns, rows, slices)`` volume stacked from ``datasets`` in the given order.

    The construction of MONAI's PydicomReader (after its i/j swap): origin at the first slice's
    ImagePositionPatient, slice column ``(IPP_last - IPP_first) / (n - 1)`` (the slice normal for one
    slice), PixelSpacing 1 mm when absent.
    """
    row_dir, col_dir, normal = _directions(datasets[0])
    row_spacing, col_spacing = _pixel_spacing(datasets[0])
    first, last = _position(datasets[0]), _position(datasets[-1])
    n = len(datasets)
    lps = np.eye(4)
    lps[:3, 0] = row_dir * col_spacing  # axis 0: column index, moves along a row
    lps[:3, 1] = col_dir * row_spacing  # axis 1: row index, moves down a column
    lps[:3, 2] = (last - first) / (n - 1) if n > 1 else normal
    lps[:3, 3] = first
    return _RAS_TO_LPS @ lps


# ------------------------------------------------------------------------------------------- helpers


def _is_image(ds) -> bool:
    """An image object of a series: has pixels' Rows; not a segmentation (SEG/label map) of one."""
    return "Rows" in ds and "SegmentSequence" not in ds and ds.get("Modality") != "SEG"


def _has_geometry(ds) -> bool:
    return "ImageOrientationPatient" in ds and "ImagePositionPatient" in ds


def _directions(ds) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row direction, column direction, slice normal) in LPS."""
    iop = np.asarray([float(v) for v in ds.ImageOrientationPatient], dtype=np.float64)
    return iop[:3], iop[3:], np.cross(iop[:3], iop[3:])


def _position(ds) -> np.ndarray:
    return np.asarray([float(v) for v in ds.ImagePositionPatient], dtype=np.float64)


def _pixel_spacing(ds) -> tuple[float, float]:
    """(between rows, between columns) in mm; 1 mm when absent, as MONAI's PydicomReader assumes."""
    spacing = ds.get("PixelSpacing")
    return (float(spacing[0]), float(spacing[1])) if spacing and len(spacing) == 2 else (1.0, 1.0)


def _judge(datasets: list, files: list[Path], folder: Path | None) -> DicomSeries:
    """Sort the slices along the normal and give the geometry verdict."""
    names = [f.name for f in files] if files else [f"slice {i + 1}" for i in range(len(datasets))]
    order, grid_problem = _sort_and_check(datasets, names)
    datasets = [datasets[i] for i in order]
    files = [files[i] for i in order] if files else []
    names = [names[i] for i in order]
    affine = None
    if not grid_problem and _has_geometry(datasets[0]):
        affine = series_affine(datasets)
    # PydicomReader reads one file whatever its number; only a stack depends on the numbering.
    numbering = _numbering_problem(datasets, names) if len(datasets) > 1 and not grid_problem else ""
    return DicomSeries(
        folder=folder,
        uid=str(datasets[0].get("SeriesInstanceUID", "")),
        files=tuple(files),
        datasets=tuple(datasets),
        affine=affine,
        grid_problem=grid_problem,
        numbering_problem=numbering,
    )


def _sort_and_check(datasets: list, names: list[str]) -> tuple[list[int], str]:
    """(order along the slice normal, grid problem or "")."""
    n = len(datasets)
    by_number = sorted(range(n), key=lambda i: _instance_number(datasets[i]) or 0)
    frames = [i for i in range(n) if int(datasets[i].get("NumberOfFrames", 1) or 1) > 1]
    if frames and n > 1:
        return by_number, f"{len(frames)} of its {n} files are multi-frame images; give each in a folder of its own"
    if n == 1:
        return [0], ""
    missing = [i for i in range(n) if not _has_geometry(datasets[i])]
    if missing:
        return by_number, (
            f"{names[missing[0]]} has no ImagePositionPatient/ImageOrientationPatient, which a volume needs "
            "on every slice"
        )
    sizes = [(int(ds.Rows), int(ds.Columns)) for ds in datasets]
    if len(set(sizes)) > 1:
        counts = {s: sizes.count(s) for s in dict.fromkeys(sizes)}
        desc = ", ".join(f"{r}x{c} ({k} files)" for (r, c), k in counts.items())
        return by_number, f"slices differ in size (rows x columns): {desc}; give one size per folder"
    directions = [_directions(ds) for ds in datasets]
    for i, (row, col, _) in enumerate(directions):
        if not (np.allclose(row, directions[0][0], atol=1e-4) and np.allclose(col, directions[0][1], atol=1e-4)):
            return by_number, (
                f"slices do not share one ImageOrientationPatient ({names[i]} differs from {names[0]}; "
                "localizer images mixed in?); give one orientation per folder"
            )
    spacings = [_pixel_spacing(ds) for ds in datasets]
    for i, spacing in enumerate(spacings):
        if not np.allclose(spacing, spacings[0], rtol=1e-4):
            return by_number, (
                f"slices differ in PixelSpacing ({names[i]}: {spacing}, {names[0]}: {spacings[0]}); "
                "give one spacing per folder"
            )

    positions = np.stack([_position(ds) for ds in datasets])
    along = positions @ directions[0][2]
    order = [int(i) for i in np.argsort(along, kind="stable")]
    steps = np.diff(along[order])
    for k in np.flatnonzero(np.abs(steps) < 1e-3):
        a, b = names[order[k]], names[order[k + 1]]
        return order, (
            f"{a} and {b} lie at the same position along the slice normal (several echoes, phases or time "
            "points in one series?); give one of them per folder"
        )
    return order, _spacing_problem(datasets[order[0]], positions[order], steps, [names[i] for i in order])


def _spacing_problem(first, positions: np.ndarray, steps: np.ndarray, names: list[str]) -> str:
    """Empty when every slice lies on the regular grid through the first and the last, else what is off."""
    n = len(positions)
    step = (positions[-1] - positions[0]) / (n - 1)
    row_dir, col_dir, _ = _directions(first)
    row_spacing, col_spacing = _pixel_spacing(first)
    grid = np.stack([row_dir * col_spacing, col_dir * row_spacing, step], axis=1)
    expected = positions[0] + np.arange(n)[:, None] * step
    off = np.linalg.solve(grid, (positions - expected).T).T  # (n, 3) in voxels
    if np.abs(off).max() <= _GRID_TOLERANCE_VOXELS:
        return ""
    if np.abs(off[:, :2]).max() > _GRID_TOLERANCE_VOXELS and np.abs(off[:, 2]).max() <= _GRID_TOLERANCE_VOXELS:
        k = int(np.argmax(np.abs(off[:, :2]).max(axis=1)))
        shift = np.abs(off[k, :2]).max()
        return f"slices are shifted in-plane against each other ({names[k]} by {shift:.2g} pixels){_RESAMPLE}"
    # Missing slices leave steps that are whole multiples of the smallest; otherwise the median is typical.
    multiples = steps / steps.min()
    typical = float(steps.min() if np.allclose(multiples, multiples.round(), atol=0.1) else np.median(steps))
    odd = np.flatnonzero(np.abs(steps - typical) > _GRID_TOLERANCE_VOXELS * typical)
    others = np.delete(steps, odd)
    if 0 < len(odd) <= 3 and others.size and np.ptp(others) <= 0.01 * typical:  # a few odd steps among equal ones
        gaps = ", ".join(
            f"slices {k + 1}-{k + 2} ({names[k]}, {names[k + 1]}) are {steps[k]:.3g} mm apart" for k in odd
        )
        missing = sum(max(round(steps[k] / typical) - 1, 0) for k in odd)
        hint = f" ({missing} slice{'s' * (missing > 1)} missing?)" if missing else ""
        return f"slices are not evenly spaced: {gaps}, the others {typical:.3g} mm{hint}{_RESAMPLE}"
    return (
        f"slices are not evenly spaced: the spacing varies from {steps.min():.3g} to {steps.max():.3g} mm "
        f"(median {typical:.3g} mm){_RESAMPLE}"
    )


def _instance_number(ds) -> int | None:
    try:
        return int(ds.InstanceNumber)
    except (AttributeError, TypeError, ValueError):
        return None


def _numbering_problem(sorted_datasets: list, names: list[str]) -> str:
    """Empty when InstanceNumbers are unique and strictly monotone along the positions, else why not."""
    numbers = [_instance_number(ds) for ds in sorted_datasets]
    for name, number in zip(names, numbers):
        if number is None:
            return f"{name} has no InstanceNumber"
    if len(set(numbers)) < len(numbers):
        twice = next(v for v in numbers if numbers.count(v) > 1)
        return f"InstanceNumber {twice} is used by several slices"
    steps = np.diff(numbers)
    if len(numbers) > 1 and not (np.all(steps > 0) or np.all(steps < 0)):
        return "InstanceNumbers do not follow the slice positions"
    return ""

"""Reading images of any supported kind, and cutting them into the 2D views the model sees.

`read_image` turns a NIfTI file, a DICOM file, a DICOM series folder or a 2D picture (PNG, JPEG,
BMP, TIFF) into one channel-first float32 `MetaTensor`: ``(1, H, W)`` for 2D, ``(1, H, W, D)`` for
3D, with MONAI's RAS affine and ``filename_or_obj`` in its meta. It goes through MONAI's own readers
(`NibabelReader`, `PydicomReader`, `PILReader`, called by `monai.transforms.LoadImage`); SimpleITK
reads DICOM series that PydicomReader cannot stack (missing or shuffled InstanceNumber),
multi-frame DICOM, and NRRD/MetaImage files. Which files form a DICOM series, their order and their
grid come from one scanner (`mediclip_monai.data.dicom`); a series with a missing slice or uneven
spacing is refused with a clear error, since no affine could place its voxels.

Orientation convention (what the model sees; the same for training and inference):

- 2D images (pictures, single DICOM files, 2D NIfTI) keep the array as stored, row 0 at the top,
  which is the natural display orientation of pictures and DICOM images.
- 3D volumes are cut across `axial_axis` (the array axis closest to the patient's superior-inferior
  direction) and every slice is turned into a radiological axial view: rows run from anterior (row 0)
  to posterior, columns from the patient's right (column 0) to the patient's left. This follows from
  the affine alone, so a NIfTI volume stored RAS and the same volume as a DICOM series give the same
  slices, and they match the demo's 2D slices, which are written in that view.
- `slices_to_volume` puts per-slice results (anomaly maps) back into the volume's own array
  orientation, so outputs keep the input's shape and affine.

Intensities are scaled robustly to [0, 1] (`scale_intensity`) before slicing and resizing
(`load_training_slices`), which is what training and validation consume.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from monai.data import MetaTensor, NibabelReader, PILReader, PydicomReader
from monai.transforms import LoadImage

from mediclip_monai.data.dicom import scan_dicom_series
from mediclip_monai.errors import DataError, format_problems
from mediclip_monai.quiet_logs import quiet_reader_setup

__all__ = [
    "DICOM_SUFFIXES",
    "ITK_SUFFIXES",
    "NIFTI_SUFFIXES",
    "PICTURE_SUFFIXES",
    "SHEAR_TOLERANCE_VOXELS",
    "axial_axis",
    "case_name",
    "is_image_path",
    "load_training_slices",
    "read_image",
    "resize_views",
    "scale_intensity",
    "shear_voxels",
    "slices_to_volume",
    "views_to_volume",
    "volume_to_slices",
    "volume_to_views",
]

logger = logging.getLogger(__name__)

NIFTI_SUFFIXES = (".nii.gz", ".nii")
DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")
PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
ITK_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd")

# ITU-R BT.601 luma weights, the ones PIL uses for its "L" conversion.
_LUMA = (0.299, 0.587, 0.114)
# Scaled intensity above which a pixel counts as foreground (tissue, not air/background).
_FOREGROUND_LEVEL = 0.1


_LOADER: LoadImage | None = None


def _load(path: Path, reader) -> MetaTensor:
    """MONAI's LoadImage with one given reader, whose own errors then reach the caller."""
    global _LOADER
    if _LOADER is None:  # built once: LoadImage() instantiates every reader MONAI knows
        with quiet_reader_setup():
            _LOADER = LoadImage(image_only=True, ensure_channel_first=True, dtype=np.float32)
    # A reader given at call time is used directly; LoadImage's own fallback chain would hide its error.
    return _LOADER(str(path), reader=reader)


def case_name(path: str | os.PathLike) -> str:
    """The name of a case: the file name without its image suffix (``brain_01.nii.gz`` -> ``brain_01``).

    A DICOM series folder is named after the folder. The name is never hidden: leading dots are dropped
    (``.scan.nii.gz`` -> ``scan``), and a file with no name before its suffix (``.nii.gz``, ``..nii.gz``)
    is ``unnamed``.

    Args:
        path: image file or DICOM series folder.
    """
    name = Path(path).name
    lower = name.lower()
    for suffix in NIFTI_SUFFIXES + DICOM_SUFFIXES + PICTURE_SUFFIXES + ITK_SUFFIXES:
        if lower.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return name.lstrip(".") or "unnamed"


def is_image_path(path: str | os.PathLike) -> bool:
    """Whether a path looks like an image `read_image` accepts, judged by suffix or DICOM preamble.

    Folders are not judged here (a folder may be a DICOM series or a folder of cases).

    Args:
        path: a file path.
    """
    p = Path(path)
    if not p.is_file():
        return False
    if p.name.lower().endswith(NIFTI_SUFFIXES + DICOM_SUFFIXES + PICTURE_SUFFIXES + ITK_SUFFIXES):
        return True
    return _has_dicom_preamble(p)


def _has_dicom_preamble(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def _format_of(path: Path) -> str:
    """Which reader a path needs: nifti, dicom, dicom_series, picture or itk."""
    if path.is_dir():
        return "dicom_series"
    lower = path.name.lower()
    if lower.endswith(NIFTI_SUFFIXES):
        return "nifti"
    if lower.endswith(DICOM_SUFFIXES):
        return "dicom"
    if lower.endswith(PICTURE_SUFFIXES):
        return "picture"
    if lower.endswith(ITK_SUFFIXES):
        return "itk"
    # DICOM files often have no suffix at all; recognise them by their preamble.
    if _has_dicom_preamble(path):
        return "dicom"
    raise DataError(
        f"{path}: not a supported image file (NIfTI .nii/.nii.gz, DICOM file or series folder, "
        f"PNG/JPEG/BMP/TIFF, NRRD/MHA)"
    )


def read_image(path: str | os.PathLike) -> MetaTensor:
    """Read one image as a channel-first, single-channel float32 MetaTensor.

    Shapes: ``(1, H, W)`` for 2D images, ``(1, H, W, D)`` for volumes (a NIfTI with one time point
    counts as 3D). Colour pictures (RGB/RGBA, palette) become grayscale by luminance
    (0.299 R + 0.587 G + 0.114 B). DICOM pixel values are rescaled by RescaleSlope/Intercept.
    Meta: ``affine`` (4x4, RAS world coordinates in mm, as MONAI's readers give it; identity for
    pictures), ``filename_or_obj`` and ``spatial_shape``. Arrays are as stored (see the module
    docstring for orientation); a single DICOM file keeps DICOM's rows x columns layout.

    Args:
        path: a NIfTI file (.nii/.nii.gz), a DICOM file (any suffix), a folder holding one DICOM
            series, a PNG/JPEG/BMP/TIFF picture, or an NRRD/MetaImage file.

    Raises:
        DataError: ``"<path>: <reason>"`` for a missing file, an unreadable or non-image file, a
            folder without one DICOM series, or unsupported dimensions (1D, 4D with more than one
            time point, several channels).
    """
    p = Path(os.path.expanduser(str(path)))
    if not p.exists():
        raise DataError(f"{p}: file not found")
    kind = _format_of(p)
    try:
        if kind == "nifti":
            img = _load(p, reader=NibabelReader())
        elif kind == "picture":
            img = _load(p, reader=PILReader(converter=_picture_to_l_or_rgb, reverse_indexing=False))
        elif kind == "dicom":
            img = _read_dicom_file(p)
        elif kind == "dicom_series":
            img = _read_dicom_series(p)
        else:
            img = _read_itk(p, squeeze_single_slice=False)
    except DataError:
        raise
    except Exception as e:  # the readers raise anything from ValueError to zlib.error
        names = {"nifti": "NIfTI", "picture": "picture", "dicom": "DICOM", "itk": "NRRD/MetaImage"}
        raise DataError(f"{p}: not a readable {names.get(kind, kind)} image ({_short(e)})") from e
    img = _to_single_channel(img, p, kind)
    img.meta["filename_or_obj"] = str(p)
    img.meta["spatial_shape"] = np.asarray(img.shape[1:])
    return img


def _short(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:300]


def _picture_to_l_or_rgb(image):
    """PIL converter: palette/CMYK/... pictures to RGB(A) or L, so only gray, LA, RGB, RGBA remain."""
    if image.mode in ("P", "PA"):
        return image.convert("RGBA")
    if image.mode in ("CMYK", "YCbCr", "LAB", "HSV"):
        return image.convert("RGB")
    if image.mode == "1":
        return image.convert("L")
    return image


def _to_single_channel(img: MetaTensor, path: Path, kind: str) -> MetaTensor:
    """Check dimensions; colour (2D pictures/DICOM) to luminance; reject what the model cannot use."""
    spatial = tuple(img.shape[1:])
    channels = img.shape[0]
    if len(spatial) < 2:
        raise DataError(f"{path}: 1D data of shape {tuple(img.shape[1:])}; expected a 2D or 3D image")
    if len(spatial) > 3:
        raise DataError(f"{path}: {len(spatial)}D data of shape {spatial}; expected a 2D or 3D image")
    if len(spatial) == 2 and min(spatial) < 2:
        raise DataError(f"{path}: a 2D image of {spatial[0]} x {spatial[1]} pixels; the model needs at least 2 x 2")
    if len(spatial) == 3:
        _check_slice_plane(img, path)
    if channels == 1:
        return img
    if len(spatial) == 2 and channels in (2, 3, 4):
        if channels == 2:  # gray + alpha
            gray = img[:1]
        else:  # RGB(A): luminance, alpha ignored
            w = torch.tensor(_LUMA, dtype=img.dtype).view(3, 1, 1)
            gray = (img[:3] * w).sum(0, keepdim=True)
        return MetaTensor(gray.as_tensor().float().contiguous(), meta=dict(img.meta))
    what = "time points or volumes" if kind == "nifti" else "channels"
    raise DataError(
        f"{path}: {len(spatial) + 1}D data with {channels} {what} (shape {tuple(img.shape)}); "
        f"give a single 2D or 3D image"
    )


def _check_slice_plane(img: MetaTensor, path: Path) -> None:
    """A volume is cut across its axial axis: the two other axes must each be at least 2 voxels long."""
    spatial = tuple(img.shape[1:])
    axis = axial_axis(img.affine)
    thin = [i for i in range(3) if i != axis and spatial[i] < 2]
    if not thin:
        return
    shape = " x ".join(map(str, spatial))
    if sum(n >= 2 for n in spatial) < 2:
        raise DataError(f"{path}: a volume of shape {shape} is a line of voxels; the model needs 2D slices")
    plane = " x ".join(str(spatial[i]) for i in range(3) if i != axis)
    image = " x ".join(str(n) for i, n in enumerate(spatial) if i != thin[0])
    raise DataError(
        f"{path}: a volume of shape {shape} is one voxel thick along array axis {thin[0]}, but its affine makes "
        f"axis {axis} the superior-inferior (slice) axis, so every axial slice would be {plane} pixels. Save it "
        f"as a 2D image of {image} pixels, as a {image} x 1 volume (slice axis last), or with an affine whose "
        f"axis {thin[0]} runs superior-inferior."
    )


# ---------------------------------------------------------------------------------------------- DICOM


def _dicom_header(path: Path):
    import pydicom

    return pydicom.dcmread(str(path), stop_before_pixels=True)


def _read_dicom_file(path: Path) -> MetaTensor:
    import pydicom

    try:
        ds = _dicom_header(path)
    except pydicom.errors.InvalidDicomError as e:
        raise DataError(f"{path}: not a DICOM file ({_short(e)})") from e
    if "Rows" not in ds:
        raise DataError(f"{path}: DICOM file holds no image (SOP class {getattr(ds, 'SOPClassUID', '?')})")
    if int(getattr(ds, "NumberOfFrames", 1) or 1) > 1:
        # Multi-frame geometry lives in functional groups, which PydicomReader does not read.
        return _read_itk(path, squeeze_single_slice=True)
    try:
        # swap_ij=False keeps DICOM's rows x columns, the natural display layout of a 2D image.
        img = _load(path, reader=PydicomReader(swap_ij=False))
    except Exception as e:  # noqa: BLE001 - any reader failure gets a second chance with GDCM
        logger.debug("PydicomReader failed on %s (%s); trying SimpleITK", path, e)
        try:
            img = _read_itk(path, squeeze_single_slice=True)
        except Exception:  # noqa: BLE001 - report the first reader's reason, it is the clearer one
            raise DataError(f"{path}: not a readable DICOM image ({_short(e)})") from e
    samples = int(getattr(ds, "SamplesPerPixel", 1) or 1)
    if samples > 1 and img.ndim == 4 and img.shape[0] == 1 and img.shape[-1] == samples:
        # PydicomReader leaves colour samples as a last spatial axis; make them channels.
        img = MetaTensor(img[0].as_tensor().movedim(-1, 0).contiguous(), meta=dict(img.meta))
    return img


def _read_dicom_series(folder: Path) -> MetaTensor:
    """One DICOM series in a folder -> (1, X, Y, Z) volume (PydicomReader layout, RAS affine).

    The scanner (`mediclip_monai.data.dicom`) picks the series' files and judges their geometry; a
    series that is not one regular grid (missing slice, uneven spacing, ...) is refused, because no
    single affine could place its voxels.
    """
    series = scan_dicom_series(folder)
    if len(series.files) == 1:
        return _read_dicom_file(series.files[0])
    series.check_regular_grid()
    if not series.numbering_problem:
        # Restrict PydicomReader to the image files of this series (it globs the whole folder).
        pattern = "|".join(re.escape(os.path.join(str(folder), f.name)) for f in series.files)
        try:
            img = _load(folder, reader=PydicomReader(fname_regex=f"(?:{pattern})$"))
        except Exception as e:  # noqa: BLE001 - any reader failure gets a second chance with GDCM
            logger.info("%s: PydicomReader could not read the series (%s); trying SimpleITK", folder, _short(e))
        else:
            _note_tilt(folder, img)
            return img
    else:
        logger.info(
            "%s: %s, so PydicomReader (which stacks by InstanceNumber) would misplace slices; "
            "reading the series with SimpleITK in position order",
            folder,
            series.numbering_problem,
        )
    img = _read_itk(folder, squeeze_single_slice=False, files=series.files)
    try:
        series.voxel_order(img.affine, img.shape[1:])
    except ValueError as e:  # e.g. tilted slices: an ITK image has orthogonal axes
        raise DataError(
            f"{folder}: SimpleITK's volume of this series does not lie on its slice positions (tilted slices?); "
            "with InstanceNumbers in position order it is read by PydicomReader instead"
        ) from e
    return img


def _note_tilt(folder: Path, img: MetaTensor) -> None:
    """Say so when a series' slices step off their normal (gantry tilt): its grid is kept, sheared."""
    if shear_voxels(img.affine, img.shape[1:]) <= SHEAR_TOLERANCE_VOXELS:
        return
    axes = np.asarray(img.affine, dtype=float)[:3, :3]
    normal = np.cross(axes[:, 0], axes[:, 1])
    cosine = abs(normal @ axes[:, 2]) / (np.linalg.norm(normal) * np.linalg.norm(axes[:, 2]))
    logger.warning(
        f"{folder}: the slices step {np.degrees(np.arccos(min(cosine, 1.0))):.1f} degrees off their normal "
        "(gantry tilt); the sheared grid is kept, not resampled: the NIfTI map and mask hold it in their sform "
        "alone (nibabel reads them, ITK-based readers such as 3D Slicer's NIfTI loader refuse them), the "
        ".seg.nrrd, the DICOM SEG and Parametric Map hold it in full"
    )


def _read_itk(path: Path, squeeze_single_slice: bool, files: Sequence[Path] = ()) -> MetaTensor:
    """Read with SimpleITK (DICOM series files, multi-frame DICOM, NRRD/MHA) into MONAI's conventions.

    Volumes come out in ITK index order (x, y, z) like MONAI's other readers; a single-slice DICOM
    comes out as a 2D (rows, columns) image. The affine is converted from ITK's LPS to RAS.

    Args:
        path: the file, or the series folder (named in messages).
        squeeze_single_slice: a one-slice volume becomes a 2D image.
        files: the series' files in slice order, for a folder (`scan_dicom_series` gives them).
    """
    import SimpleITK as sitk

    if files:
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames([str(f) for f in files])
        image = reader.Execute()
    else:
        image = sitk.ReadImage(str(path))
    dim = image.GetDimension()
    comps = image.GetNumberOfComponentsPerPixel()
    arr = sitk.GetArrayFromImage(image).astype(np.float32)  # (z, y, x[, c]) or (y, x[, c])
    lps = np.eye(4)
    direction = np.asarray(image.GetDirection(), dtype=float).reshape(dim, dim)
    lps[:dim, :dim] = direction @ np.diag(image.GetSpacing())
    lps[:dim, 3] = image.GetOrigin()
    if comps > 1:
        arr = np.moveaxis(arr, -1, 0)
    else:
        arr = arr[None]
    if dim == 3 and squeeze_single_slice and arr.shape[1] == 1:
        arr, dim = arr[:, 0], 2
    if dim == 2:
        lps = lps[:, [1, 0, 2, 3]]  # array (rows=y, cols=x): swap the first two index columns
    else:
        arr = np.moveaxis(arr, (1, 2, 3), (3, 2, 1))  # (c, z, y, x) -> (c, x, y, z)
    ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps
    meta = {
        "original_affine": ras.copy(),
        "space": "RAS",
        "original_channel_dim": float("nan"),
    }
    return MetaTensor(torch.from_numpy(np.ascontiguousarray(arr)), affine=torch.as_tensor(ras), meta=meta)


# ------------------------------------------------------------------------------------------ intensity


def scale_intensity(img):
    """Scale intensities robustly to [0, 1]: the 0.5th percentile maps to 0, the 99.5th to 1, clipped.

    Percentiles ignore NaN/inf, which become 0. When the percentile range is empty (more than 99%
    of the pixels share one value) the min-max range is used instead; a constant image gives zeros.
    The result is float32 and never NaN.

    Args:
        img: numpy array, torch tensor or MetaTensor of any shape (channel-first images included).

    Returns:
        the same type (MetaTensor meta kept; torch device kept).
    """
    is_torch = isinstance(img, torch.Tensor)
    arr = img.detach().cpu().numpy() if is_torch else np.asarray(img)
    finite = arr[np.isfinite(arr)]
    lo = hi = 0.0
    if finite.size:
        lo, hi = (float(v) for v in np.percentile(finite, (0.5, 99.5)))
        if not _has_range(lo, hi):
            lo, hi = float(finite.min()), float(finite.max())
    if is_torch:
        x = img if img.dtype == torch.float32 else img.float()
        if not _has_range(lo, hi):
            return torch.zeros_like(x)
        out = ((x - lo) / (hi - lo)).clamp(0.0, 1.0)
        return torch.nan_to_num(out, nan=0.0)
    x = arr.astype(np.float32, copy=False)
    if not _has_range(lo, hi):
        return np.zeros_like(x)
    out = np.clip((x - lo) / (hi - lo), 0.0, 1.0)
    return np.nan_to_num(out, nan=0.0).astype(np.float32, copy=False)


def _has_range(lo: float, hi: float) -> bool:
    return hi - lo > 1e-8 * max(1.0, abs(lo), abs(hi))


# ---------------------------------------------------------------------------------------- orientation

# A grid whose nearest unsheared grid misplaces a voxel by more than this many voxels is sheared. Rounded
# DICOM positions leave a few hundredths of a voxel; a gantry tilt of 2 degrees, half a voxel or more.
SHEAR_TOLERANCE_VOXELS = 0.05


def shear_voxels(affine, shape: Sequence[int]) -> float:
    """How far the nearest unsheared grid puts a corner voxel of a grid, in voxels (0 for an unsheared grid).

    A grid is sheared when its axes are not perpendicular, as in a gantry-tilted DICOM series, whose slices
    step off their normal. The nearest unsheared grid keeps the origin and each axis' spacing and takes the
    rotation closest to the axes' directions: what a NIfTI qform (nibabel) or an ITK image would hold.

    Args:
        affine: 4x4 voxel-to-world matrix.
        shape: the grid's spatial shape (2D or 3D).
    """
    a = np.asarray(affine.detach().cpu() if isinstance(affine, torch.Tensor) else affine, dtype=float)[:3, :3]
    spacings = np.linalg.norm(a, axis=0)
    u, _, vt = np.linalg.svd(a / spacings)
    nearest = (u @ vt) * spacings
    corners = np.array(list(itertools.product(*[(0, n - 1) for n in (*shape, 1, 1)[:3]])), dtype=float)
    return float(np.abs(np.linalg.solve(a, (nearest - a) @ corners.T)).max())


def axial_axis(affine) -> int:
    """The spatial array axis (0, 1 or 2) most aligned with the superior-inferior world direction.

    Args:
        affine: 4x4 (or larger) voxel-to-world matrix in RAS or LPS (both share the S axis).
    """
    a = np.asarray(affine.detach().cpu() if isinstance(affine, torch.Tensor) else affine, dtype=float)
    if a.shape[0] < 4 or a.shape[1] < 4:
        raise ValueError(f"axial_axis needs a 4x4 affine of a 3D image, got shape {a.shape}")
    cols = a[:3, :3]
    norms = np.linalg.norm(cols, axis=0)
    norms[norms == 0] = 1.0
    return int(np.argmax(np.abs(cols[2]) / norms))


def _display_plan(affine, axis: int) -> tuple[int, int, bool, bool]:
    """(row_axis, col_axis, flip_rows, flip_cols) turning a slice across `axis` into a radiological view.

    Rows should run anterior -> posterior (RAS y decreasing), columns patient right -> left (RAS x
    decreasing). The in-plane array axis closer to the A-P direction becomes the rows.
    """
    a = np.asarray(affine.detach().cpu() if isinstance(affine, torch.Tensor) else affine, dtype=float)[:3, :3]
    p, q = (i for i in range(3) if i != axis)
    dirs = a / np.maximum(np.linalg.norm(a, axis=0), 1e-12)
    p_is_rows = abs(dirs[1, p]) + abs(dirs[0, q]) >= abs(dirs[0, p]) + abs(dirs[1, q])
    row, col = (p, q) if p_is_rows else (q, p)
    return row, col, bool(dirs[1, row] > 0), bool(dirs[0, col] > 0)


def _slice_to_display(plane: torch.Tensor, transpose: bool, flip_rows: bool, flip_cols: bool) -> torch.Tensor:
    """(C, n_p, n_q) slice in array order -> (C, rows, cols) display view."""
    out = plane.transpose(-1, -2) if transpose else plane
    dims = [d for d, f in ((-2, flip_rows), (-1, flip_cols)) if f]
    return out.flip(dims) if dims else out


def _display_to_slice(view: torch.Tensor, transpose: bool, flip_rows: bool, flip_cols: bool) -> torch.Tensor:
    """Inverse of `_slice_to_display`."""
    dims = [d for d, f in ((-2, flip_rows), (-1, flip_cols)) if f]
    out = view.flip(dims) if dims else view
    return out.transpose(-1, -2) if transpose else out


def _as_volume(volume) -> MetaTensor:
    if isinstance(volume, MetaTensor):
        return volume
    return MetaTensor(torch.as_tensor(np.asarray(volume) if not isinstance(volume, torch.Tensor) else volume))


def volume_to_slices(volume, min_foreground: float = 0.05) -> list[tuple[int, MetaTensor]]:
    """Cut a volume into radiological axial 2D slices, skipping near-empty ones (a 2D image is one slice).

    Slices are taken across `axial_axis` of the volume's affine and turned into the display view
    described in the module docstring (rows anterior -> posterior, columns patient right -> left).
    Each slice's meta carries its own 4x4 ``affine`` (display pixel -> RAS world), ``slice_axis``,
    ``slice_index`` and the volume's ``filename_or_obj``. Intensities are returned as given; the
    foreground test alone uses a `scale_intensity` copy of the whole volume.

    Args:
        volume: ``(1, H, W, D)`` MetaTensor (a tensor/array without meta counts as identity affine),
            or a ``(1, H, W)`` 2D image, which is returned as ``[(0, image)]`` unchanged when it passes the
            same foreground test as a slice (an all-zero or constant image does not).
        min_foreground: keep a slice only when at least this fraction of its pixels is foreground
            (scaled intensity > 0.1); 0 keeps every slice.

    Returns:
        ``[(slice_index, slice), ...]`` in increasing index order; each slice is ``(1, h, w)``.
    """
    vol = _as_volume(volume)
    if vol.ndim == 3:
        foreground = float(np.mean(np.asarray(scale_intensity(vol.detach().cpu().numpy()) > _FOREGROUND_LEVEL)))
        return [(0, vol)] if foreground >= min_foreground else []
    if vol.ndim != 4:
        raise ValueError(f"volume_to_slices expects (C, H, W) or (C, H, W, D), got shape {tuple(vol.shape)}")
    affine = vol.affine
    axis = axial_axis(affine)
    row, col, flip_rows, flip_cols = _display_plan(affine, axis)
    transpose = row > col  # a selected plane keeps its two axes in increasing order
    n_row, n_col = vol.shape[1 + row], vol.shape[1 + col]

    fg = np.asarray(scale_intensity(vol.detach().cpu().numpy()) > _FOREGROUND_LEVEL)
    other = tuple(d for d in range(fg.ndim) if d != 1 + axis)
    fractions = fg.mean(axis=other)

    plain = vol.as_tensor()
    out = []
    for k in range(vol.shape[1 + axis]):
        if fractions[k] < min_foreground:
            continue
        plane = plain.select(1 + axis, k)  # (C, n_p, n_q)
        view = _slice_to_display(plane, transpose, flip_rows, flip_cols).contiguous().clone()
        # display (r, c, 0) -> array index: the volume affine composed with this index map
        index_map = np.zeros((4, 4))
        index_map[row, 0] = -1.0 if flip_rows else 1.0
        index_map[row, 3] = n_row - 1 if flip_rows else 0.0
        index_map[col, 1] = -1.0 if flip_cols else 1.0
        index_map[col, 3] = n_col - 1 if flip_cols else 0.0
        index_map[axis, 2] = 1.0
        index_map[axis, 3] = k
        index_map[3, 3] = 1.0
        slice_affine = np.asarray(affine.detach().cpu(), dtype=float) @ index_map
        meta = {
            key: v
            for key, v in vol.meta.items()
            if key not in ("affine", "spatial_shape", "applied_operations")
        }
        meta.update({"slice_axis": axis, "slice_index": k, "spatial_shape": np.asarray(view.shape[1:])})
        out.append((k, MetaTensor(view, affine=torch.as_tensor(slice_affine), meta=meta)))
    return out


def slices_to_volume(
    slices: Sequence[tuple[int, torch.Tensor]], volume, fill_value: float = 0.0
) -> MetaTensor:
    """Put per-slice results back into a volume's array layout (the inverse of `volume_to_slices`).

    Args:
        slices: ``[(slice_index, result), ...]`` where each result is a ``(C, h, w)`` tensor or array
            in the display view that `volume_to_slices` produced, at the slice's original size ``h, w``
            (resize model outputs back first). Missing indices (skipped slices) get ``fill_value``.
        volume: the volume the slices came from, ``(1, H, W, D)`` (its affine decides the layout),
            or a ``(1, H, W)`` 2D image, in which case the single result is returned as it is.
        fill_value: value of slices that have no result.

    Returns:
        ``(C, H, W, D)`` float32 MetaTensor with the volume's meta (affine, file name), so it can be
        written in the input's space.
    """
    vol = _as_volume(volume)
    results = [
        (int(k), torch.as_tensor(np.asarray(s) if not isinstance(s, torch.Tensor) else s)) for k, s in slices
    ]
    if vol.ndim == 3:
        if len(results) != 1:
            raise ValueError(f"a 2D image has one slice, got {len(results)} results")
        data = results[0][1].detach().float()
        return MetaTensor(data.as_tensor() if isinstance(data, MetaTensor) else data, meta=dict(vol.meta))
    axis = axial_axis(vol.affine)
    row, col, flip_rows, flip_cols = _display_plan(vol.affine, axis)
    transpose = row > col
    channels = results[0][1].shape[0] if results else 1
    out = torch.full((channels, *vol.shape[1:]), float(fill_value), dtype=torch.float32)
    for k, view in results:
        plane = _display_to_slice(view.detach().cpu().float(), transpose, flip_rows, flip_cols)
        target = out.select(1 + axis, k)
        if tuple(plane.shape) != tuple(target.shape):
            raise ValueError(
                f"slice {k}: result of shape {tuple(view.shape)} does not fit the volume's slice "
                f"shape in display view; resize results back to the slice size first"
            )
        target.copy_(plane.as_tensor() if isinstance(plane, MetaTensor) else plane)
    return MetaTensor(out, meta={key: v for key, v in vol.meta.items() if key != "applied_operations"})


def _plain(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.as_tensor() if isinstance(tensor, MetaTensor) else tensor


def _view_layout(affine) -> tuple[list[int], list[int]]:
    """(permutation, flipped dims) turning a (C, H, W, D) array into (N, C, rows, cols) axial views."""
    axis = axial_axis(affine)
    row, col, flip_rows, flip_cols = _display_plan(affine, axis)
    return [1 + axis, 0, 1 + row, 1 + col], [d for d, f in ((2, flip_rows), (3, flip_cols)) if f]


def volume_to_views(volume: torch.Tensor, affine=None) -> torch.Tensor:
    """Every axial slice of a volume at once, as one stack in the display view of `volume_to_slices`.

    Args:
        volume: ``(C, H, W, D)`` tensor on any device, or a ``(C, H, W)`` 2D image.
        affine: the volume's 4x4 affine; default ``volume.affine`` (a MetaTensor's).

    Returns:
        ``(N, C, rows, cols)`` plain tensor, ``views[k]`` being slice ``k`` of `volume_to_slices`
        (``min_foreground=0``); a 2D image gives ``(1, C, H, W)``.
    """
    if volume.ndim == 3:
        return _plain(volume)[None]
    order, flips = _view_layout(_as_volume(volume).affine if affine is None else affine)
    views = _plain(volume).permute(*order)
    return views.flip(flips) if flips else views


def resize_views(views: torch.Tensor, size: Sequence[int], mode: str = "bilinear") -> torch.Tensor:
    """``(N, C, rows, cols)`` views resized to ``size`` (rows, columns) by ``mode`` (``bilinear``, ``bicubic``,
    ``nearest``...), as MONAI's ``Resize`` does: torch's interpolation, corners not aligned, no anti-aliasing.

    The one resizing of the model's inputs (to its ``input_contract``: training slices, the evaluation grid,
    the inferer's slices) and of its maps back to the slices' own size; views already at ``size`` are returned
    as they are.
    """
    size = tuple(int(s) for s in size)
    if tuple(views.shape[-2:]) == size:
        return views
    corners = {"align_corners": False} if mode in ("linear", "bilinear", "bicubic", "trilinear") else {}
    return F.interpolate(views, size=size, mode=mode, **corners)


def views_to_volume(views: torch.Tensor, affine) -> torch.Tensor:
    """The inverse of `volume_to_views`: ``(N, C, rows, cols)`` views back to ``(C, H, W, D)``.

    Args:
        views: per-slice results in display view at the slices' own size (``(1, C, H, W)`` for 2D).
        affine: the 4x4 affine of the volume the views came from, or None for a 2D image.
    """
    if affine is None:
        return _plain(views)[0]
    order, flips = _view_layout(affine)
    views = _plain(views)
    views = views.flip(flips) if flips else views
    return views.permute(*[order.index(d) for d in range(4)])


# ------------------------------------------------------------------------------------------ training


def load_training_slices(
    items: Sequence[dict],
    image_size: int | Sequence[int] = 224,
    min_foreground: float = 0.05,
    interpolation: str = "bilinear",
) -> list[dict]:
    """Load normal images as the 2D training/validation inputs of the model.

    For each entry: `read_image`, `scale_intensity` to [0, 1] (over the whole image or volume),
    `volume_to_slices` (2D images give one slice; slices with too little foreground are skipped, so an
    empty or constant image, 2D or 3D, is refused), then `resize_views` to ``image_size`` by ``interpolation``
    (the network's input contract).

    Args:
        items: datalist entries with an ``"image"`` path (e.g. the k-shot training entries).
        image_size: (rows, columns) of the output slices in pixels, or the side of a square.
        min_foreground: see `volume_to_slices`.
        interpolation: how slices are resized (``bilinear``, ``bicubic``...).

    Returns:
        ``[{"image": float32 torch.Tensor (1, S, S) in [0, 1], "name": "<case>" or "<case>_z<k>", "entry": i}, ...]``
        as plain tensors (no MetaTensor), cheap to pickle into DataLoader workers; ``entry`` is the index in
        ``items`` of the image the slice comes from.

    Raises:
        DataError: one message listing every entry that could not be read or gave no slice.
    """
    size = (int(image_size),) * 2 if isinstance(image_size, (int, np.integer)) else tuple(image_size)
    out, problems = [], []
    for i, item in enumerate(items):
        path = item.get("image") if isinstance(item, dict) else None
        if not path:
            problems.append(f"entry {i}: no 'image' ({item!r:.80})")
            continue
        try:
            img = scale_intensity(read_image(path))
        except DataError as e:
            problems.append(str(e))
            continue
        slices = volume_to_slices(img, min_foreground=min_foreground)
        if not slices:
            what = "the image has" if img.ndim == 3 else "every slice has"
            problems.append(
                f"{path}: {what} less than {min_foreground:.0%} foreground (empty, constant or nearly black); "
                "give normal scans that show the anatomy"
            )
            continue
        name = case_name(path)
        for k, plane in slices:
            small = resize_views(_plain(plane)[None].float(), size, interpolation)[0]
            out.append(
                {
                    "image": small.float().clamp(0.0, 1.0).contiguous(),
                    "name": name if img.ndim == 3 else f"{name}_z{k}",
                    "entry": i,
                }
            )
    if problems:
        raise DataError(format_problems(problems, "training images"))
    return out

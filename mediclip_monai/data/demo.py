"""The embedded demo data set: normal and lesioned brain MRI made from the MNI152 2009 template.

nilearn ships the MNI ICBM152 2009 T1 template inside its wheel, so the demo needs no download.
The template is a real average of 152 normal adult brains (skull-stripped). `build_demo_data` cuts
axial slices from it with light acquisition-like variation (head position, contrast, smooth bias
field, Rician noise) and writes, under one folder:

- ``train/``: normal 2D slices (the k-shot pool), ``validation/``: other normal 2D slices;
- ``test/``: 2D slices, half normal, half with a synthetic tumour-like lesion and its mask;
- ``test/brain_volume*.nii.gz``: one 3D volume with a 3D lesion and mask, and the same volume as a
  DICOM series folder (``test/brain_volume_dicom/``, int16 with rescale slope/intercept) so the
  DICOM path is exercised;
- ``datalist.json`` (Decathlon-style, paths relative) and ``README.txt`` (provenance and licence).

The test lesions come from a generator that is not one of the training synthesis tasks (a smooth,
irregular ellipsoid with a dark core and a bright rim, no mass effect), so the demo does not grade
the model on its own training distribution. All 2D slices are stored in the radiological display
view described in `mediclip_monai.data.loading` (rows anterior -> posterior, columns patient
right -> left) with a matching affine. This is a demonstration, not a benchmark: real evaluation
uses the public datasets (scripts/prepare_dataset.py).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage
from scipy.special import expit

from mediclip_monai.errors import DataError

__all__ = ["DATALIST_NAME", "TEMPLATE_NOTICE", "build_demo_data", "ensure_demo_data", "rebuild_demo_data"]

logger = logging.getLogger(__name__)

DATALIST_NAME = "datalist.json"

# The licence of the MNI ICBM152 template asks for this notice in all copies.
TEMPLATE_NOTICE = (
    "Copyright (C) 1993-2004 Louis Collins, McConnell Brain Imaging Centre, Montreal Neurological\n"
    "Institute, McGill University. Permission to use, copy, modify, and distribute this software and\n"
    "its documentation for any purpose and without fee is hereby granted, provided that the above\n"
    "copyright notice appear in all copies. The authors and McGill University make no representations\n"
    'about the suitability of this software for any purpose. It is provided "as is" without express\n'
    "or implied warranty. The authors are not responsible for any data loss, equipment damage,\n"
    "property loss, or injury to subjects or patients resulting from the use or misuse of this\n"
    "software package."
)

_N_TRAIN, _N_VAL, _N_TEST = 24, 8, 20
_SLICE_SHAPE = (200, 160)  # rows (anterior -> posterior) x columns (right -> left), 1 mm pixels
_VOLUME_SHAPE = (64, 76, 64)  # RAS-ordered array axes, 2.5 mm voxels
_VOLUME_SPACING = 2.5
_BRAIN_CENTRE = np.array([0.0, -17.0, 5.0])  # mm, MNI space: middle of the brain's bounding box
# DICOM stored value = (intensity - intercept) / slope, as int16.
_DICOM_SLOPE, _DICOM_INTERCEPT = 0.1, -100.0


# ------------------------------------------------------------------------------------------ public


def ensure_demo_data(root: str | os.PathLike) -> str:
    """Return ``<root>/datalist.json``, building the demo set there first if it is not there yet.

    The build happens in a temporary folder beside ``root`` that is renamed into place when
    complete, so an interrupted build never leaves a half-written demo set, and concurrent callers
    (e.g. several ranks of a multi-GPU run) end with one complete copy.

    Args:
        root: folder of the demo set (created, with its parents, when missing).

    Raises:
        DataError: ``root`` exists, is not empty, and holds no datalist (it is not overwritten).
    """
    root = Path(root)
    datalist = root / DATALIST_NAME
    if datalist.is_file():
        return str(datalist)
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise DataError(
            f"{root}: exists but holds no {DATALIST_NAME}; remove it or choose another folder for the demo data"
        )
    logger.info("Building the demo data set (MNI152 template slices) in %s", root)
    start = time.perf_counter()
    _build_atomically(root, seed=0, replace=False)
    logger.info("Demo data set ready in %.1f s: %s", time.perf_counter() - start, datalist)
    return str(datalist)


def rebuild_demo_data(root: str | os.PathLike, seed: int = 0) -> str:
    """Build the demo set and atomically replace whatever ``root`` holds with it.

    Args:
        root: folder of the demo set; an existing one is replaced only once the new one is complete.
        seed: see `build_demo_data`.

    Returns:
        path of ``<root>/datalist.json``.
    """
    root = Path(root)
    _build_atomically(root, seed=seed, replace=True)
    return str(root / DATALIST_NAME)


def build_demo_data(root: str | os.PathLike, seed: int = 0) -> str:
    """Write the demo set into ``root`` (see the module docstring for its content).

    The build is deterministic for a given seed (DICOM UIDs included). It writes in place; use
    `ensure_demo_data` (or scripts/make_demo_data.py) for an atomic build.

    Args:
        root: output folder (created when missing; existing files of the same names are overwritten).
        seed: seed of every random choice (slice heights jitter, variation, lesions).

    Returns:
        path of ``<root>/datalist.json``.
    """
    root = Path(root)
    for sub in ("train", "validation", "test"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    template, t_affine = _load_template()

    def heights(n, low, high):
        return np.linspace(low, high, n) + rng.uniform(-1.0, 1.0, n)

    datalist: dict = {
        "name": "MediCLIP demo (MNI152 brain MRI)",
        "description": "Demonstration only, not a benchmark: axial slices of the MNI ICBM152 2009 T1 "
        "template with synthetic variation; test lesions are synthetic. See README.txt.",
        "reference": "Fonov et al., NeuroImage 2011 and 2009 (MNI ICBM152 2009 template)",
        "licence": "MNI ICBM152 template notice, see README.txt",
        "modality": {"0": "MR T1"},
        "training": [],
        "validation": [],
        "test": [],
    }
    for i, z in enumerate(heights(_N_TRAIN, -20.0, 62.0)):
        image, _, affine = _make_slice(template, t_affine, z, rng, lesion=False)
        rel = f"train/brain_train_{i:03d}.nii.gz"
        _save_nifti(root / rel, image, affine)
        datalist["training"].append({"image": rel})
    for i, z in enumerate(heights(_N_VAL, -16.0, 58.0)):
        image, _, affine = _make_slice(template, t_affine, z, rng, lesion=False)
        rel = f"validation/brain_val_{i:03d}.nii.gz"
        _save_nifti(root / rel, image, affine)
        datalist["validation"].append({"image": rel})
    for i, z in enumerate(heights(_N_TEST, -14.0, 56.0)):
        abnormal = i % 2 == 1
        image, mask, affine = _make_slice(template, t_affine, z, rng, lesion=abnormal)
        rel, rel_mask = f"test/brain_test_{i:03d}.nii.gz", f"test/brain_test_{i:03d}_mask.nii.gz"
        _save_nifti(root / rel, image, affine)
        _save_nifti(root / rel_mask, mask, affine)
        datalist["test"].append({"image": rel, "label": rel_mask, "abnormal": int(abnormal)})

    volume, mask, affine = _make_volume(template, t_affine, rng)
    _save_nifti(root / "test/brain_volume.nii.gz", volume, affine)
    _save_nifti(root / "test/brain_volume_mask.nii.gz", mask, affine)
    datalist["test"].append(
        {"image": "test/brain_volume.nii.gz", "label": "test/brain_volume_mask.nii.gz", "abnormal": 1}
    )
    dicom_affine = _write_dicom_series(volume, affine, root / "test/brain_volume_dicom", seed)
    # The DICOM series reads (PydicomReader layout) flipped in x and y against the RAS NIfTI: give it
    # a mask in its own array layout so evaluation can compare arrays directly.
    _save_nifti(root / "test/brain_volume_dicom_mask.nii.gz", mask[::-1, ::-1, :], dicom_affine)
    datalist["test_dicom"] = [
        {
            "image": "test/brain_volume_dicom",
            "label": "test/brain_volume_dicom_mask.nii.gz",
            "abnormal": 1,
        }
    ]

    (root / "README.txt").write_text(_readme(seed), encoding="utf-8")
    path = root / DATALIST_NAME
    path.write_text(json.dumps(datalist, indent=1) + "\n", encoding="utf-8")
    return str(path)


# ------------------------------------------------------------------------------------------ building


def _build_atomically(root: Path, seed: int, replace: bool) -> None:
    """Build in a temporary folder beside ``root`` and rename it into place."""
    root = root.absolute()
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.building-", dir=root.parent))
    old = None
    try:
        build_demo_data(tmp, seed=seed)
        if replace and root.exists():
            old = root.with_name(f".{root.name}.old-{os.getpid()}")
            os.rename(root, old)
        elif root.is_dir() and not any(root.iterdir()):
            root.rmdir()
        try:
            os.rename(tmp, root)
        except OSError:
            # Another process finished first: its copy is as good as ours.
            if not (root / DATALIST_NAME).is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def _load_template() -> tuple[np.ndarray, np.ndarray]:
    """The MNI152 2009 T1 template (1 mm, skull-stripped, values 0..1) and its RAS affine."""
    from nilearn.datasets import load_mni152_template  # bundled in nilearn's wheel: no download

    img = load_mni152_template(resolution=1)
    return np.asarray(img.get_fdata(dtype=np.float32)), np.asarray(img.affine, dtype=float)


def _rotation(angles_deg) -> np.ndarray:
    """Rotation matrix from (yaw about z, pitch about x, roll about y), degrees."""
    yaw, pitch, roll = np.deg2rad(angles_deg)
    rz = np.array([[np.cos(yaw), -np.sin(yaw), 0], [np.sin(yaw), np.cos(yaw), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(pitch), -np.sin(pitch)], [0, np.sin(pitch), np.cos(pitch)]])
    ry = np.array([[np.cos(roll), 0, np.sin(roll)], [0, 1, 0], [-np.sin(roll), 0, np.cos(roll)]])
    return rz @ rx @ ry


def _make_slice(template, t_affine, z_mm, rng, lesion: bool):
    """One axial slice at height ``z_mm`` (MNI), as a scanner would give it.

    Returns (image float32 HxW, mask uint8 HxW, 4x4 RAS affine of the display view).
    """
    rows, cols = _SLICE_SHAPE
    r = np.arange(rows) - (rows - 1) / 2
    c = np.arange(cols) - (cols - 1) / 2
    rr, cc = np.meshgrid(r, c, indexing="ij")
    # Display view: columns towards the patient's left (-x RAS), rows towards posterior (-y RAS).
    offsets = np.stack([-cc.ravel(), -rr.ravel(), np.zeros(rr.size)])
    # Head position varies from scan to scan: small rotation, size and shift.
    rot = _rotation(rng.uniform([-6.0, -4.0, -4.0], [6.0, 4.0, 4.0]))
    scale = rng.uniform(0.95, 1.05)
    shift = np.array([*rng.uniform(-4.0, 4.0, 2), 0.0])
    centre = np.array([_BRAIN_CENTRE[0], _BRAIN_CENTRE[1], z_mm])
    world = scale * (rot @ offsets) + (centre + shift)[:, None]
    vox = np.linalg.inv(t_affine) @ np.vstack([world, np.ones(world.shape[1])])
    anatomy = ndimage.map_coordinates(template, vox[:3], order=1, mode="constant", cval=0.0)
    anatomy = anatomy.reshape(rows, cols)

    brain = ndimage.binary_fill_holes(anatomy > 0.05)
    tissue = np.clip(anatomy, 0.0, None) ** rng.uniform(0.85, 1.15)  # contrast varies by protocol
    mask = np.zeros(anatomy.shape, dtype=np.uint8)
    if lesion:
        tissue, mask = _insert_lesion(tissue, brain, spacing=1.0, rng=rng)
    image = _acquire(tissue, rng)
    affine = np.array(
        [
            [0.0, -1.0, 0.0, centre[0] + (cols - 1) / 2],
            [-1.0, 0.0, 0.0, centre[1] + (rows - 1) / 2],
            [0.0, 0.0, 1.0, centre[2]],
            [0.0, 0.0, 0.0, 1.0],
        ]
    )
    return image, mask, affine


def _make_volume(template, t_affine, rng):
    """The 3D test volume: the template resampled to 2.5 mm, with a 3D lesion.

    Returns (volume float32, mask uint8, 4x4 RAS affine); array axes run +x, +y, +z (RAS).
    """
    shape = np.array(_VOLUME_SHAPE)
    origin = _BRAIN_CENTRE - _VOLUME_SPACING * (shape - 1) / 2
    affine = np.diag([_VOLUME_SPACING] * 3 + [1.0])
    affine[:3, 3] = origin
    # Smooth before downsampling 1 mm -> 2.5 mm so the volume does not alias.
    smooth = ndimage.gaussian_filter(template, sigma=0.9)
    idx = np.indices(_VOLUME_SHAPE, dtype=float).reshape(3, -1)
    vox = (np.linalg.inv(t_affine) @ affine @ np.vstack([idx, np.ones(idx.shape[1])]))[:3]
    anatomy = ndimage.map_coordinates(smooth, vox, order=1, mode="constant", cval=0.0).reshape(_VOLUME_SHAPE)
    brain = ndimage.binary_fill_holes(anatomy > 0.05)
    tissue = np.clip(anatomy, 0.0, None) ** rng.uniform(0.9, 1.1)
    tissue, mask = _insert_lesion(tissue, brain, spacing=_VOLUME_SPACING, rng=rng)
    return _acquire(tissue, rng), mask, affine


def _insert_lesion(tissue, brain, spacing: float, rng):
    """A tumour-like lesion: irregular ellipse/ellipsoid, dark core, bright rim, no mass effect.

    Placed fully inside the brain. Works in 2D and 3D; ``spacing`` is the isotropic pixel size (mm).
    Returns (tissue with the lesion, uint8 mask of where the tissue was replaced).
    """
    ndim = tissue.ndim
    semi = rng.uniform(5.0, 14.0, ndim) if ndim == 2 else rng.uniform(8.0, 16.0, ndim)  # semi-axes, mm
    depth = ndimage.distance_transform_edt(brain) * spacing
    candidates = np.argwhere(depth >= semi.max() * 1.2 + 3.0)
    while len(candidates) == 0:  # small brain section: shrink the lesion until it fits
        semi *= 0.8
        candidates = np.argwhere(depth >= semi.max() * 1.2 + 3.0)
    centre = candidates[rng.integers(len(candidates))]
    if ndim == 2:
        a = rng.uniform(0, np.pi)
        rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    else:
        from scipy.spatial.transform import Rotation

        rot = Rotation.random(random_state=rng).as_matrix()
    grid = (np.indices(tissue.shape, dtype=float).reshape(ndim, -1) - centre[:, None]) * spacing
    local = rot.T @ grid
    radius = np.sqrt(((local / semi[:, None]) ** 2).sum(0)).reshape(tissue.shape)
    # Irregular outline: modulate the radius with smooth noise (4 mm Gaussian correlation).
    wobble = ndimage.gaussian_filter(rng.standard_normal(tissue.shape), sigma=4.0 / spacing)
    radius *= 1.0 + 0.12 * wobble / max(float(wobble.std()), 1e-6)

    reference = float(np.percentile(tissue[brain], 90))  # white-matter level
    core, rim = rng.uniform(0.25, 0.45) * reference, rng.uniform(1.2, 1.4) * reference
    rim_start = rng.uniform(0.5, 0.7)
    lesion = core + (rim - core) * expit((radius - rim_start) / 0.05)
    weight = expit((0.95 - radius) / 0.03)  # ~1 inside, ~0 outside, smooth edge
    out = tissue * (1.0 - weight) + lesion * weight
    mask = ((radius <= 0.95) & brain).astype(np.uint8)
    return out, mask


def _acquire(tissue, rng):
    """Scanner-like intensities: gain, smooth multiplicative bias field, Rician noise, integer values."""
    gain = rng.uniform(700.0, 1100.0)
    coords = np.meshgrid(*(np.linspace(-1.0, 1.0, n) for n in tissue.shape), indexing="ij")
    field = sum(rng.normal(0.0, 0.12) * x for x in coords)
    for i in range(len(coords)):
        for j in range(i, len(coords)):
            field = field + rng.normal(0.0, 0.08) * coords[i] * coords[j]
    signal = tissue * gain * np.exp(field)
    sigma = rng.uniform(0.01, 0.03) * gain
    noisy = np.hypot(signal + rng.normal(0.0, sigma, tissue.shape), rng.normal(0.0, sigma, tissue.shape))
    return np.round(noisy).astype(np.float32)  # magnitude images are integers; also compresses well


# ------------------------------------------------------------------------------------------ writing


def _save_nifti(path: Path, data: np.ndarray, affine: np.ndarray) -> None:
    data = np.ascontiguousarray(data)
    img = nib.Nifti1Image(data, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm")
    nib.save(img, str(path))


def _write_dicom_series(volume: np.ndarray, affine: np.ndarray, folder: Path, seed: int) -> np.ndarray:
    """Write a RAS-ordered volume as a standard axial MR DICOM series, one file per slice.

    Each slice is stored the usual DICOM way (ImageOrientationPatient 1/0/0/0/1/0: rows run
    anterior -> posterior, columns patient right -> left), int16 with RescaleSlope/Intercept.

    Returns:
        the 4x4 RAS affine of the series as MONAI's PydicomReader lays it out, ``volume[::-1, ::-1, :]``.
    """
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    spacing = np.abs(np.diag(affine)[:3])
    if not np.allclose(affine[:3, :3], np.diag(spacing)):
        raise ValueError("the demo DICOM writer expects an axis-aligned RAS volume")
    folder.mkdir(parents=True, exist_ok=True)
    nx, ny, nz = volume.shape

    def uid(*parts) -> str:  # deterministic per seed, so rebuilding gives the same series
        return generate_uid(entropy_srcs=["mediclip-monai-demo", str(seed), *map(str, parts)])

    study, series, frame = uid("study"), uid("series"), uid("frame")
    stored_all = np.round((volume - _DICOM_INTERCEPT) / _DICOM_SLOPE)
    if stored_all.min() < -32768 or stored_all.max() > 32767:
        raise ValueError("demo volume intensities overflow int16 at the chosen rescale slope")
    vmin, vmax = float(volume.min()), float(np.percentile(volume, 99.5))
    for k in range(nz):
        pixels = stored_all[::-1, ::-1, k].T.astype("<i2")  # (rows, columns) = (A->P, R->L)
        corner_ras = affine @ np.array([nx - 1, ny - 1, k, 1.0])  # world position of pixel (0, 0)
        sop = uid("image", k)

        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MRImageStorage
        meta.MediaStorageSOPInstanceUID = sop
        meta.TransferSyntaxUID = ExplicitVRLittleEndian

        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, sop
        ds.PatientName, ds.PatientID = "Demo^MNI152", "MEDICLIP-DEMO"
        ds.PatientBirthDate, ds.PatientSex = "", "O"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = "20240101"
        ds.StudyTime = ds.SeriesTime = ds.ContentTime = "120000"
        ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName = "1", "", ""
        ds.StudyDescription = "MediCLIP demo"
        ds.SeriesDescription = "MNI152 T1 template with synthetic lesion (demonstration)"
        ds.Modality, ds.Manufacturer, ds.BodyPartExamined = "MR", "mediclip-monai demo", "BRAIN"
        ds.SeriesNumber, ds.InstanceNumber = 1, k + 1
        ds.PositionReferenceIndicator, ds.PatientPosition = "", "HFS"
        ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
        ds.ScanningSequence, ds.SequenceVariant, ds.ScanOptions = "GR", "SP", ""
        ds.MRAcquisitionType = "3D"
        ds.ImagePositionPatient = [f"{-corner_ras[0]:.4f}", f"{-corner_ras[1]:.4f}", f"{corner_ras[2]:.4f}"]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [float(spacing[1]), float(spacing[0])]  # row spacing (y), column spacing (x)
        ds.SliceThickness = ds.SpacingBetweenSlices = float(spacing[2])
        ds.SliceLocation = f"{corner_ras[2]:.4f}"
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows, ds.Columns = pixels.shape
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = _DICOM_SLOPE, _DICOM_INTERCEPT, "US"
        ds.WindowCenter, ds.WindowWidth = round((vmin + vmax) / 2, 1), round(vmax - vmin, 1)
        ds.PixelData = pixels.tobytes()
        pydicom.dcmwrite(folder / f"IM_{k + 1:04d}.dcm", ds, enforce_file_format=True)

    flip_xy = np.array([[-1.0, 0, 0, nx - 1], [0, -1.0, 0, ny - 1], [0, 0, 1.0, 0], [0, 0, 0, 1.0]])
    return affine @ flip_xy


def _readme(seed: int) -> str:
    return f"""MediCLIP demo data set (built by mediclip_monai.data.demo, seed {seed})

This is a DEMONSTRATION, not a benchmark. It lets the bundle train and run end to end with no
download. Real evaluation uses the public datasets of the paper (scripts/prepare_dataset.py).

Source: the MNI ICBM152 2009 nonlinear symmetric T1 template (an average of 152 normal adult brains,
skull-stripped), as bundled with nilearn. All images are axial cuts of that one template with
synthetic variation (head position, contrast, bias field, Rician noise). The "abnormal" test images
carry SYNTHETIC tumour-like lesions (dark core, bright rim), not real disease; a lesion generator
different from the training anomaly synthesis made them.

Content (datalist.json, paths relative to this folder):
  training    {_N_TRAIN} normal 2D slices (train/)
  validation  {_N_VAL} normal 2D slices (validation/)
  test        {_N_TEST} 2D slices, half with a lesion, masks *_mask.nii.gz (all-zero for normal ones),
              plus one 3D volume (test/brain_volume.nii.gz, 2.5 mm) with a 3D lesion and mask
  test_dicom  the same 3D volume as an MR DICOM series (test/brain_volume_dicom/), with its mask in
              the series' array layout
2D slices are radiological axial views: row 0 anterior, column 0 the patient's right.

References: V. Fonov, A. Evans, R. McKinstry, C. Almli, D. Collins. Unbiased nonlinear average
age-appropriate brain templates from birth to adulthood. NeuroImage 47 (2009) S102.
V. Fonov et al. Unbiased average age-appropriate atlases for pediatric studies. NeuroImage 54 (2011)
313-327.

Licence of the MNI ICBM152 template (the notice must appear in all copies):

{TEMPLATE_NOTICE}
"""

"""A second held-out evaluation set: another normal brain, with lesions unlike any the model has seen.

The demo (`mediclip_monai.data.demo`) is cut from the MNI152 template, an average brain, and its test
lesions are tumour-like (dark core, bright rim). This set checks that a result is not peculiar to that
brain or those lesions. Its anatomy is one real adult subject's T1 MRI that ships inside nibabel's
wheel (``nibabel/tests/data/anatomical.nii``: 33 x 41 x 25 voxels of 2 mm, cropped around the lateral
ventricles, so every slice is all tissue: no background, no skull). `build_heldout_brain` cuts 1 mm
axial slices from it with light acquisition-like variation (head position, contrast, smooth bias
field, Rician noise) and writes, under one folder:

- ``train/`` normal slices (the k-shot pool), ``validation/`` other normal slices;
- ``test/`` slices, half normal, half with a lesion and its mask (all-zero masks for the normal ones);
- ``datalist.json`` (Decathlon-style, paths relative, ``label``/``abnormal`` on test entries) and
  ``README.txt`` (provenance).

Test lesions, alternately (`insert_foci`, `insert_wedge`):
- MS-like foci: 3 to 7 small bright ovoid spots, 1.5 to 4 mm semi-axes, scattered over the slice;
- an infarct-like wedge: a homogeneous dark sector opening towards the edge of the field of view, whose
  texture is wiped out (constant tissue level inside, before scanner noise).
Neither is a training synthesis task (CutPaste, Gaussian intensity change, source deformation) nor the
demo's lesion. Slices are stored in the same radiological view as the demo's (rows anterior ->
posterior, columns patient right -> left) with a matching affine. Deterministic for a seed. Generated
data is never committed: benchmarks build it into a temporary folder.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage
from scipy.special import expit

# The demo's scanner model and NIfTI writer, shared so both sets are "acquired" the same way.
from mediclip_monai.data.demo import DATALIST_NAME, _acquire, _rotation, _save_nifti

__all__ = ["SOURCE_FILE", "build_heldout_brain", "insert_foci", "insert_wedge", "load_subject"]

SOURCE_FILE = Path(nib.__file__).resolve().parent / "tests" / "data" / "anatomical.nii"

_N_TRAIN, _N_VAL, _N_TEST = 24, 8, 40
_SLICE_SHAPE = (72, 56)  # rows (anterior -> posterior) x columns (right -> left), 1 mm pixels
_CENTRE = np.array([0.0, 0.0, 8.0])  # mm: middle of the subject volume's field of view
_HEIGHTS = (-11.0, 27.0)  # mm: axial range cut, away from the top and bottom of the field of view


def load_subject() -> tuple[np.ndarray, np.ndarray]:
    """The subject's T1 volume scaled so white matter is about 1 (99th percentile = 1), and its affine."""
    if not SOURCE_FILE.is_file():
        raise FileNotFoundError(f"{SOURCE_FILE}: nibabel's example T1 is missing from this installation")
    img = nib.load(str(SOURCE_FILE))
    data = np.asarray(img.get_fdata(dtype=np.float32))
    return np.clip(data / np.percentile(data, 99), 0.0, None), np.asarray(img.affine, dtype=float)


def build_heldout_brain(root: str | os.PathLike, seed: int = 0) -> str:
    """Write the held-out set into ``root`` (see the module docstring); returns the datalist's path.

    Args:
        root: output folder (created when missing; files of the same names are overwritten).
        seed: seed of every random choice (slice heights jitter, variation, lesions).
    """
    root = Path(root)
    for sub in ("train", "validation", "test"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    volume, affine = load_subject()
    # Cubic spline coefficients once: slices at any angle are then cheap.
    coefficients = ndimage.spline_filter(volume, order=3)

    def heights(n):
        return np.linspace(*_HEIGHTS, n) + rng.uniform(-1.0, 1.0, n)

    datalist: dict = {
        "name": "MediCLIP held-out brain (one real subject, synthetic MS-like and infarct-like lesions)",
        "description": "Held-out evaluation set, not the demo brain: axial slices of nibabel's example T1 "
        "(one adult subject) with synthetic variation; test lesions are synthetic. See README.txt.",
        "modality": {"0": "MR T1"},
        "training": [],
        "validation": [],
        "test": [],
    }
    for section, folder, n in (("training", "train", _N_TRAIN), ("validation", "validation", _N_VAL)):
        for i, z in enumerate(heights(n)):
            image, _, slice_affine = _make_slice(coefficients, affine, z, rng, lesion=None)
            rel = f"{folder}/heldout_{folder}_{i:03d}.nii.gz"
            _save_nifti(root / rel, image, slice_affine)
            datalist[section].append({"image": rel})
    for i, z in enumerate(heights(_N_TEST)):
        lesion = (None, "foci", None, "wedge")[i % 4]
        image, mask, slice_affine = _make_slice(coefficients, affine, z, rng, lesion=lesion)
        rel, rel_mask = f"test/heldout_test_{i:03d}.nii.gz", f"test/heldout_test_{i:03d}_mask.nii.gz"
        _save_nifti(root / rel, image, slice_affine)
        _save_nifti(root / rel_mask, mask, slice_affine)
        entry = {"image": rel, "label": rel_mask, "abnormal": int(lesion is not None)}
        datalist["test"].append({**entry, "lesion": lesion} if lesion else entry)

    (root / "README.txt").write_text(_readme(seed), encoding="utf-8")
    path = root / DATALIST_NAME
    path.write_text(json.dumps(datalist, indent=1) + "\n", encoding="utf-8")
    return str(path)


def _make_slice(coefficients, v_affine, z_mm, rng, lesion: str | None):
    """One 1 mm axial slice at height ``z_mm`` with a random head position; returns (image, mask, affine)."""
    rows, cols = _SLICE_SHAPE
    r = np.arange(rows) - (rows - 1) / 2
    c = np.arange(cols) - (cols - 1) / 2
    rr, cc = np.meshgrid(r, c, indexing="ij")
    offsets = np.stack([-cc.ravel(), -rr.ravel(), np.zeros(rr.size)])  # display view, as the demo's
    rot = _rotation(rng.uniform([-3.0, -2.0, -2.0], [3.0, 2.0, 2.0]))
    scale = rng.uniform(0.97, 1.03)
    shift = np.array([*rng.uniform(-1.5, 1.5, 2), 0.0])
    centre = np.array([_CENTRE[0], _CENTRE[1], z_mm])
    world = scale * (rot @ offsets) + (centre + shift)[:, None]
    vox = np.linalg.inv(v_affine) @ np.vstack([world, np.ones(world.shape[1])])
    # mode "nearest": a corner that leaves the cropped field of view repeats its edge, as tissue would go on.
    anatomy = ndimage.map_coordinates(coefficients, vox[:3], order=3, mode="nearest", prefilter=False)
    tissue = np.clip(anatomy.reshape(rows, cols), 0.0, None) ** rng.uniform(0.85, 1.15)
    mask = np.zeros(tissue.shape, dtype=np.uint8)
    if lesion == "foci":
        tissue, mask = insert_foci(tissue, rng)
    elif lesion == "wedge":
        tissue, mask = insert_wedge(tissue, rng)
    affine = np.array(
        [
            [0.0, -1.0, 0.0, centre[0] + (cols - 1) / 2],
            [-1.0, 0.0, 0.0, centre[1] + (rows - 1) / 2],
            [0.0, 0.0, 1.0, centre[2]],
            [0.0, 0.0, 0.0, 1.0],
        ]
    )
    return _acquire(tissue, rng), mask, affine


def insert_foci(tissue: np.ndarray, rng: np.random.Generator, margin: int = 4):
    """MS-like lesions: 3 to 7 small bright ovoid foci (semi-axes 1.5-4 mm at 1 mm pixels).

    Each focus rises smoothly to 1.3-1.6 times the white-matter level (90th percentile of the tissue).
    Returns (tissue with the foci, uint8 mask of the pixels inside any focus).
    """
    out = tissue.copy()
    mask = np.zeros(tissue.shape, dtype=bool)
    reference = float(np.percentile(tissue, 90))
    grid = np.indices(tissue.shape, dtype=float)
    for _ in range(int(rng.integers(3, 8))):
        semi = rng.uniform(1.5, 4.0, 2)
        centre = rng.uniform(margin, np.array(tissue.shape) - 1 - margin)
        angle = rng.uniform(0.0, np.pi)
        d = grid - centre[:, None, None]
        u = np.cos(angle) * d[0] + np.sin(angle) * d[1]
        v = -np.sin(angle) * d[0] + np.cos(angle) * d[1]
        radius = np.sqrt((u / semi[0]) ** 2 + (v / semi[1]) ** 2)
        weight = expit((1.0 - radius) / 0.12)
        out = np.maximum(out, out * (1.0 - weight) + rng.uniform(1.3, 1.6) * reference * weight)
        mask |= radius <= 1.0
    return out, mask.astype(np.uint8)


def insert_wedge(tissue: np.ndarray, rng: np.random.Generator):
    """Infarct-like lesion: a homogeneous dark wedge (sector) that opens towards an edge of the field of view.

    The apex lies in the middle third of the slice; the wedge opens 25-50 degrees towards a random
    direction, from 3-8 mm to 18-38 mm away from the apex (or the edge of the slice). Inside, the
    tissue is replaced by one level, 0.45-0.65 times the white-matter level (texture lost), blended
    over about 1 mm. Returns (tissue, uint8 mask).
    """
    shape = np.array(tissue.shape, dtype=float)
    apex = rng.uniform(shape / 3, 2 * shape / 3)
    direction = rng.uniform(-np.pi, np.pi)
    half_angle = np.deg2rad(rng.uniform(25.0, 50.0)) / 2
    start = rng.uniform(3.0, 8.0)  # mm from the apex where the lesion begins (not a point at the tip)
    reach = start + rng.uniform(15.0, 30.0)  # mm from the apex where it ends, if the edge is farther
    grid = np.indices(tissue.shape, dtype=float) - apex[:, None, None]
    distance = np.hypot(grid[0], grid[1])
    off_axis = np.angle(np.exp(1j * (np.arctan2(grid[1], grid[0]) - direction)))
    # Signed closeness to the wedge's border in mm: positive inside (angular part measured as arc length).
    inside_angle = (half_angle - np.abs(off_axis)) * np.maximum(distance, 1.0)
    inside = np.minimum(np.minimum(inside_angle, distance - start), reach - distance)
    weight = expit(inside / 0.5)
    level = rng.uniform(0.45, 0.65) * float(np.percentile(tissue, 90))
    out = tissue * (1.0 - weight) + level * weight
    return out, (inside >= 0).astype(np.uint8)


def _readme(seed: int) -> str:
    return f"""MediCLIP held-out brain set (built by mediclip_monai.data.heldout_brain, seed {seed})

A second evaluation set beside the demo, to check that results do not depend on the demo's brain or
its lesions. It is synthetic test material, not a benchmark of real disease.

Source anatomy: nibabel's example T1 MRI (nibabel/tests/data/anatomical.nii, distributed with
nibabel under the MIT licence): one real adult subject, 33 x 41 x 25 voxels of 2 mm, cropped around
the lateral ventricles. Slices are resampled at 1 mm with synthetic variation (head position,
contrast, bias field, Rician noise).

Content (datalist.json, paths relative to this folder):
  training    {_N_TRAIN} normal axial slices (train/)
  validation  {_N_VAL} normal axial slices (validation/)
  test        {_N_TEST} axial slices: half normal; a quarter with synthetic MS-like bright foci, a quarter
              with a synthetic infarct-like dark wedge ("lesion" key); masks *_mask.nii.gz
Slices are radiological axial views: row 0 anterior, column 0 the patient's right.
"""

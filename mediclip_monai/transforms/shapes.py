"""Shape makers for anomaly synthesis: where, inside its box, a synthetic anomaly lies.

Two families, as in the self-supervised tasks of "Many tasks make light work: Learning to localise
medical anomalies from multiple synthetic tasks" (Baugh et al., MICCAI 2023), which MediCLIP
(MICCAI 2024, arXiv 2405.11315) uses to train on normal images only:

- :func:`perlin_blob`: one smooth, irregular blob cut from single-cell Perlin noise (used by the
  cut-paste and intensity tasks);
- :func:`deformed_hypershape`: a sheared and rotated rectangle or ellipse with an exact edge, so that
  the radial deformation tasks can measure, from any centre, how far the edge is in any direction.

Every function takes the ``np.random.RandomState`` to draw from (a transform passes its ``self.R``),
so seeding the transform seeds the shapes. Masks are boolean arrays in pixel units of the image the
anomaly goes into; coordinates are array indices (row, column).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["Hypershape", "deformed_hypershape", "perlin_blob", "perlin_noise"]

# A tiny box (1-2 pixels a side, only on very small images) may never pass the coverage test:
# after this many draws the whole box is used instead, so a call always terminates.
MAX_BLOB_TRIES = 100


def _fade(t: np.ndarray) -> np.ndarray:
    # Perlin's quintic smoothstep: zero first and second derivative at the lattice points.
    return t * t * t * (t * (t * 6.0 - 15.0) + 10.0)


def perlin_noise(x: np.ndarray, y: np.ndarray, gradients: np.ndarray) -> np.ndarray:
    """Gradient (Perlin) noise evaluated at arbitrary points.

    Args:
        x: row coordinates in lattice units, in ``[0, gradients.shape[0] - 1]``.
        y: column coordinates in lattice units, in ``[0, gradients.shape[1] - 1]``, same shape as ``x``.
        gradients: unit gradient vectors at the lattice points, shape ``(res_x + 1, res_y + 1, 2)``.

    Returns:
        noise of the shape of ``x``, zero at every lattice point, roughly within ``[-1, 1]``.
    """
    res_x, res_y = gradients.shape[0] - 1, gradients.shape[1] - 1
    if res_x == 1 and res_y == 1:
        # One cell (the blob case): the four corner gradients are constants, no gathering needed.
        fx, fy = x, y
        (g00, g01), (g10, g11) = gradients
    else:
        ix = np.clip(np.floor(x).astype(np.intp), 0, res_x - 1)
        iy = np.clip(np.floor(y).astype(np.intp), 0, res_y - 1)
        fx, fy = x - ix, y - iy
        g00, g10 = gradients[ix, iy], gradients[ix + 1, iy]
        g01, g11 = gradients[ix, iy + 1], gradients[ix + 1, iy + 1]
    n00 = g00[..., 0] * fx + g00[..., 1] * fy
    n10 = g10[..., 0] * (fx - 1.0) + g10[..., 1] * fy
    n01 = g01[..., 0] * fx + g01[..., 1] * (fy - 1.0)
    n11 = g11[..., 0] * (fx - 1.0) + g11[..., 1] * (fy - 1.0)
    u, v = _fade(fx), _fade(fy)
    near = n00 + u * (n10 - n00)
    far = n01 + u * (n11 - n01)
    # sqrt(2) stretches the range of 2D gradient noise to about [-1, 1].
    return np.sqrt(2.0) * (near + v * (far - near))


def _random_gradients(res: Sequence[int], rng: np.random.RandomState) -> np.ndarray:
    angles = 2.0 * np.pi * rng.rand(res[0] + 1, res[1] + 1)
    return np.stack([np.cos(angles), np.sin(angles)], axis=-1)


def perlin_blob(
    box_bounds: Sequence[tuple[int, int]],
    rng: np.random.RandomState,
    threshold: float = 0.3,
    min_coverage: float = 0.2,
    res: Sequence[int] = (1, 1),
    max_rotation_deg: float = 90.0,
) -> np.ndarray:
    """A smooth single blob: thresholded single-cell Perlin noise, rotated, inside a random box.

    The box sides are drawn uniformly in ``[lb, ub)``; the noise pattern is rotated about the box
    centre by an angle uniform in ``[-max_rotation_deg, max_rotation_deg]`` (what falls outside the
    box is lost, as when rotating an image with a zero background) and thresholded. Gradients and
    angle are drawn again until the blob covers at least ``min_coverage`` of its box, so the box
    size is a fair proxy for the anomaly size.

    Args:
        box_bounds: ``(lb, ub)`` side bounds in pixels, one pair per image axis (rows, columns).
        rng: the random state to draw from.
        threshold: noise level above which a pixel belongs to the blob.
        min_coverage: the smallest accepted fraction of the box covered by the blob.
        res: lattice cells of the noise along each axis; one cell gives a single smooth blob.
        max_rotation_deg: the largest rotation, in degrees.

    Returns:
        a boolean mask of the box's shape, never empty.
    """
    # Sides uniform in [lb, ub); lb itself when the bounds meet (tiny images).
    size = np.array([rng.randint(lb, max(ub, lb + 1)) for lb, ub in box_bounds])
    rows = np.arange(size[0], dtype=np.float64)[:, None] - (size[0] - 1) / 2.0
    cols = np.arange(size[1], dtype=np.float64)[None, :] - (size[1] - 1) / 2.0
    for _ in range(MAX_BLOB_TRIES):
        gradients = _random_gradients(res, rng)
        angle = np.deg2rad(rng.uniform(-max_rotation_deg, max_rotation_deg))
        cos, sin = np.cos(angle), np.sin(angle)
        # Sample the noise where each output pixel came from: the rotation is exact, no resampling.
        src_r = cos * rows + sin * cols + (size[0] - 1) / 2.0
        src_c = -sin * rows + cos * cols + (size[1] - 1) / 2.0
        inside = (src_r >= 0) & (src_r <= size[0] - 1) & (src_c >= 0) & (src_c <= size[1] - 1)
        noise = perlin_noise(src_r * (res[0] / size[0]), src_c * (res[1] / size[1]), gradients)
        blob = inside & (noise > threshold)
        if blob.mean() >= min_coverage:
            return blob
    return np.ones(tuple(size), dtype=bool)


def _rotation(angle: float) -> np.ndarray:
    cos, sin = np.cos(angle), np.sin(angle)
    return np.array([[cos, -sin], [sin, cos]])


@dataclass
class Hypershape:
    """A rectangle or ellipse after shear and rotation, rasterised in its bounding box.

    Attributes:
        mask: boolean mask of the bounding box, True inside the shape.
        kind: ``"rectangle"`` or ``"ellipse"``.
        sides: the side lengths (rectangle) or diameters (ellipse) drawn before shear and rotation, pixels.
        matrix: 2x2 map from the shape's own frame (axis-aligned, centred) to box offsets (rows, columns).
        origin: box index coordinates (row, column) of the shape's centre.
    """

    mask: np.ndarray
    kind: str
    sides: np.ndarray
    matrix: np.ndarray
    origin: np.ndarray

    def distance_to_edge(self, points: np.ndarray, directions: np.ndarray) -> np.ndarray:
        """Distance from ``points`` along unit ``directions`` to the shape's edge.

        Args:
            points: ``(2, N)`` box index coordinates, inside the shape.
            directions: ``(2, N)`` unit vectors in box coordinates.

        Returns:
            ``(N,)`` distances in pixels (box units).
        """
        inverse = np.linalg.inv(self.matrix)
        # Solve in the shape's own frame, where the edge is axis-aligned; the ray parameter is the
        # same in both frames because the map is linear.
        p = inverse @ (points - self.origin[:, None])
        v = inverse @ directions
        half = (self.sides / 2.0)[:, None]
        if self.kind == "rectangle":
            with np.errstate(divide="ignore", invalid="ignore"):
                hits = np.concatenate([(half - p) / v, (-half - p) / v])
            hits[~np.isfinite(hits) | (hits < 0)] = np.inf
            return np.min(hits, axis=0)
        a = np.sum(v * v / half**2, axis=0)
        b = 2.0 * np.sum(p * v / half**2, axis=0)
        c = np.sum(p * p / half**2, axis=0) - 1.0
        disc = np.maximum(b * b - 4.0 * a * c, 0.0)
        return np.maximum((-b + np.sqrt(disc)) / (2.0 * a), 0.0)


def _inside(kind: str, coords: np.ndarray, sides: np.ndarray) -> np.ndarray:
    half = (sides / 2.0)[:, None]
    if kind == "rectangle":
        return np.all(np.abs(coords) <= half, axis=0)
    return np.sum((coords / half) ** 2, axis=0) <= 1.0


def _box_extent(matrix: np.ndarray, sides: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    half = (sides - 1) / 2.0
    corners = np.array([[1, 1, -1, -1], [1, -1, 1, -1]]) * half[:, None]
    moved = matrix @ corners
    return np.floor(moved.min(axis=1)), np.ceil(moved.max(axis=1))


def _rasterise(kind: str, matrix: np.ndarray, sides: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The shape's mask on the integer grid of its bounding box (empty border rows/columns trimmed),
    and the box index coordinates of the shape's centre."""
    low, high = _box_extent(matrix, sides)
    rows = np.arange(low[0], high[0] + 1)
    cols = np.arange(low[1], high[1] + 1)
    grid = np.stack(np.meshgrid(rows, cols, indexing="ij")).reshape(2, -1)
    mask = _inside(kind, np.linalg.inv(matrix) @ grid, sides).reshape(len(rows), len(cols))
    # The centre (grid point 0) is always inside, so the mask is never empty.
    full_rows, full_cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    mask = mask[full_rows[0] : full_rows[-1] + 1, full_cols[0] : full_cols[-1] + 1]
    return mask, -low - np.array([full_rows[0], full_cols[0]])


def deformed_hypershape(
    box_bounds: Sequence[tuple[int, int]],
    image_shape: Sequence[int],
    rng: np.random.RandomState,
    shear_std: float = 0.2,
) -> Hypershape:
    """A rectangle or ellipse (half the time each) with random size, shear and rotation.

    Each side is ``clip((0.03 + Gamma(2, 0.1)) * image_side, lb, ub)`` (mostly small shapes, a
    long tail of large ones); the shear factors are ``N(0, shear_std)`` and the rotation uniform in
    ``[-pi/2, pi/2]``. If shear and rotation push the bounding box past ``ub`` the shape is scaled
    down to fit.

    Args:
        box_bounds: ``(lb, ub)`` side bounds in pixels, one pair per image axis (rows, columns).
        image_shape: spatial shape of the image, pixels; sides are drawn as fractions of it.
        rng: the random state to draw from.
        shear_std: standard deviation of the two shear factors.
    """
    kind = "rectangle" if rng.rand() < 0.5 else "ellipse"
    sides = np.array(
        [
            int(np.clip((0.03 + rng.gamma(2.0, 0.1)) * d, lb, ub))
            for (lb, ub), d in zip(box_bounds, image_shape)
        ],
        dtype=np.float64,
    )
    shear = np.array([[1.0, rng.normal(scale=shear_std)], [rng.normal(scale=shear_std), 1.0]])
    while abs(np.linalg.det(shear)) < 0.1:  # a flattened shape has no inside; practically never drawn
        shear = np.array([[1.0, rng.normal(scale=shear_std)], [rng.normal(scale=shear_std), 1.0]])
    matrix = _rotation(rng.uniform(-np.pi / 2, np.pi / 2)) @ shear
    upper = np.array([ub for _, ub in box_bounds])
    low, high = _box_extent(matrix, sides)
    extent = high + 1 - low
    if np.any(extent > upper):
        matrix = matrix / np.max(extent / upper)
    for _ in range(20):
        mask, origin = _rasterise(kind, matrix, sides)
        if np.all(np.array(mask.shape) <= upper):
            break
        # Rounding of the box can still overshoot by a pixel: shrink a little more.
        matrix = matrix * (0.97 * np.min(upper / np.array(mask.shape)))
    else:  # unreachable in practice: a shape this small is a single pixel
        mask = mask[: upper[0], : upper[1]]
    return Hypershape(mask=mask, kind=kind, sides=sides, matrix=matrix, origin=origin)

"""Anomaly synthesis as MONAI array transforms: a normal image in, (image with anomaly, mask) out.

MediCLIP (Zhang et al., "MediCLIP: Adapting CLIP for Few-shot Medical Image Anomaly Detection",
MICCAI 2024, arXiv 2405.11315) trains on k normal images only: it paints synthetic anomalies on them
and learns to segment those. The tasks come from "Many tasks make light work: Learning to localise
medical anomalies from multiple synthetic tasks" (Baugh et al., MICCAI 2023):

- :class:`RandCutPaste`: a blob of (rotated, rescaled) content from one of the k support images;
- :class:`RandGaussIntensityChange`: a smooth random texture added inside a blob;
- :class:`RandSourceDeformation` / :class:`RandSinkDeformation`: tissue pushed out from / pulled
  into a point inside a sheared rectangle or ellipse;
- :class:`RandSmoothIntensityChange`: a blob brightened or darkened with a soft edge;
- :class:`IdentityAnomaly`: nothing changes, the mask is empty (a normal training sample);
- :class:`RandAnomalySynthesis`: one of the above per sample, drawn from a task mixture.

Every task places one anomaly, and a second with probability 0.5 (the mask is the union); a patch
side lies between ``round(min_prop * size)`` and ``round(max_prop * size)``; the patch corner is
uniform over the positions where it fits. Images are single-channel, channel-first ``(1, H, W)``,
floating point scaled to [0, 1] (the reference code works on 0..255 uint8; every intensity here is
on the [0, 1] scale). Numpy arrays, torch tensors and MetaTensors are accepted and returned as they
came (type, dtype, device, metadata); the mask has the image's type and dtype, with values 0 and 1.
Pixels outside the mask are returned exactly as they were.

Randomness: every draw happens in ``randomize()`` from ``self.R``, so MONAI's seeding
(``set_random_state``, ``set_determinism``, the DataLoader's per-worker seeding) controls it and every
epoch draws new anomalies. The work is done on the CPU with numpy / scipy.ndimage.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from monai.config.type_definitions import NdarrayOrTensor
from monai.data.meta_obj import get_track_meta
from monai.data.meta_tensor import MetaTensor
from monai.transforms.transform import Randomizable, RandomizableTransform, Transform
from monai.utils import TransformBackends
from monai.utils.type_conversion import convert_to_dst_type, convert_to_tensor
from scipy import ndimage

from .shapes import _rotation, deformed_hypershape, perlin_blob

__all__ = [
    "DEFAULT_SYNTHESIS_TASKS",
    "SYNTHESIS_TASKS",
    "SynthesisTask",
    "AnomalyPlacement",
    "IdentityAnomaly",
    "RandAnomalySynthesis",
    "RandCutPaste",
    "RandGaussIntensityChange",
    "RandSinkDeformation",
    "RandSmoothIntensityChange",
    "RandSourceDeformation",
    "as_image_array",
    "make_synthesis_task",
    "normalise_task_probabilities",
    "shape_centre",
    "synthesis_task",
    "unchanged_tasks",
]



@dataclass(frozen=True)
class SynthesisTask:
    """A synthesis task as the task mixture, validation and the token cache see it.

    Attributes:
        name: the task's name in ``synthesis_tasks`` (train.json).
        transform: the array transform class, made with default parameters.
        needs_support_images: it takes content from the k shots (``support_images``).
        changes_image: it paints an anomaly; False for a task that leaves the image as it is (a normal sample:
            validation draws no anomaly from it, and the token cache may reuse the image's backbone tokens).
    """

    name: str
    transform: type
    needs_support_images: bool = False
    changes_image: bool = True


# Every task, by name, in the order they are declared below; `synthesis_task` adds one.
SYNTHESIS_TASKS: dict[str, SynthesisTask] = {}


def synthesis_task(name: str, needs_support_images: bool = False, changes_image: bool = True):
    """Class decorator registering a synthesis transform as the task ``name`` (see `SynthesisTask`)."""

    def register(transform: type) -> type:
        SYNTHESIS_TASKS[name] = SynthesisTask(name, transform, needs_support_images, changes_image)
        return transform

    return register


# The mixture MediCLIP trains with on all three of its datasets.
DEFAULT_SYNTHESIS_TASKS = {
    "CutPaste": 0.25,
    "GaussIntensityChange": 0.25,
    "SourceDeformation": 0.25,
    "Identity": 0.25,
}

SECOND_ANOMALY_PROB = 0.5
# Half a grey level of an 8-bit image: the reference pastes into uint8 images, where smaller changes vanish.
CHANGE_EPS = 0.5 / 255.0
_CLOSING_STRUCTURE = np.ones((3, 3), dtype=bool)


def as_image_array(img: Any) -> np.ndarray:
    """The ``(H, W)`` numpy view of a ``(1, H, W)`` floating-point image (CPU copy for GPU tensors).

    Raises:
        ValueError: when the image is not single-channel 2D channel-first, or not floating point.
    """
    shape = tuple(img.shape)
    if len(shape) != 3 or shape[0] != 1:
        raise ValueError(
            f"anomaly synthesis expects a single-channel 2D image, channel first, of shape (1, H, W); "
            f"got shape {shape}."
        )
    if isinstance(img, torch.Tensor):
        if not img.is_floating_point():
            raise ValueError(
                f"anomaly synthesis expects a floating-point image scaled to [0, 1]; got {img.dtype}."
            )
        tensor = img.detach()
        if tensor.dtype == torch.bfloat16:  # numpy has no bfloat16
            tensor = tensor.float()
        array = tensor.cpu().numpy()
    else:
        array = np.asarray(img)
        if not np.issubdtype(array.dtype, np.floating):
            raise ValueError(
                f"anomaly synthesis expects a floating-point image scaled to [0, 1]; got {array.dtype}."
            )
    return array[0]


def _as_input(img: Any) -> NdarrayOrTensor:
    """The input in the type it will come back as: numpy stays numpy, a tensor stays a plain tensor, a
    MetaTensor stays a MetaTensor while MONAI tracks metadata."""
    if isinstance(img, MetaTensor):
        return convert_to_tensor(img, track_meta=get_track_meta())
    return img if isinstance(img, (np.ndarray, torch.Tensor)) else np.asarray(img)


def _pack(dst: NdarrayOrTensor, image: np.ndarray, label: np.ndarray | None) -> tuple[Any, Any]:
    """(image, mask) in the type, dtype, device and metadata of ``dst``; ``label=None``: unchanged, empty."""
    if label is None:
        mask, *_ = convert_to_dst_type(np.zeros((1, *image.shape), dtype=np.float32), dst)
        return dst, mask
    out, *_ = convert_to_dst_type(image[None], dst)
    mask, *_ = convert_to_dst_type(label[None].astype(np.float32), dst)
    return out, mask


def _unchanged(img: Any) -> tuple[Any, Any]:
    """The image as it is, with an empty mask."""
    img = _as_input(img)
    return _pack(img, as_image_array(img), None)


def shape_centre(shape: np.ndarray) -> tuple[int, int]:
    """(row, column) in its box of the shape pixel nearest the shape's centroid: always on the shape,
    even for a crescent or a blob in two pieces."""
    pixels = np.argwhere(shape)
    nearest = np.argmin(np.sum((pixels - pixels.mean(axis=0)) ** 2, axis=1))
    return int(pixels[nearest, 0]), int(pixels[nearest, 1])


@dataclass
class AnomalyPlacement:
    """One anomaly drawn by ``randomize()``: where it goes and the task's own draws.

    Attributes:
        corner: (row, column) of the top-left pixel of the anomaly's box in the image.
        shape: boolean mask of the box, True where the anomaly is.
        params: the task's other random draws (source image, texture, deformation centre...).
    """

    corner: tuple[int, int]
    shape: np.ndarray
    params: dict = field(default_factory=dict)

    @property
    def box(self) -> tuple[slice, slice]:
        """The anomaly's box in the image, as slices."""
        return tuple(slice(c, c + s) for c, s in zip(self.corner, self.shape.shape))

    @property
    def centre(self) -> tuple[int, int]:
        """Image (row, column) of the anomaly's centre: its pixel nearest its centroid."""
        row, col = shape_centre(self.shape)
        return self.corner[0] + row, self.corner[1] + col


class _AnomalyTask(RandomizableTransform):
    """Shared machinery: 1 or 2 anomalies, box bounds, placement, application, mask."""

    backend: ClassVar[list[TransformBackends]] = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(
        self, min_prop: float, max_prop: float, foreground_threshold: float | None = None, prob: float = 1.0
    ) -> None:
        RandomizableTransform.__init__(self, prob)
        if not 0.0 < min_prop <= max_prop <= 1.0:
            raise ValueError(
                f"need 0 < min_prop <= max_prop <= 1; got min_prop={min_prop}, max_prop={max_prop}."
            )
        self.min_prop = float(min_prop)
        self.max_prop = float(max_prop)
        self.foreground_threshold = None if foreground_threshold is None else float(foreground_threshold)
        self.placements: list[AnomalyPlacement] = []
        self._spatial_shape: tuple[int, ...] | None = None

    def box_bounds(self, spatial_shape: Sequence[int]) -> list[tuple[int, int]]:
        """``(lb, ub)`` patch side bounds per axis: ``round(min_prop * size)``, ``round(max_prop * size)``."""
        bounds = []
        for size in spatial_shape:
            lb = int(np.clip(np.round(self.min_prop * size), 1, size))
            ub = int(np.clip(np.round(self.max_prop * size), lb, size))
            bounds.append((lb, ub))
        return bounds

    def randomize(self, img: NdarrayOrTensor) -> None:
        """Draw the anomalies for ``img`` (``(1, H, W)``): count, shapes, corners, task parameters."""
        self._randomize(as_image_array(img))

    def _randomize(self, image: np.ndarray) -> None:
        super().randomize(None)
        self.placements = []
        self._spatial_shape = image.shape
        if not self._do_transform:
            return
        count = 2 if self.R.rand() < SECOND_ANOMALY_PROB else 1
        bounds = self.box_bounds(image.shape)
        foreground = None if self.foreground_threshold is None else image > self.foreground_threshold
        for _ in range(count):
            shape, params = self._draw_anomaly(image, bounds)
            corner = self._draw_corner(shape, image.shape, foreground)
            self.placements.append(AnomalyPlacement(corner=corner, shape=shape, params=params))

    def _draw_corner(
        self, shape: np.ndarray, spatial_shape: tuple[int, int], foreground: np.ndarray | None
    ) -> tuple[int, int]:
        free = [s - b + 1 for s, b in zip(spatial_shape, shape.shape)]  # corners where the box fits
        if foreground is not None:
            # Corners that put the shape's centre on the foreground; anywhere if there is none.
            centre = shape_centre(shape)
            allowed = foreground[centre[0] : centre[0] + free[0], centre[1] : centre[1] + free[1]]
            candidates = np.flatnonzero(allowed)
            if candidates.size:
                row, col = np.unravel_index(candidates[self.R.randint(candidates.size)], allowed.shape)
                return int(row), int(col)
        return int(self.R.randint(free[0])), int(self.R.randint(free[1]))

    def _draw_anomaly(self, image: np.ndarray, bounds: list[tuple[int, int]]) -> tuple[np.ndarray, dict]:
        """The anomaly's shape mask (its box) and the task's own draws."""
        raise NotImplementedError

    def _apply(self, work: np.ndarray, image: np.ndarray, placement: AnomalyPlacement) -> None:
        """Paint one anomaly into ``work`` (float32, H x W) in place, inside ``placement.shape`` only."""
        raise NotImplementedError

    def _label(self, image: np.ndarray, work: np.ndarray, union: np.ndarray) -> np.ndarray:
        """The mask: by default every pixel of every placed shape."""
        return union

    def __call__(
        self, img: NdarrayOrTensor, randomize: bool = True
    ) -> tuple[NdarrayOrTensor, NdarrayOrTensor]:
        """Synthesise anomalies on ``img`` (``(1, H, W)``, [0, 1]); returns ``(image, mask)``.

        With ``randomize=False`` the last draws are reused (the image must have the same size).
        """
        img = _as_input(img)
        image = as_image_array(img)
        if randomize:
            self._randomize(image)
        elif self._spatial_shape is None:
            raise RuntimeError(
                f"{type(self).__name__}: call randomize() before __call__(..., randomize=False)."
            )
        elif self._spatial_shape != image.shape:
            raise ValueError(
                f"{type(self).__name__}: anomalies were drawn for an image of size {self._spatial_shape}, "
                f"got {image.shape}."
            )
        if not self._do_transform or not self.placements:
            return _pack(img, image, None)
        work = image.astype(np.float32)
        union = np.zeros(image.shape, dtype=bool)
        for placement in self.placements:
            self._apply(work, image, placement)
            union[placement.box] |= placement.shape
        label = self._label(image, work, union)
        # Only labelled pixels take the new values: everything outside the mask is bit-identical.
        out = image.copy()
        out[label] = work[label]
        return _pack(img, out, label)


@synthesis_task("CutPaste", needs_support_images=True)
class RandCutPaste(_AnomalyTask):
    """Paste a blob of normal tissue taken elsewhere, from one of the support (k-shot) images.

    The content comes from a random support image (possibly the image itself), rotated by up to
    45 degrees, rescaled by ``s`` or ``1/s`` with ``s = 1 + Exp(0.1)`` (capped so that the source
    region fits in 80% of the source image), resampled with cubic splines, clipped to the source's
    intensity range, and pasted into a Perlin blob. The mask is the part of the blob where the pasted
    content differs from what was there (by more than half an 8-bit grey level), closed and with holes
    filled; where nothing visibly changed, nothing is labelled.

    Args:
        support_images: the k-shot set of normal images, each ``(1, H, W)`` in [0, 1] (a sequence, or a
            ``(K, 1, H, W)`` array). ``None`` or empty: each image is its own only source.
        min_prop: smallest blob box side, as a fraction of the image side.
        max_prop: largest blob box side, as a fraction of the image side.
        foreground_threshold: if set, an anomaly is only placed where its centre (the shape pixel
            nearest the shape's centroid) lies on a pixel brighter than this, i.e. inside the body.
            Off by default, as in the reference, which puts about a quarter of labelled pixels on
            empty background, where nothing changes, and so teaches the model to flag empty air.
        prob: probability of synthesising anything; otherwise the image is returned with an empty mask.
    """

    def __init__(
        self,
        support_images: Sequence[NdarrayOrTensor] | NdarrayOrTensor | None = None,
        min_prop: float = 0.1,
        max_prop: float = 0.6,
        foreground_threshold: float | None = None,
        prob: float = 1.0,
    ) -> None:
        super().__init__(min_prop, max_prop, foreground_threshold, prob)
        self.support_images: list[np.ndarray] = []
        self._support_ranges: list[tuple[float, float]] = []
        self.set_support_images(support_images)

    def set_support_images(self, images: Sequence[NdarrayOrTensor] | NdarrayOrTensor | None) -> None:
        """Replace the support set (``(1, H, W)`` images in [0, 1]); ``None`` means "the image itself"."""
        if images is None:
            images = []
        elif isinstance(images, (np.ndarray, torch.Tensor)):
            images = list(images) if images.ndim == 4 else [images]
        # Own float32 CPU copies: cheap to slice, picklable into DataLoader workers, detached from GPU.
        self.support_images = [np.array(as_image_array(x), dtype=np.float32) for x in images]
        self._support_ranges = [(float(x.min()), float(x.max())) for x in self.support_images]

    def _draw_anomaly(self, image: np.ndarray, bounds: list[tuple[int, int]]) -> tuple[np.ndarray, dict]:
        blob = perlin_blob(bounds, self.R)
        source = int(self.R.randint(len(self.support_images))) if self.support_images else -1
        source_shape = np.array(
            self.support_images[source].shape if source >= 0 else image.shape, dtype=float
        )
        rotation = _rotation(self.R.uniform(-np.pi / 4, np.pi / 4))
        # The matrix maps blob-box coordinates to source coordinates (what affine_transform wants).
        height, width = blob.shape
        corners = np.array([[0.0, 0.0, height, height], [0.0, width, 0.0, width]])
        moved = rotation @ corners
        extent = np.ceil(moved.max(axis=1)) - np.floor(moved.min(axis=1))
        max_scale = float(np.min(0.8 * source_shape / extent))
        change = 1.0 + self.R.exponential(0.1)
        scale = min(change if self.R.rand() < 0.5 else 1.0 / change, max_scale)
        matrix = scale * rotation
        moved = matrix @ corners
        low = np.floor(moved.min(axis=1))
        extent = (np.ceil(moved.max(axis=1)) - low).astype(int)
        free = np.maximum(source_shape.astype(int) - extent, 0)
        source_corner = (int(self.R.randint(free[0] + 1)), int(self.R.randint(free[1] + 1)))
        params = {
            "source": source,
            "matrix": matrix,
            "offset": -low,
            "source_corner": source_corner,
            "source_extent": tuple(int(e) for e in extent),
        }
        return blob, params

    def _apply(self, work: np.ndarray, image: np.ndarray, placement: AnomalyPlacement) -> None:
        p = placement.params
        if p["source"] >= 0:
            source = self.support_images[p["source"]]
            low, high = self._support_ranges[p["source"]]
        else:
            source = image
            low, high = float(image.min()), float(image.max())
        (r0, c0), (h, w) = p["source_corner"], p["source_extent"]
        crop = np.asarray(source[r0 : r0 + h, c0 : c0 + w], dtype=np.float32)
        patch = ndimage.affine_transform(
            crop, p["matrix"], offset=p["offset"], output_shape=placement.shape.shape, order=3, mode="nearest"
        )
        np.clip(patch, low, high, out=patch)  # cubic splines overshoot at edges
        view = work[placement.box]
        view[placement.shape] = patch[placement.shape]

    def _label(self, image: np.ndarray, work: np.ndarray, union: np.ndarray) -> np.ndarray:
        changed = union & (np.abs(work - image) > CHANGE_EPS)
        if not changed.any():
            return changed
        rows, cols = np.nonzero(union)
        r0, r1 = max(rows.min() - 1, 0), rows.max() + 2
        c0, c1 = max(cols.min() - 1, 0), cols.max() + 2
        region = changed[r0:r1, c0:c1]
        closed = region | ndimage.binary_closing(region, structure=_CLOSING_STRUCTURE)
        label = np.zeros_like(union)
        label[r0:r1, c0:c1] = ndimage.binary_fill_holes(closed) & union[r0:r1, c0:c1]
        return label


@synthesis_task("GaussIntensityChange")
class RandGaussIntensityChange(_AnomalyTask):
    """Add a smooth random texture inside a Perlin blob (a brighter or darker, mottled region).

    The texture is image-sized binary noise blurred with a Gaussian of sigma 4 or 7 pixels, min-max
    normalised, times ``u0`` in [0.4, 0.6] or [-0.6, -0.4] (each half the time). Inside the blob the image
    becomes ``image + texture * blur(blob, sigma ~ U(1, 4))``, clipped to [0, 1]. The mask is the blob.

    Args:
        min_prop: smallest blob box side, as a fraction of the image side.
        max_prop: largest blob box side, as a fraction of the image side.
        foreground_threshold: if set, an anomaly is only placed where its centre (the shape pixel
            nearest the shape's centroid) lies on a pixel brighter than this, i.e. inside the body.
            Off by default, as in the reference, which puts about a quarter of labelled pixels on
            empty background, where nothing changes, and so teaches the model to flag empty air.
        prob: probability of synthesising anything; otherwise the image is returned with an empty mask.
    """

    texture_sigmas = (4.0, 7.0)

    def __init__(
        self,
        min_prop: float = 0.3,
        max_prop: float = 0.8,
        foreground_threshold: float | None = None,
        prob: float = 1.0,
    ) -> None:
        super().__init__(min_prop, max_prop, foreground_threshold, prob)

    def _draw_anomaly(self, image: np.ndarray, bounds: list[tuple[int, int]]) -> tuple[np.ndarray, dict]:
        blob = perlin_blob(bounds, self.R)
        sigma = self.texture_sigmas[self.R.randint(len(self.texture_sigmas))]
        noise = self.R.rand(*image.shape) < 0.5
        strength = self.R.uniform(0.4, 0.6) * (1.0 if self.R.rand() < 0.5 else -1.0)
        edge_sigma = self.R.uniform(1.0, 4.0)
        return blob, {"noise": noise, "sigma": sigma, "strength": strength, "edge_sigma": edge_sigma}

    def _apply(self, work: np.ndarray, image: np.ndarray, placement: AnomalyPlacement) -> None:
        p = placement.params
        texture = ndimage.gaussian_filter(p["noise"].astype(np.float32), p["sigma"])
        low, high = float(texture.min()), float(texture.max())
        texture = (texture - low) / (high - low) if high > low else np.zeros_like(texture)
        texture = np.clip(p["strength"] * texture[placement.box], -1.0, 1.0)
        edge = ndimage.gaussian_filter(placement.shape.astype(np.float32), p["edge_sigma"])
        view = work[placement.box]
        changed = np.clip(view + texture * edge, 0.0, 1.0)
        view[placement.shape] = changed[placement.shape]


class _RadialDeformation(_AnomalyTask):
    """Resample the image inside a deformed rectangle/ellipse along rays from a centre inside it."""

    def __init__(
        self,
        min_prop: float = 0.2,
        max_prop: float = 0.6,
        foreground_threshold: float | None = None,
        prob: float = 1.0,
    ) -> None:
        super().__init__(min_prop, max_prop, foreground_threshold, prob)

    @staticmethod
    def _new_distance(distance: np.ndarray, max_distance: np.ndarray, factor: float) -> np.ndarray:
        """Distance from the centre at which a pixel at ``distance`` samples the image."""
        raise NotImplementedError

    def _draw_anomaly(self, image: np.ndarray, bounds: list[tuple[int, int]]) -> tuple[np.ndarray, dict]:
        shape = deformed_hypershape(bounds, image.shape, self.R)
        inside = np.argwhere(shape.mask)
        centre = inside[self.R.randint(len(inside))].astype(np.float64)
        factor = 2.0 ** self.R.uniform(0.5, 2.0)
        return shape.mask, {"hypershape": shape, "centre": centre, "factor": factor}

    def _apply(self, work: np.ndarray, image: np.ndarray, placement: AnomalyPlacement) -> None:
        p = placement.params
        centre = p["centre"][:, None]
        rows, cols = np.nonzero(placement.shape)
        offsets = np.stack([rows, cols]).astype(np.float64) - centre
        distance = np.hypot(offsets[0], offsets[1])
        moving = distance > 0  # the centre maps to itself
        rows, cols, offsets, distance = rows[moving], cols[moving], offsets[:, moving], distance[moving]
        if distance.size == 0:
            return
        directions = offsets / distance
        # For a convex shape every pixel is no further than the edge; the max guards rounding.
        max_distance = np.maximum(p["hypershape"].distance_to_edge(centre, directions), distance)
        coords = centre + self._new_distance(distance, max_distance, p["factor"]) * directions
        view = work[placement.box]
        values = ndimage.map_coordinates(view, coords, order=3, mode="nearest")
        # Deformation moves tissue, it does not create intensities: keep the spline's overshoot out.
        view[rows, cols] = np.clip(values, view.min(), view.max())


@synthesis_task("SourceDeformation")
class RandSourceDeformation(_RadialDeformation):
    """Push tissue outwards from a point (a "source", like a growing mass) inside a deformed shape.

    The shape is a rectangle or ellipse (half the time each), side ``clip((0.03 + Gamma(2, 0.1)) *
    size, lb, ub)``, sheared by ``N(0, 0.2)`` and rotated by ``U(-pi/2, pi/2)``. From a random centre
    pixel inside it, a pixel at distance ``d`` takes the (cubic-interpolated) value found at
    ``d' = d^f / dmax^(f-1)``, where ``dmax`` is the distance to the shape's edge along the same ray and
    ``f = 2^U(0.5, 2)``: content near the centre is magnified, the edge stays put. The mask is the shape
    (it includes flat regions where the resampling changes nothing, as in the reference).

    Args:
        min_prop: smallest shape side, as a fraction of the image side.
        max_prop: largest shape side (and bounding box side), as a fraction of the image side.
        foreground_threshold: if set, an anomaly is only placed where its centre (the shape pixel
            nearest the shape's centroid) lies on a pixel brighter than this, i.e. inside the body.
            Off by default, as in the reference, which puts about a quarter of labelled pixels on
            empty background, where nothing changes, and so teaches the model to flag empty air.
        prob: probability of synthesising anything; otherwise the image is returned with an empty mask.
    """

    @staticmethod
    def _new_distance(distance: np.ndarray, max_distance: np.ndarray, factor: float) -> np.ndarray:
        return distance**factor / max_distance ** (factor - 1.0)


@synthesis_task("SinkDeformation")
class RandSinkDeformation(_RadialDeformation):
    """Pull tissue inwards towards a point (a "sink", like atrophy) inside a deformed shape.

    As :class:`RandSourceDeformation`, with ``d' = dmax - (dmax - d)^f / dmax^(f-1)``: content near
    the edge is magnified, the centre shrinks. Not in MediCLIP's default mixture.

    Args:
        min_prop: smallest shape side, as a fraction of the image side.
        max_prop: largest shape side (and bounding box side), as a fraction of the image side.
        foreground_threshold: if set, an anomaly is only placed where its centre (the shape pixel
            nearest the shape's centroid) lies on a pixel brighter than this, i.e. inside the body.
            Off by default, as in the reference, which puts about a quarter of labelled pixels on
            empty background, where nothing changes, and so teaches the model to flag empty air.
        prob: probability of synthesising anything; otherwise the image is returned with an empty mask.
    """

    @staticmethod
    def _new_distance(distance: np.ndarray, max_distance: np.ndarray, factor: float) -> np.ndarray:
        return max_distance - (max_distance - distance) ** factor / max_distance ** (factor - 1.0)


@synthesis_task("SmoothIntensityChange")
class RandSmoothIntensityChange(_AnomalyTask):
    """Brighten or darken a Perlin blob by a constant, ramping in from the blob's edge.

    The change is ``(intensity / 2 + Gamma(3, intensity)) * (+/-1)``; it ramps up linearly over
    ``min(image_side * (0.02 + Gamma(3, 0.01)), deepest point of the blob)`` pixels from the blob edge
    (distance transform), and the result is clipped to the image's own intensity range. The mask is
    the blob. Not in MediCLIP's default mixture. Unlike the reference, the edge of the blob's box
    also counts as blob edge, so the change never stops abruptly at a box side.

    Args:
        intensity: scale of the change on the [0, 1] intensity scale (the reference's 30 on 0..255).
        min_prop: smallest blob box side, as a fraction of the image side.
        max_prop: largest blob box side, as a fraction of the image side.
        foreground_threshold: if set, an anomaly is only placed where its centre (the shape pixel
            nearest the shape's centroid) lies on a pixel brighter than this, i.e. inside the body.
            Off by default, as in the reference, which puts about a quarter of labelled pixels on
            empty background, where nothing changes, and so teaches the model to flag empty air.
        prob: probability of synthesising anything; otherwise the image is returned with an empty mask.
    """

    def __init__(
        self,
        intensity: float = 30.0 / 255.0,
        min_prop: float = 0.3,
        max_prop: float = 0.8,
        foreground_threshold: float | None = None,
        prob: float = 1.0,
    ) -> None:
        super().__init__(min_prop, max_prop, foreground_threshold, prob)
        self.intensity = float(intensity)

    def _draw_anomaly(self, image: np.ndarray, bounds: list[tuple[int, int]]) -> tuple[np.ndarray, dict]:
        blob = perlin_blob(bounds, self.R)
        ramp = 0.02 + self.R.gamma(3.0, 0.01)
        change = (self.intensity / 2.0 + self.R.gamma(3.0, self.intensity)) * (
            1.0 if self.R.rand() < 0.5 else -1.0
        )
        return blob, {"ramp": ramp, "change": change}

    def _apply(self, work: np.ndarray, image: np.ndarray, placement: AnomalyPlacement) -> None:
        p = placement.params
        depth = ndimage.distance_transform_edt(np.pad(placement.shape, 1))[1:-1, 1:-1]
        width = max(min(min(image.shape) * p["ramp"], float(depth.max())), 1e-6)
        ramp = np.minimum(depth / width, 1.0).astype(np.float32)
        view = work[placement.box]
        changed = np.clip(view + ramp * p["change"], float(image.min()), float(image.max()))
        view[placement.shape] = changed[placement.shape]


@synthesis_task("Identity", changes_image=False)
class IdentityAnomaly(Transform):
    """No anomaly: the image unchanged and an empty mask (a normal sample in the task mixture).

    Same call signature as the synthesis tasks: ``__call__(img, randomize=True) -> (image, mask)``.
    """

    backend: ClassVar[list[TransformBackends]] = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self) -> None:
        self.placements: list[AnomalyPlacement] = []

    def randomize(self, img: NdarrayOrTensor) -> None:
        """Nothing to draw; checks the image shape like the other tasks."""
        as_image_array(img)

    def __call__(
        self, img: NdarrayOrTensor, randomize: bool = True
    ) -> tuple[NdarrayOrTensor, NdarrayOrTensor]:
        return _unchanged(img)


def normalise_task_probabilities(tasks: Mapping[str, float] | Sequence[str] | None) -> dict[str, float]:
    """Check a ``{task name: probability}`` mixture and scale it to sum to 1 (zero-probability tasks dropped).

    ``None`` gives :data:`DEFAULT_SYNTHESIS_TASKS`; a list of names gives them equal probability.

    Raises:
        ValueError: for an unknown task name (the message lists the valid ones), a negative or
            non-finite probability, or a mixture with nothing to draw.
    """
    if tasks is None:
        tasks = DEFAULT_SYNTHESIS_TASKS
    if isinstance(tasks, str):
        tasks = [tasks]
    if not isinstance(tasks, Mapping):
        tasks = {name: 1.0 for name in tasks}
    unknown = [name for name in tasks if name not in SYNTHESIS_TASKS]
    if unknown:
        raise ValueError(
            f"unknown anomaly-synthesis task(s) {unknown}; valid names: {', '.join(SYNTHESIS_TASKS)}."
        )
    weights = {}
    for name, weight in tasks.items():
        weight = float(weight)
        if not np.isfinite(weight) or weight < 0:
            raise ValueError(f"task {name!r}: probability must be a finite number >= 0; got {weight}.")
        if weight > 0:
            weights[name] = weight
    total = sum(weights.values())
    if total <= 0:
        raise ValueError(f"the task mixture {dict(tasks)} has no task with a positive probability.")
    return {name: weight / total for name, weight in weights.items()}


def make_synthesis_task(
    name: str,
    support_images: Sequence[NdarrayOrTensor] | NdarrayOrTensor | None = None,
    foreground_threshold: float | None = None,
) -> _AnomalyTask | IdentityAnomaly:
    """The array transform of one task of :data:`SYNTHESIS_TASKS`, with default parameters (the support images
    to a task that needs them, the foreground threshold to a task that places an anomaly)."""
    if name not in SYNTHESIS_TASKS:
        raise ValueError(
            f"unknown anomaly-synthesis task {name!r}; valid names: {', '.join(SYNTHESIS_TASKS)}."
        )
    task = SYNTHESIS_TASKS[name]
    arguments = {"support_images": support_images} if task.needs_support_images else {}
    if task.changes_image:
        arguments["foreground_threshold"] = foreground_threshold
    return task.transform(**arguments)


def unchanged_tasks() -> tuple[str, ...]:
    """The tasks that leave the image as it is (``Identity``)."""
    return tuple(name for name, task in SYNTHESIS_TASKS.items() if not task.changes_image)


class RandAnomalySynthesis(RandomizableTransform):
    """One synthesis task per sample, drawn from a task mixture; returns ``(image, mask)``.

    MediCLIP trains with CutPaste, GaussIntensityChange, SourceDeformation and Identity at 0.25 each,
    so about a quarter of the samples stay normal (empty mask).

    Args:
        tasks: ``{task name: probability}`` (normalised to sum to 1), or a list of names for equal
            probabilities; names from :data:`SYNTHESIS_TASKS`: "CutPaste", "GaussIntensityChange",
            "SourceDeformation", "SinkDeformation", "SmoothIntensityChange", "Identity". ``None``:
            MediCLIP's mixture, :data:`DEFAULT_SYNTHESIS_TASKS`.
        support_images: the k-shot normal images CutPaste takes content from, each ``(1, H, W)`` in
            [0, 1]; ``None``: each image is its own source. Can be set later with
            :meth:`set_support_images`.
        foreground_threshold: if set, anomalies are only placed where their centre (the shape pixel
            nearest the shape's centroid) lies on a pixel brighter than this, i.e. inside the body.
            Off by default, as in the reference, which puts about a quarter of labelled pixels on
            empty background, where nothing changes, and so teaches the model to flag empty air.
    """

    backend: ClassVar[list[TransformBackends]] = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(
        self,
        tasks: Mapping[str, float] | Sequence[str] | None = None,
        support_images: Sequence[NdarrayOrTensor] | NdarrayOrTensor | None = None,
        foreground_threshold: float | None = None,
    ) -> None:
        RandomizableTransform.__init__(self, prob=1.0)
        probabilities = normalise_task_probabilities(tasks)
        self.task_names = list(probabilities)
        self.probabilities = np.array([probabilities[name] for name in self.task_names])
        self.tasks = {
            name: make_synthesis_task(name, support_images, foreground_threshold) for name in self.task_names
        }
        self.chosen_task: str | None = None

    def set_support_images(self, images: Sequence[NdarrayOrTensor] | NdarrayOrTensor | None) -> None:
        """Give the tasks that need it (CutPaste) the k-shot support set."""
        for name, task in self.tasks.items():
            if SYNTHESIS_TASKS[name].needs_support_images:
                task.set_support_images(images)

    def set_random_state(
        self, seed: int | None = None, state: np.random.RandomState | None = None
    ) -> RandAnomalySynthesis:
        super().set_random_state(seed, state)
        # The tasks draw from this transform's own generator: one stream, one seed, nothing private.
        for task in self.tasks.values():
            if isinstance(task, Randomizable):
                task.set_random_state(state=self.R)
        return self

    def randomize(self, img: NdarrayOrTensor) -> None:
        """Draw the task, then that task's anomalies for ``img``."""
        self.chosen_task = self.task_names[self.R.choice(len(self.task_names), p=self.probabilities)]
        self.tasks[self.chosen_task].randomize(img)

    def __call__(
        self, img: NdarrayOrTensor, randomize: bool = True
    ) -> tuple[NdarrayOrTensor, NdarrayOrTensor]:
        """Synthesise on ``img`` (``(1, H, W)``, [0, 1]); returns ``(image, mask)``."""
        if randomize:
            self.randomize(img)
        if self.chosen_task is None:
            raise RuntimeError(
                "RandAnomalySynthesis: call randomize() before __call__(..., randomize=False)."
            )
        return self.tasks[self.chosen_task](img, randomize=False)

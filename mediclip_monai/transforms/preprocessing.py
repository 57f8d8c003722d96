"""Map transforms of the inference and evaluation recipes before the network, and the CLIP input.

- ``ReadImaged``: a path to a channel-first MetaTensor through ``data.loading.read_image`` (MONAI's
  readers: NIfTI, DICOM file or series, pictures, NRRD), on the image's own grid.
- ``ScaleIntensityRobustd``: intensities to [0, 1] by the 0.5th-99.5th percentiles, as in training.
- ``BinariseMaskd``: a truth mask to 0/1, saying how soft or multi-valued masks are binarised.
- ``ModelGridd``: a case on the grid of MediCLIP's evaluation protocol, every axial slice at the
  network's input size; ``to_source_grid`` brings a map on that grid back onto the case's own grid.
- ``ClipInput`` / ``ClipInputd``: 1-channel [0, 1] images to the network's 3-channel normalised input;
  the mean and std come from the network (``MediCLIP.input_contract``), used by training,
  inference, evaluation and the benchmarks alike.
- ``ModelInput``: the whole model-input step of a stack of slices, from the network's input contract:
  resized to its size by its interpolation (``data.loading.resize_views``, as training's slices and
  ``ModelGridd``), then ``ClipInput``.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Mapping, Sequence
from typing import ClassVar

import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Transform
from monai.utils import TransformBackends, convert_to_dst_type, convert_to_tensor, ensure_tuple_rep

from ..data.loading import read_image, resize_views, scale_intensity, views_to_volume, volume_to_views
from ..errors import DataError

__all__ = [
    "MODEL_GRID_AFFINE",
    "BinariseMaskd",
    "ClipInput",
    "ClipInputd",
    "ModelGridd",
    "ModelInput",
    "ReadImaged",
    "ScaleIntensityRobustd",
    "to_source_grid",
]

logger = logging.getLogger(__name__)

# Affine of a case on the model grid (ModelGridd): array axes (rows, columns, slice) are the display
# view's (anterior -> posterior, patient right -> left, inferior -> superior), so the axial views of
# ``data.loading.volume_to_views`` are the arrays as they lie.
MODEL_GRID_AFFINE = torch.tensor(
    [[0.0, -1.0, 0.0, 0.0], [-1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]], dtype=torch.float64
)


class ReadImaged(MapTransform):
    """Read the image file (or DICOM series folder) named by each key with ``data.loading.read_image``.

    The value becomes a ``(1, H, W)`` or ``(1, H, W, D)`` float32 MetaTensor on the image's own voxel
    grid, with MONAI's RAS affine and the path as ``filename_or_obj``. Unreadable input raises
    ``DataError("<path>: <reason>")``; for another key than ``image`` (a case's ``label``), the message
    starts with the key and ends with where to fix it.

    Args:
        keys: keys holding paths.
        allow_missing_keys: skip keys that are absent (e.g. ``label`` of a test image without a mask).
    """

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            try:
                d[key] = read_image(d[key])
            except DataError as error:
                if key == "image":
                    raise
                raise DataError(f"'{key}' {error} (the '{key}' of its datalist entry)") from error
        return d


class ScaleIntensityRobustd(MapTransform):
    """Scale intensities to [0, 1]: the 0.5th percentile to 0, the 99.5th to 1, clipped (NaN/inf to 0).

    The same scaling as training (``data.loading.scale_intensity``), over the whole image or volume.
    """

    backend: ClassVar[list[TransformBackends]] = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = scale_intensity(d[key])
        return d


class BinariseMaskd(MapTransform):
    """Turn truth masks into 0/1: voxels at or above 0.5 are anomalous.

    A 0/1 mask, or one of 0 and a single larger value (0/255 PNG masks), is binarised without a word. A
    soft or multi-valued mask (several non-zero values, or values between 0 and 0.5) is binarised the same
    way with a warning naming the file and how many voxels stayed anomalous. A non-empty mask whose voxels
    all lie below 0.5 would become empty: it is refused.

    Args:
        keys: mask keys (MetaTensors from ``ReadImaged``).
        reference_key: the image the mask belongs to; its spatial shape must be the mask's.
        allow_missing_keys: skip absent masks (normal test images need none).

    Raises:
        DataError: ``"<mask file>: <reason>"`` for a mask whose shape differs from its image's, or that
            binarising would empty.
    """

    def __init__(self, keys: KeysCollection, reference_key: str = "image", allow_missing_keys: bool = True):
        super().__init__(keys, allow_missing_keys)
        self.reference_key = reference_key

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            mask = d[key]
            where = mask.meta.get("filename_or_obj", key) if isinstance(mask, MetaTensor) else key
            reference = d.get(self.reference_key)
            if reference is not None and tuple(reference.shape[1:]) != tuple(mask.shape[1:]):
                shapes = f"{tuple(mask.shape[1:])} differs from the image's {tuple(reference.shape[1:])}"
                raise DataError(f"{where}: mask shape {shapes}; give the mask drawn on this image")
            d[key] = self._binarise(mask, where)
        return d

    @staticmethod
    def _binarise(mask, where) -> torch.Tensor:
        values = torch.as_tensor(mask)
        values = values.as_tensor() if isinstance(values, MetaTensor) else values
        binary = values >= 0.5
        nonzero = values[values != 0]
        if nonzero.numel() and not binary.any():
            raise DataError(
                f"{where}: every non-zero mask value is below 0.5 (largest {float(nonzero.max()):.3g}); "
                "binarising at 0.5 would empty this mask. Give lesion voxels a value of 0.5 or more (0/1, 0/255)."
            )
        distinct = torch.unique(nonzero)
        if distinct.numel() > 1 or (distinct.numel() == 1 and float(distinct[0]) < 0.5):
            kept = int(binary.sum())
            logger.warning(
                f"{where}: soft or multi-valued mask ({distinct.numel()} non-zero values in "
                f"[{float(distinct.min()):.3g}, {float(distinct.max()):.3g}]); voxels >= 0.5 count as anomalous "
                f"({kept} of {nonzero.numel()} non-zero voxels)"
            )
        return convert_to_dst_type(binary.to(values.dtype), mask)[0]


class ModelGridd(MapTransform):
    """A case on the grid of MediCLIP's evaluation protocol: every axial slice at the network's input size.

    ``(1, H, W, D)`` volumes become ``(1, S, S, D)``: slice ``k`` is axial slice ``k`` in the radiological
    view of ``data.loading.volume_to_slices`` (as in training), resized to ``spatial_size``; the affine
    becomes ``MODEL_GRID_AFFINE``, so ``SliceWiseInferer`` sees exactly these slices and needs no further
    resizing. ``(1, H, W)`` images become ``(1, S, S)``. Resizing is that of the inferer
    (``data.loading.resize_views``: the contract's interpolation for images, nearest for masks, as in the
    reference evaluation).

    Args:
        keys: keys to put on the grid (image, and label when present).
        spatial_size: the network's input size (rows, columns), e.g. ``network.input_contract.image_size``.
        mode: interpolation per key: the contract's (``network.input_contract.interpolation``) or ``"nearest"``.
        allow_missing_keys: skip absent keys.
    """

    def __init__(
        self,
        keys: KeysCollection,
        spatial_size: Sequence[int],
        mode: str | Sequence[str] = "bilinear",
        allow_missing_keys: bool = True,
    ):
        super().__init__(keys, allow_missing_keys)
        self.spatial_size = tuple(int(s) for s in spatial_size)
        self.mode = ensure_tuple_rep(mode, len(self.keys))

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key, mode in self.key_iterator(d, self.mode):
            image = d[key]
            views = resize_views(volume_to_views(image).float(), self.spatial_size, mode)  # N x 1 x S x S
            meta = dict(image.meta) if isinstance(image, MetaTensor) else {}
            meta.pop("affine", None)
            meta["spatial_shape"] = [*self.spatial_size, *views.shape[:1]] if image.ndim == 4 else [*self.spatial_size]
            if image.ndim == 3:
                d[key] = MetaTensor(views[0], meta=meta)
            else:
                d[key] = MetaTensor(views.permute(1, 2, 3, 0).contiguous(), affine=MODEL_GRID_AFFINE, meta=meta)
        return d


def to_source_grid(model_map: torch.Tensor, reference: torch.Tensor) -> MetaTensor:
    """A map on the model grid (``ModelGridd``'s) brought back onto the grid of ``reference``, the case's own
    image, the way ``inferers.SliceWiseInferer`` brings the network's maps back: every axial view resized
    bilinearly (corners not aligned) to the reference's view, clamped to [0, 1].

    Args:
        model_map: ``(C, S, S, D)`` map with ``MODEL_GRID_AFFINE``, or a ``(C, S, S)`` 2D map.
        reference: the case's ``(1, H, W, D)`` MetaTensor (its affine gives the axial axis) or ``(1, H, W)`` image.

    Returns:
        ``(C, H, W[, D])`` float32 MetaTensor with the reference's affine.
    """
    affine = reference.affine if reference.ndim == 4 else None
    rows_cols = tuple(volume_to_views(reference, affine).shape[-2:])
    views = volume_to_views(model_map, MODEL_GRID_AFFINE if model_map.ndim == 4 else None).float()
    views = resize_views(views, rows_cols)
    values = views_to_volume(views.clamp(0, 1), affine)
    return MetaTensor(values, affine=reference.affine if isinstance(reference, MetaTensor) else None)


class ClipInput(Transform):
    """Grayscale images in [0, 1] to the network's input: 3 equal channels, normalised as ``(x - mean) / std``.

    Args:
        mean: per-channel mean of the network's input contract (``network.input_contract.mean``).
        std: per-channel standard deviation of the contract.

    ``__call__`` takes ``(..., 1, H, W)`` (a channel-first image or a batch of them) and returns
    ``(..., 3, H, W)`` float32 of the same type; resizing to the contract's size is the caller's.
    """

    backend: ClassVar[list[TransformBackends]] = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        self.mean = torch.as_tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.as_tensor(std, dtype=torch.float32).view(-1, 1, 1)

    def __call__(self, img):
        x = convert_to_tensor(img, dtype=torch.float32)
        if x.shape[-3] != 1:
            raise ValueError(f"ClipInput expects one channel (..., 1, H, W), got shape {tuple(x.shape)}")
        mean, std = self.mean.to(x.device), self.std.to(x.device)
        out = (x.expand(*x.shape[:-3], len(mean), *x.shape[-2:]) - mean) / std
        return convert_to_dst_type(out, img, dtype=torch.float32)[0]


class ClipInputd(MapTransform):
    """Dictionary version of ``ClipInput``.

    Args:
        keys: image keys.
        mean, std: the network's input contract.
    """

    backend = ClipInput.backend

    def __init__(self, keys: KeysCollection, mean: Sequence[float], std: Sequence[float], allow_missing_keys=False):
        super().__init__(keys, allow_missing_keys)
        self.clip_input = ClipInput(mean, std)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.clip_input(d[key])
        return d


class ModelInput(Transform):
    """A stack of grayscale slices in [0, 1] to the network's input, as its input contract says.

    Args:
        contract: the network's ``input_contract`` (`mediclip_monai.networks.InputContract`): size,
            interpolation, mean and std.

    ``__call__`` takes ``(N, 1, h, w)`` slices and returns ``(N, 3, S, S)`` float32: resized with
    ``data.loading.resize_views`` (as training's slices and ``ModelGridd``), then normalised by ``ClipInput``.
    """

    backend: ClassVar[list[TransformBackends]] = [TransformBackends.TORCH]

    def __init__(self, contract):
        self.contract = contract
        self.clip_input = ClipInput(contract.mean, contract.std)

    def __call__(self, slices: torch.Tensor) -> torch.Tensor:
        return self.clip_input(resize_views(slices, self.contract.image_size, self.contract.interpolation))

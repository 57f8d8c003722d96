"""Slice-wise inference of 2D images and 3D volumes with the 2D MediCLIP network.

A volume is cut into slices across its axial axis (the array axis closest to the body's
superior-inferior direction) and each slice is shown in the radiological view used in training. Slices
are resized to the network's input size and batched through the network; the anomaly channel is resized
back and re-assembled on the input's own voxel grid: the map has exactly the input's shape, so it shares
the input's affine.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .data.loading import scale_intensity, slices_to_volume, volume_to_slices

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def to_clip_input(slices: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
    """N x h x w grayscale slices in [0, 1] -> N x 3 x S x S, resized bilinearly and CLIP-normalised."""
    x = F.interpolate(slices[:, None].float(), size=image_size, mode="bilinear", align_corners=False)
    mean = torch.tensor(CLIP_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=x.device).view(1, 3, 1, 1)
    return (x.expand(-1, 3, -1, -1) - mean) / std


def axial_views(image: torch.Tensor) -> tuple[list[int], torch.Tensor]:
    """Slice indices and N x h x w float32 views of a (1, H, W) image or (1, H, W, D) volume.

    Every slice is kept, in the radiological view of ``data.loading.volume_to_slices`` (as in training).
    """
    slices = volume_to_slices(image, min_foreground=0.0)
    views = torch.stack([torch.as_tensor(np.asarray(view[0]), dtype=torch.float32) for _, view in slices])
    return [index for index, _ in slices], views


class SliceWiseInferer:
    """Anomaly maps of 2D images and 3D volumes on their own voxel grid.

    Args:
        network: a MediCLIP network (B x 3 x S x S -> B x 2 x S x S probabilities), in eval mode.
        batch_size: slices per forward pass.
        device: where the network runs.
        amp: autocast on CUDA.
    """

    def __init__(
        self, network: torch.nn.Module, batch_size: int = 8, device: str | torch.device = "cpu", amp: bool = False
    ):
        self.network = network
        self.batch_size = int(batch_size)
        self.device = torch.device(device)
        self.amp = bool(amp) and self.device.type == "cuda"

    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(self.network.image_size)

    @torch.no_grad()
    def slice_maps(self, slices: torch.Tensor, output_size: tuple[int, int] | None = None) -> torch.Tensor:
        """N x h x w slices in [0, 1] -> N x h' x w' anomaly probabilities (h', w' = output_size or h, w)."""
        output_size = tuple(output_size or slices.shape[-2:])
        maps = []
        for start in range(0, slices.shape[0], self.batch_size):
            batch = to_clip_input(slices[start : start + self.batch_size].to(self.device), self.image_size)
            with torch.autocast(self.device.type, enabled=self.amp):
                probabilities = self.network(batch)
            anomaly = probabilities[:, 1:2].float()
            if anomaly.shape[-2:] != output_size:
                anomaly = F.interpolate(anomaly, size=output_size, mode="bilinear", align_corners=False)
            maps.append(anomaly[:, 0].clamp_(0, 1).cpu())
        return torch.cat(maps)

    def __call__(self, image: torch.Tensor) -> dict:
        """Anomaly map of one image or volume.

        Args:
            image: channel-first (1, H, W) or (1, H, W, D), any intensity range (a MetaTensor's affine is
                used to find the axial axis of a volume).

        Returns:
            {"anomaly_map": float32 numpy array of shape (H, W) or (H, W, D) in [0, 1] on the input's grid,
             "score": the map's maximum, "max_slice": index along the axial axis of the maximum (None for 2D)}.
            Slices are cut and shown to the network in the radiological view of
            ``data.loading.volume_to_slices``, as in training, and put back by ``slices_to_volume``.
        """
        if image.ndim not in (3, 4) or image.shape[0] != 1:
            raise ValueError(f"expected a (1, H, W) image or (1, H, W, D) volume, got shape {tuple(image.shape)}")
        indices, views = axial_views(scale_intensity(image))
        maps = self.slice_maps(views)
        per_slice_max = maps.flatten(1).amax(dim=1)
        if image.ndim == 3:
            anomaly_map = maps[0].numpy()
            return {"anomaly_map": anomaly_map, "score": float(per_slice_max[0]), "max_slice": None}
        volume_map = slices_to_volume([(k, maps[i : i + 1]) for i, k in enumerate(indices)], image)
        return {
            "anomaly_map": np.ascontiguousarray(volume_map[0].numpy(), dtype=np.float32),
            "score": float(per_slice_max.max()),
            "max_slice": indices[int(per_slice_max.argmax())],
        }

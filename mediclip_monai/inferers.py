"""Slice-wise inference of 2D images and 3D volumes with the 2D MediCLIP network, as a MONAI Inferer.

A volume is cut into slices across its axial axis (the array axis closest to the body's superior-inferior
direction) and each slice is shown in the radiological view used in training (``data.loading``). Slices
are resized to the network's input size, made into its input (``transforms.ClipInput`` with the
network's own contract), batched through the network; the anomaly channel is resized back and
re-assembled on the input's own voxel grid: the map has exactly the input's shape, so it shares the
input's affine. A case already on the model grid (``transforms.ModelGridd``, evaluation) needs no
resizing and gets its maps at the network's resolution.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from monai.data import MetaTensor
from monai.inferers import Inferer
from monai.utils import convert_to_dst_type

from .data.loading import views_to_volume, volume_to_views
from .transforms.preprocessing import ClipInput

__all__ = ["SliceWiseInferer"]


def _resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class SliceWiseInferer(Inferer):
    """Anomaly maps of 2D images and 3D volumes on their own voxel grid.

    Args:
        batch_size: slices per forward pass.
        branches: None: channel 1 of ``network(batch)`` (the map of its ``anomaly_branch``). Names of
            anomaly branches (``MediCLIP.available_branches``): one output channel per branch, in that
            order, all from one backbone pass (``MediCLIP.anomaly_maps_from_tokens``); for evaluation.

    ``__call__(inputs, network)``:
        inputs: ``B x 1 x H x W`` images or ``B x 1 x H x W x D`` volumes with intensities in [0, 1]
            (``ScaleIntensityRobustd``); a MetaTensor's affine (per case in a collated batch) gives each
            volume's axial axis. Any device: slices go to the network's device batch by batch.
        network: a MediCLIP network (``B x 3 x S x S`` -> ``B x 2 x S x S`` probabilities; channel 1 is
            the anomaly) in eval mode, whose ``input_contract`` gives S, mean and std. Autocast, when the
            caller enables it, covers the network only.

    Returns:
        ``B x 1 x H x W [x D]`` (``B x len(branches) x ...``) float32 anomaly values in [0, 1] on the inputs'
        grid and device, with the inputs' metadata.
    """

    def __init__(self, batch_size: int = 8, branches: Sequence[str] | None = None) -> None:
        super().__init__()
        self.batch_size = int(batch_size)
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1 slice, got {batch_size}")
        self.branches = None if branches is None else tuple(branches)

    def __call__(self, inputs: torch.Tensor, network: torch.nn.Module, *args: Any, **kwargs: Any) -> torch.Tensor:
        if inputs.ndim not in (4, 5) or inputs.shape[1] != 1:
            raise ValueError(
                f"expected B x 1 x H x W images or B x 1 x H x W x D volumes, got shape {tuple(inputs.shape)}"
            )
        affines = None
        if inputs.ndim == 5:
            affine = inputs.affine if isinstance(inputs, MetaTensor) else torch.eye(4, dtype=torch.float64)
            affines = affine if affine.ndim == 3 else affine.expand(inputs.shape[0], 4, 4)
        channels = 1 if self.branches is None else len(self.branches)
        maps = torch.empty((inputs.shape[0], channels, *inputs.shape[2:]), dtype=torch.float32, device=inputs.device)
        with torch.no_grad():
            for b in range(inputs.shape[0]):
                affine = None if affines is None else affines[b]
                views = volume_to_views(inputs[b], affine)  # N x 1 x rows x cols
                maps[b] = views_to_volume(self.view_maps(views, network), affine)
        return convert_to_dst_type(maps, inputs, dtype=torch.float32)[0]

    def view_maps(self, views: torch.Tensor, network: torch.nn.Module) -> torch.Tensor:
        """N x 1 x h x w slices in [0, 1] -> N x C x h x w anomaly values (C = 1 or one per branch)."""
        model = getattr(network, "module", network)  # DistributedDataParallel: .module
        contract = model.input_contract
        clip_input = ClipInput(contract.mean, contract.std)
        device = next(iter(network.parameters()), torch.empty(0)).device
        channels = 1 if self.branches is None else len(self.branches)
        out = torch.empty((views.shape[0], channels, *views.shape[2:]), dtype=torch.float32, device=views.device)
        for start in range(0, views.shape[0], self.batch_size):
            batch = views[start : start + self.batch_size].to(device, torch.float32)
            with torch.autocast(device.type, enabled=False):  # resizing and normalisation stay float32
                batch = clip_input(_resize(batch, contract.image_size))
            if self.branches is None:
                anomaly = network(batch)[:, 1:2]
            else:
                maps = model.anomaly_maps_from_tokens(model.patch_tokens(batch), batch.shape[-2:], self.branches)
                anomaly = torch.stack([maps[branch] for branch in self.branches], dim=1)
            with torch.autocast(device.type, enabled=False):
                anomaly = _resize(anomaly.float(), tuple(views.shape[-2:]))
                out[start : start + self.batch_size] = anomaly.clamp_(0, 1).to(views.device)
        return out

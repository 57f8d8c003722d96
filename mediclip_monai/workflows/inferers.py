"""Slice-wise inference of 2D images and 3D volumes with the 2D MediCLIP network, as a MONAI Inferer.

A volume is cut into slices across its axial axis (the array axis closest to the body's superior-inferior
direction) and each slice is shown in the radiological view used in training (``data.loading``). Slices
are made into the network's input (``transforms.ModelInput``: the network's own contract), batched
through the network; the anomaly channel is resized back and
re-assembled on the input's own voxel grid: the map has exactly the input's shape, so it shares the
input's affine. A case already on the model grid (``transforms.ModelGridd``, evaluation) needs no
resizing and gets its maps at the network's resolution.

Training and its validation use `CachedTokenInferer`: the network's forward, with the frozen backbone's
tokens of images seen before (validation images, unchanged shots) taken from a `PatchTokenCache`.

The image-level score (`mediclip_monai.decisions.image_level`) comes from the same backbone pass as the maps:
for a network that can apply its rule (``decisions.image_level_rule``), `SliceWiseInferer` puts each case's
per-slice probabilities and foreground shares into the output's metadata (``image_level.SLICE_SCORES_KEY``,
``SLICE_FOREGROUND_KEY``: B x N float64, N slices in the order of ``volume_to_views``, the order along the axial
axis), for the run's decisions (``transforms.AnomalyScored``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from monai.data import MetaTensor
from monai.inferers import Inferer
from monai.utils import convert_to_dst_type

from ..data.loading import resize_views, views_to_volume, volume_to_views
from ..decisions import image_level_rule
from ..decisions.image_level import (
    SLICE_FOREGROUND_KEY,
    SLICE_SCORES_KEY,
    foreground_fraction,
    slice_probabilities,
    slice_signals,
)
from ..networks.token_cache import PatchTokenCache
from ..precision import FLOAT32, Precision
from ..transforms.preprocessing import ModelInput
from ..transforms.synthesis import unchanged_tasks

__all__ = ["CachedTokenInferer", "SliceWiseInferer"]


class SliceWiseInferer(Inferer):
    """Anomaly maps of 2D images and 3D volumes on their own voxel grid.

    Args:
        batch_size: slices per forward pass.
        branches: None: channel 1 of ``network(batch)`` (the map of its ``anomaly_branch``). Names of
            anomaly branches (``MediCLIP.available_branches``): one output channel per branch, in that
            order, all from one backbone pass (``MediCLIP.anomaly_maps_from_tokens``); for evaluation.
        precision: the network's precision (`mediclip_monai.precision`); a case that gives fewer than
            ``AMP_MIN_BATCH`` slices per forward pass (a 2D image) runs in float32.
        image_level: compute the image-level score of every slice when the network can apply its rule
            (``decisions.image_level_rule``); the maps are the same either way.

    ``__call__(inputs, network)``:
        inputs: ``B x 1 x H x W`` images or ``B x 1 x H x W x D`` volumes with intensities in [0, 1]
            (``ScaleIntensityRobustd``); a MetaTensor's affine (per case in a collated batch) gives each
            volume's axial axis. Any device: slices go to the network's device batch by batch.
        network: a MediCLIP network (``B x 3 x S x S`` -> ``B x 2 x S x S`` probabilities; channel 1 is
            the anomaly) in eval mode, whose ``input_contract`` gives S, mean and std.

    Returns:
        ``B x 1 x H x W [x D]`` (``B x len(branches) x ...``) float32 anomaly values in [0, 1] on the inputs'
        grid and device, with the inputs' metadata (and, for MetaTensor inputs, the slices' image-level scores).
    """

    def __init__(
        self,
        batch_size: int = 8,
        branches: Sequence[str] | None = None,
        precision: Precision = FLOAT32,
        image_level: bool = True,
    ) -> None:
        super().__init__()
        self.batch_size = int(batch_size)
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1 slice, got {batch_size}")
        self.branches = None if branches is None else tuple(branches)
        self.precision = precision
        self.image_level = bool(image_level)

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
        levels = []
        with torch.no_grad():
            for b in range(inputs.shape[0]):
                affine = None if affines is None else affines[b]
                views = volume_to_views(inputs[b], affine)  # N x 1 x rows x cols
                case_maps, slice_levels = self.view_maps(views, network)
                maps[b] = views_to_volume(case_maps, affine)
                levels.append(slice_levels)
        maps = convert_to_dst_type(maps, inputs, dtype=torch.float32)[0]
        if isinstance(maps, MetaTensor) and all(level is not None for level in levels):
            maps.meta[SLICE_SCORES_KEY] = torch.stack([scores for scores, _ in levels])
            maps.meta[SLICE_FOREGROUND_KEY] = torch.stack([foreground for _, foreground in levels])
        return maps

    def view_maps(
        self, views: torch.Tensor, network: torch.nn.Module
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
        """N x 1 x h x w slices in [0, 1] -> N x C x h x w anomaly values (C = 1 or one per branch), and for a
        network that can apply an image-level rule (and ``image_level``) the slices' image-level probabilities
        and foreground shares (N float64 each; else None)."""
        model = getattr(network, "module", network)  # DistributedDataParallel: .module
        contract = model.input_contract
        model_input = ModelInput(contract)
        device = next(iter(network.parameters()), torch.empty(0)).device
        channels = 1 if self.branches is None else len(self.branches)
        out = torch.empty((views.shape[0], channels, *views.shape[2:]), dtype=torch.float32, device=views.device)
        rule = image_level_rule(model) if self.image_level else None
        scores, foreground = [], []
        # one precision for every slice of a case (see mediclip_monai.precision)
        autocast = self.precision.autocast(min(self.batch_size, views.shape[0]))
        for start in range(0, views.shape[0], self.batch_size):
            # the slices at the network's size, still in [0, 1] (the image-level score reads them), then its input
            images = views[start : start + self.batch_size].to(device, torch.float32)
            images = resize_views(images, contract.image_size, contract.interpolation)
            batch = model_input(images)
            with autocast:
                if rule is not None:
                    anomaly, batch_scores = self._with_image_level(model, images, batch, rule)
                    scores.append(batch_scores)
                    foreground.append(foreground_fraction(images).double().cpu())
                elif self.branches is None:
                    anomaly = network(batch)[:, 1:2]
                else:
                    tokens = model.patch_tokens(batch)
                    maps = model.anomaly_maps_from_tokens(tokens, batch.shape[-2:], self.branches)
                    anomaly = torch.stack([maps[branch] for branch in self.branches], dim=1)
            anomaly = resize_views(anomaly.float(), views.shape[-2:])
            out[start : start + self.batch_size] = anomaly.clamp_(0, 1).to(views.device)
        return out, (None if rule is None else (torch.cat(scores), torch.cat(foreground)))

    def _with_image_level(
        self, model: torch.nn.Module, images: torch.Tensor, inputs: torch.Tensor, rule: dict
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One backbone pass: B x C maps (the branches asked for, else the network's own) and B image-level
        probabilities. ``images``: the slices in [0, 1] at the network's size; ``inputs``: the network's input."""
        branches = self.branches or (model.anomaly_branch,)
        tokens = model.image_tokens(inputs)
        needed = tuple(dict.fromkeys((*branches, rule["map_branch"])))
        maps = model.anomaly_maps_from_tokens(tokens.patch_tokens, inputs.shape[-2:], needed)
        scores = slice_probabilities(slice_signals(model, tokens, images, maps[rule["map_branch"]]), rule)
        return torch.stack([maps[branch] for branch in branches], dim=1), torch.from_numpy(scores)


class CachedTokenInferer(Inferer):
    """``network(inputs)`` that reuses the frozen backbone's tokens of images it has seen before.

    The inputs of a batch carry names (``cache_keys``, one per image) and, for training, the synthesis task
    each image went through (``tasks``). An image may be reused when it comes back unchanged: every
    validation image (no ``tasks``), and in training an image whose task is in ``reusable_tasks`` (the
    tasks that leave the shot as it is: Identity). The rest run through the backbone as one batch, exactly as
    without the cache, and the heads then run on the whole batch through the network's own forward (so
    DistributedDataParallel still sees the call). A training image's tokens are computed on their own
    (a batch of one), never inside another batch: they are then the same whichever batch first met the
    image, and a resumed run gets the uninterrupted run's weights (while the cache has room: once full,
    they run inside the batch like the rest). MONAI's ``PrepareBatchExtraInput``
    passes the keys from the batch (train.json's ``prepare_batch``).

    Args:
        cache: where the tokens are kept; None runs ``network(inputs)`` as `SimpleInferer` does.
        reusable_tasks: training tasks that leave the image unchanged; None: those the synthesis tasks declare
            so (``transforms.synthesis.unchanged_tasks``).
        precision: the network's precision (`mediclip_monai.precision`), for every batch; the output is
            float32 whatever it is.
    """

    def __init__(
        self,
        cache: PatchTokenCache | None,
        reusable_tasks: Sequence[str] | None = None,
        precision: Precision = FLOAT32,
    ) -> None:
        super().__init__()
        self.cache = cache
        self.reusable_tasks = frozenset(unchanged_tasks() if reusable_tasks is None else reusable_tasks)
        self.precision = precision

    def __call__(
        self,
        inputs: torch.Tensor,
        network: torch.nn.Module,
        cache_keys: Sequence[str] | None = None,
        tasks: Sequence[str] | None = None,
    ) -> torch.Tensor:
        with self.precision.autocast():
            return self._forward(inputs, network, cache_keys, tasks).float()

    def _forward(
        self,
        inputs: torch.Tensor,
        network: torch.nn.Module,
        cache_keys: Sequence[str] | None,
        tasks: Sequence[str] | None,
    ) -> torch.Tensor:
        if self.cache is None or not self.cache.enabled or cache_keys is None:
            return network(inputs)
        if len(cache_keys) != inputs.shape[0] or (tasks is not None and len(tasks) != inputs.shape[0]):
            raise ValueError(f"{len(cache_keys)} cache keys for a batch of {inputs.shape[0]} images")
        model = getattr(network, "module", network)  # DistributedDataParallel: .module
        reusable = [True] * len(cache_keys) if tasks is None else [task in self.reusable_tasks for task in tasks]
        tokens: list[list[torch.Tensor] | None] = [
            self.cache.get(key) if ok else None for key, ok in zip(cache_keys, reusable)
        ]
        if tasks is not None and not self.cache.full:  # training: an unchanged image on its own (see the class)
            for i, key in enumerate(cache_keys):
                if reusable[i] and tokens[i] is None:
                    tokens[i] = [t[0] for t in model.patch_tokens(inputs[i : i + 1])]
                    self.cache.put(key, tokens[i])
        missing = [i for i, t in enumerate(tokens) if t is None]
        if len(missing) == inputs.shape[0]:  # nothing known: the uncached path, bit for bit
            fresh = model.patch_tokens(inputs)
            for i, key in enumerate(cache_keys):
                if reusable[i]:
                    self.cache.put(key, [t[i] for t in fresh])
            return network(inputs, tokens=fresh)
        if missing:
            fresh = model.patch_tokens(inputs[missing])
            for j, i in enumerate(missing):
                tokens[i] = [t[j] for t in fresh]
                if reusable[i]:
                    self.cache.put(cache_keys[i], tokens[i])
        return network(inputs, tokens=[torch.stack(layer).to(inputs.device) for layer in zip(*tokens)])

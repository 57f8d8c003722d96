"""The calibrate step, at the end of training: the memory bank from the shots and the model's decisions fitted
on validation (its calibration), both into model.pt.

train.json runs `calibrate_model` after the last epoch (its ``training`` list) and on its own for an
existing model.pt (its ``calibrate`` run id, with the training's overrides, so the same datalist and seed
give the same shots and validation set):

    python -m monai.bundle run calibrate \
        --config_file bundle/configs/train.json [the training overrides]

Steps: load the best weights from model.pt; build the `PatchMemoryBank` from the k shots (a volume shot
contributes at most ``memory_bank_slices`` evenly spaced slices, `evenly_spaced_slices`) with one backbone
pass per batch; compute the ``mediclip`` and ``memory_bank`` maps of the validation set (held-out normal
slices and their synthetic anomalies, the set validation scores every epoch); fit the calibration
(`mediclip_monai.decisions.calibration.calibrate`); rewrite model.pt atomically with bank and calibration. The
network in memory ends as the calibrated best model. Under torchrun, rank 0 alone runs it
(multi_gpu_train.json) while the other ranks wait.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator, Sequence

import torch

from ..decisions import BRANCHES, Decisions, calibration
from ..errors import DataError
from ..io.atomic import atomic_write
from ..metrics import pixel_auroc
from ..networks import MediCLIP, PatchMemoryBank, PatchTokenCache
from ..networks.checkpoint import load_state, read_model_state
from ..networks.memory_bank import DEFAULT_MAX_PATCHES, DEFAULT_MAX_SLICES, evenly_spaced_slices
from ..precision import FLOAT32, Precision
from .training import FewShotData

__all__ = ["bank_slice_indices", "branch_maps", "build_memory_bank", "calibrate_model", "previous_model_path"]

logger = logging.getLogger(__name__)


def bank_slice_indices(shot_slices: Sequence[Sequence[int]], max_slices: int = DEFAULT_MAX_SLICES) -> list[int]:
    """The training slices that feed the memory bank: per shot, at most ``max_slices`` evenly spaced ones.

    Args:
        shot_slices: per shot, the indices of its slices (`FewShotData.shot_slices`).
        max_slices: the most slices taken from one shot (a 2D shot has one).
    """
    return [slices[i] for slices in shot_slices for i in evenly_spaced_slices(len(slices), max_slices)]


def _token_batches(
    network: MediCLIP,
    items: Sequence[dict],
    preprocessing: Callable,
    batch_size: int,
    precision: Precision,
    token_cache: PatchTokenCache | None = None,
) -> Iterator[list[torch.Tensor]]:
    """The tapped patch tokens of ``items`` (dicts with a 1 x S x S ``image`` in [0, 1]), batch by batch.

    Tokens that training kept in ``token_cache`` (under the item's ``cache_key``) are taken from there; the
    others are computed in ``precision``, the precision training computed the cached ones in.
    """
    device = next(network.parameters()).device
    for start in range(0, len(items), batch_size):
        batch = items[start : start + batch_size]
        known = token_cache is not None
        cached = [token_cache.get(item["cache_key"]) if known and "cache_key" in item else None for item in batch]
        missing = [i for i, tokens in enumerate(cached) if tokens is None]
        if missing:
            # The recipe's own validation preprocessing, so the network sees what validation showed it; it
            # also types a label, so shots get an empty one.
            inputs = [
                preprocessing({"image": item["image"], "label": item.get("label", torch.zeros_like(item["image"]))})
                for item in (batch[i] for i in missing)
            ]
            images = torch.stack([torch.as_tensor(x["image"]) for x in inputs]).to(device)
            with precision.autocast():
                fresh = network.patch_tokens(images)
            if len(missing) == len(batch):
                yield fresh
                continue
            for j, i in enumerate(missing):
                cached[i] = [layer[j] for layer in fresh]
        yield [torch.stack(layer) for layer in zip(*cached)]


@torch.no_grad()
def build_memory_bank(
    network: MediCLIP,
    shots: Sequence[dict],
    preprocessing: Callable,
    max_patches: int = DEFAULT_MAX_PATCHES,
    seed: int = 0,
    precision: Precision = FLOAT32,
    token_cache: PatchTokenCache | None = None,
) -> PatchMemoryBank:
    """Fill ``network.memory_bank`` from the shots' patch tokens (bounded to ``max_patches`` by its coreset).

    Each shot's tokens are computed on their own, as training's token cache computes a shot's (see
    `CachedTokenInferer`): matrix products can round differently in another batch, so this makes the bank
    built at the end of training and the one of a later ``calibrate`` run the same, bit for bit. The old
    calibration is dropped: it belonged to the old bank.
    """
    bank = PatchMemoryBank(max_patches=max_patches, seed=seed)
    bank.build_from_batches(_token_batches(network, shots, preprocessing, 1, precision, token_cache))
    network.memory_bank = bank.to(next(network.parameters()).device)
    network.decisions = Decisions()
    return network.memory_bank


@torch.no_grad()
def branch_maps(
    network: MediCLIP,
    items: Sequence[dict],
    preprocessing: Callable,
    branches: Sequence[str] | None = None,
    batch_size: int = 8,
    precision: Precision = FLOAT32,
    token_cache: PatchTokenCache | None = None,
) -> dict[str, torch.Tensor]:
    """N x S x S float32 maps (on the CPU) of each branch for ``items``; None: every available branch.

    Computed in ``precision``, as validation computes them during training."""
    size = tuple(items[0]["image"].shape[-2:])
    parts: dict[str, list[torch.Tensor]] = {}
    for tokens in _token_batches(network, items, preprocessing, batch_size, precision, token_cache):
        with precision.autocast():
            maps = network.anomaly_maps_from_tokens(tokens, size, branches)
        for name, anomaly_map in maps.items():
            parts.setdefault(name, []).append(anomaly_map.float().cpu())
    return {name: torch.cat(maps) for name, maps in parts.items()}


def calibrate_model(
    network: MediCLIP,
    data: FewShotData,
    preprocessing: Callable,
    model_path: str,
    memory_bank_size: int = DEFAULT_MAX_PATCHES,
    memory_bank_slices: int = DEFAULT_MAX_SLICES,
    memory_bank_weight: float = calibration.DEFAULT_MEMORY_BANK_WEIGHT,
    seed: int = 0,
    batch_size: int = 8,
    precision: Precision = FLOAT32,
    token_cache: PatchTokenCache | None = None,
    strict: bool = True,
) -> dict | None:
    """Build the memory bank and the calibration of the model in ``model_path`` and write them into it.

    The thresholds are fitted on normals held out of the shots (``data.held_out``): on the shots themselves
    the memory bank finds every patch of a normal image in itself, and the thresholds fall so low that
    normal images come out abnormal. Without held-out normals (a datalist of a single image) the
    calibration is refused (``strict``, the ``calibrate`` run) or skipped with a warning (end of training:
    model.pt stays uncalibrated). A model.pt that carries a calibration is kept as ``model.previous.pt``
    beside it before it is replaced, and the log compares what each was fitted on.

    Args:
        network: the training network (its weights are replaced by those of ``model_path``).
        data: the few-shot data of the run (`mediclip_monai.workflows.training.prepare_few_shot_data`).
        preprocessing: the validation preprocessing of train.json (3 channels, CLIP normalisation).
        model_path: model.pt, read and rewritten (atomically: a failure leaves the old file whole).
        memory_bank_size: the most patches the bank keeps (config ``memory_bank_size``).
        memory_bank_slices: the most slices of one volume shot that feed the bank (``memory_bank_slices``).
        memory_bank_weight: fusion weight of the memory bank (``memory_bank_weight``).
        seed: the config's seed (the coreset's draws).
        batch_size: slices per backbone pass.
        precision: the precision of training (train.json's ``precision``, from ``amp``).
        token_cache: the run's store of backbone tokens (train.json's ``token_cache``): the shots and
            validation images that training already passed through the frozen backbone are not run again.
        strict: without held-out normals, raise (True) or leave model.pt as it is with a warning (False).

    Returns:
        The calibration stored (see `mediclip_monai.decisions.calibration.calibrate`); None when it was skipped.

    Raises:
        CheckpointError: no model.pt, or one of another network (run training first, with the same overrides).
        DataError: ``strict`` and the validation set holds no normal image held out of the shots.
    """
    state = read_model_state(model_path)
    if not data.held_out:
        reason = (
            "no normal image is held out of the shots (the datalist has a single normal image): thresholds "
            "fitted on the shot the memory bank is built from would make normal images look abnormal; add "
            "normal images to the datalist (its 'training' or 'validation' section)"
        )
        if strict:
            raise DataError(f"{model_path}: not calibrated, left as it is: {reason}")
        logger.warning(f"{model_path}: not calibrated: {reason}; until then give --threshold at inference")
        return None
    previous = state["_extra_state"].get("calibration")
    load_state(network, state, model_path)
    network.eval()
    start = time.perf_counter()
    shots = [data.train[i] for i in bank_slice_indices(data.shot_slices, memory_bank_slices)]
    bank = build_memory_bank(network, shots, preprocessing, memory_bank_size, seed, precision, token_cache)
    logger.info(
        f"memory bank: {bank.size} patches per layer from {len(shots)} slices of {len(data.shot_slices)} shots "
        f"in {time.perf_counter() - start:.1f} s"
    )
    branches = ("mediclip", "memory_bank")
    maps = branch_maps(network, data.validation, preprocessing, branches, batch_size, precision, token_cache)
    images = torch.stack([item["image"][0] for item in data.validation])
    masks = torch.stack([item["label"][0] for item in data.validation])
    result = calibration.calibrate(maps["mediclip"], maps["memory_bank"], images, masks, memory_bank_weight)
    result["memory_bank"] = {
        "size": bank.size,
        "shots": len(data.shot_slices),
        "slices": len(shots),
        "max_slices_per_shot": int(memory_bank_slices),
        "seed": int(seed),
    }
    network.decisions = Decisions(result)
    if previous is not None:
        _keep_previous(model_path, previous, result)
    with atomic_write(model_path) as tmp:
        torch.save(network.state_dict(), tmp)
    maps["fused"] = calibration.fused_map(maps["mediclip"], maps["memory_bank"], result["fusion"])
    summary = ", ".join(
        f"{name} {pixel_auroc(masks, maps[name]):.3f} (threshold {network.decisions.for_branch(name).threshold:.3g})"
        for name in BRANCHES
    )
    logger.info(f"calibrated on {len(images)} validation slices; pixel AUROC {summary}")
    logger.info(f"{model_path}: memory bank and calibration stored; default branch '{network.default_branch}'")
    return result


def previous_model_path(model_path: str) -> str:
    """Where `calibrate_model` keeps the model.pt it replaces: ``model.previous.pt`` beside it."""
    root, extension = os.path.splitext(model_path)
    return f"{root}.previous{extension}"


def _keep_previous(model_path: str, previous: dict, result: dict) -> None:
    """Copy model.pt aside before its calibration is replaced, and say what each was fitted on."""
    backup = previous_model_path(model_path)
    with atomic_write(backup) as tmp:
        shutil.copyfile(model_path, tmp)

    def normals(calibration: dict) -> int:
        validation = calibration.get("validation", {})
        return int(validation.get("n_images", 0)) - int(validation.get("n_abnormal", 0))

    before, after = normals(previous), normals(result)
    message = (
        f"{model_path}: replacing its calibration (fitted on {before} normal validation slices) with one fitted "
        f"on {after}; the previous model is kept as {backup} (rename it to model.pt to go back)"
    )
    if after < before:
        logger.warning(f"{message}; the new one rests on fewer normals")
    else:
        logger.info(message)

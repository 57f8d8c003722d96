"""The calibrate step, at the end of training: the memory bank and the shots' global descriptors from the shots,
and the model's decisions fitted on anomalies of kinds training never makes (its calibration), all into model.pt.

train.json runs `calibrate_model` after the last epoch (its ``training`` list) and on its own for an
existing model.pt (its ``calibrate`` run id, with the training's overrides, so the same datalist and seed
give the same shots and validation set):

    python -m monai.bundle run calibrate \
        --config_file bundle/configs/train.json [the training overrides]

Steps: load the best weights from model.pt; build the `PatchMemoryBank` and the `ShotEmbeddings` from the k
shots (a volume shot contributes at most ``memory_bank_slices`` evenly spaced slices, `evenly_spaced_slices`);
make the calibration set (the held-out normal slices, each also with anomalies of kinds training never makes,
`mediclip_monai.data.unseen_anomalies`; not training's validation set, whose anomalies are of the training
tasks' kinds and so favour the ``mediclip`` branch) and compute its maps and image-level signals in one backbone
pass per batch; choose on it the fusion weight and the default branch (`mediclip_monai.decisions.branch_choice`),
fit the calibration (`mediclip_monai.decisions.calibration.calibrate`) and the image-level rule
(`mediclip_monai.decisions.image_level.fit_image_level`); rewrite model.pt atomically with all of them. The
network in memory ends as the calibrated best model. Under torchrun, rank 0 alone runs it
(multi_gpu_train.json) while the other ranks wait.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch

from ..data.unseen_anomalies import UNSEEN_FAMILIES, make_calibration_set
from ..decisions import BRANCHES, Decisions, calibration
from ..decisions.branch_choice import choose_default_branch, choose_memory_bank_weight
from ..decisions.image_level import MAP_BRANCHES, fit_image_level, foreground_fraction
from ..decisions.scoring import slice_scores
from ..errors import DataError
from ..io.atomic import atomic_write
from ..metrics import image_auroc
from ..networks import MediCLIP, PatchMemoryBank, PatchTokenCache, ShotEmbeddings
from ..networks.checkpoint import load_state, read_model_state
from ..networks.memory_bank import DEFAULT_MAX_PATCHES, DEFAULT_MAX_SLICES, evenly_spaced_slices
from ..precision import FLOAT32, Precision
from .training import FewShotData

__all__ = [
    "bank_slice_indices",
    "branch_maps",
    "build_memory_bank",
    "build_shot_embeddings",
    "calibrate_model",
    "calibration_outputs",
    "previous_model_path",
]

# The calibration set's draws: the config's seed plus this (validation's synthetic anomalies take seed + 1).
CALIBRATION_SEED_OFFSET = 2

logger = logging.getLogger(__name__)


def bank_slice_indices(shot_slices: Sequence[Sequence[int]], max_slices: int = DEFAULT_MAX_SLICES) -> list[int]:
    """The training slices that feed the memory bank: per shot, at most ``max_slices`` evenly spaced ones.

    Args:
        shot_slices: per shot, the indices of its slices (`FewShotData.shot_slices`).
        max_slices: the most slices taken from one shot (a 2D shot has one).
    """
    return [slices[i] for slices in shot_slices for i in evenly_spaced_slices(len(slices), max_slices)]


def _preprocessed(items: Sequence[dict], preprocessing: Callable, device) -> torch.Tensor:
    """The network inputs of ``items`` through the recipe's validation preprocessing (which also types a label,
    so shots get an empty one)."""
    inputs = [
        preprocessing({"image": item["image"], "label": item.get("label", torch.zeros_like(item["image"]))})
        for item in items
    ]
    return torch.stack([torch.as_tensor(x["image"]) for x in inputs]).to(device)


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
            # The recipe's own validation preprocessing, so the network sees what validation showed it.
            images = _preprocessed([batch[i] for i in missing], preprocessing, device)
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
def build_shot_embeddings(
    network: MediCLIP, shots: Sequence[dict], preprocessing: Callable, precision: Precision = FLOAT32
) -> ShotEmbeddings:
    """Fill ``network.shot_embeddings`` with the global descriptors of the slices that feed the memory bank.

    One shot slice per backbone pass, as `build_memory_bank` (the same values in every later calibrate run).
    """
    device = next(network.parameters()).device
    class_tokens, embeddings = [], []
    for item in shots:
        with precision.autocast():
            tokens = network.image_tokens(_preprocessed([item], preprocessing, device))
        class_tokens.append(tokens.class_tokens)
        embeddings.append(tokens.embedding)
    per_layer = [torch.cat(layer) for layer in zip(*class_tokens)]
    network.shot_embeddings.build(per_layer, torch.cat(embeddings))
    return network.shot_embeddings


@torch.no_grad()
def calibration_outputs(
    network: MediCLIP,
    cases: Sequence[dict],
    preprocessing: Callable,
    batch_size: int = 8,
    precision: Precision = FLOAT32,
) -> tuple[dict[str, torch.Tensor], dict[str, np.ndarray]]:
    """The calibration cases' ``mediclip`` and ``memory_bank`` maps (N x S x S, float32, CPU) and global signals
    (``{signal: N values}`` of `MediCLIP.global_signals`, with ``foreground``: each slice's foreground share),
    one backbone pass per batch."""
    device = next(network.parameters()).device
    size = tuple(cases[0]["image"].shape[-2:])
    maps: dict[str, list[torch.Tensor]] = {}
    signals: dict[str, list[np.ndarray]] = {}
    for start in range(0, len(cases), batch_size):
        batch = cases[start : start + batch_size]
        with precision.autocast():
            tokens = network.image_tokens(_preprocessed(batch, preprocessing, device))
            batch_maps = network.anomaly_maps_from_tokens(tokens.patch_tokens, size, MAP_BRANCHES)
            batch_signals = {name: v.double().cpu().numpy() for name, v in network.global_signals(tokens).items()}
        images = torch.stack([item["image"] for item in batch]).float()
        batch_signals["foreground"] = foreground_fraction(images).double().numpy()
        for name, anomaly_map in batch_maps.items():
            maps.setdefault(name, []).append(anomaly_map.float().cpu())
        for name, values in batch_signals.items():
            signals.setdefault(name, []).append(values)
    return (
        {name: torch.cat(parts) for name, parts in maps.items()},
        {name: np.concatenate(parts) for name, parts in signals.items()},
    )


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
    memory_bank_weight: float | None = None,
    seed: int = 0,
    batch_size: int = 8,
    precision: Precision = FLOAT32,
    token_cache: PatchTokenCache | None = None,
    strict: bool = True,
) -> dict | None:
    """Build the memory bank, the shot embeddings and the calibration of the model in ``model_path`` and write
    them into it.

    Everything is chosen and fitted on the calibration set: the normals held out of the shots
    (``data.held_out_slices``), each also with anomalies of kinds no training task makes. On the shots themselves
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
        memory_bank_weight: fusion weight of the memory bank (``memory_bank_weight``); None: chosen on the
            calibration set (`mediclip_monai.decisions.branch_choice`).
        seed: the config's seed (the coreset's and the calibration set's draws).
        batch_size: slices per backbone pass.
        precision: the precision of training (train.json's ``precision``, from ``amp``).
        token_cache: the run's store of backbone tokens (train.json's ``token_cache``): the shots and
            validation images that training already passed through the frozen backbone are not run again.
        strict: without held-out normals, raise (True) or leave model.pt as it is with a warning (False).

    Returns:
        The calibration stored (see `mediclip_monai.decisions.calibration.calibrate`; ``default_branch`` chosen,
        ``image_level``, ``choice`` and ``calibration_set`` added here); None when it was skipped.

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
    build_shot_embeddings(network, shots, preprocessing, precision)
    cases = make_calibration_set(data.held_out_slices, seed + CALIBRATION_SEED_OFFSET)
    maps, signals = calibration_outputs(network, cases, preprocessing, batch_size, precision)
    images = torch.stack([item["image"][0] for item in cases])
    masks = torch.stack([item["label"][0] for item in cases])
    weight_auroc = None
    if memory_bank_weight is None:
        memory_bank_weight, weight_auroc = choose_memory_bank_weight(*(maps[b] for b in MAP_BRANCHES), images, masks)
    result = calibration.calibrate(maps["mediclip"], maps["memory_bank"], images, masks, memory_bank_weight)
    maps["fused"] = calibration.fused_map(maps["mediclip"], maps["memory_bank"], result["fusion"])
    result["default_branch"], branch_auroc = choose_default_branch(maps, masks)
    copies, entries = [item["copy"] for item in cases], [item["entry"] for item in cases]
    signals["map"] = slice_scores(maps[result["default_branch"]], images)
    result["image_level"] = fit_image_level(
        signals, copies, entries, signals["foreground"], result["default_branch"], seed
    )
    labels = [int(copy > 0) for copy in copies]
    map_image_auroc = {name: image_auroc(labels, slice_scores(maps[name], images)) for name in BRANCHES}
    result["choice"] = {
        "criterion": "pixel AUROC on the calibration set (anomalies of kinds training never makes)",
        "pixel_auroc": branch_auroc,
        "image_auroc": {**map_image_auroc, "image_level": result["image_level"]["calibration_auroc"]},
        "memory_bank_weight": {"chosen": float(memory_bank_weight), "pixel_auroc": weight_auroc},
    }
    result["calibration_set"] = {
        "families": list(UNSEEN_FAMILIES),
        "normal_slices": len(data.held_out_slices),
        "anomalous_slices": len(cases) - len(data.held_out_slices),
        "seed": int(seed + CALIBRATION_SEED_OFFSET),
    }
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
    summary = ", ".join(
        f"{name} {branch_auroc[name]:.3f} (threshold {network.decisions.for_branch(name).threshold:.3g})"
        for name in BRANCHES
    )
    logger.info(
        f"calibrated on {len(images)} slices ({len(data.held_out_slices)} held-out normals and their copies with "
        f"anomalies of unseen kinds: {', '.join(UNSEEN_FAMILIES)}); pixel AUROC {summary}; memory bank weight "
        f"{memory_bank_weight:g}"
    )
    level = result["image_level"]
    logger.info(
        f"image-level score: AUROC {level['calibration_auroc']:.3f} on the calibration cases (maps' own "
        f"{', '.join(f'{k} {v:.3f}' for k, v in map_image_auroc.items())}); weights "
        f"{', '.join(f'{k} {v:.2f}' for k, v in level['weights'].items())}; volumes: top {level['slice_fraction']:g} "
        f"of their slices; threshold {level['threshold']:.3g}"
    )
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

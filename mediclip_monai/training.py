"""Glue between the training bundle config (bundle/configs/train.json) and the package.

The config holds the recipe; the few steps that are more than one expression live here as named
functions: the few-shot sample and its fixed validation set, per-epoch seeding, and finding the
checkpoint to resume from. Which datalist a run reads is decided in ``data.resolve``.
"""

from __future__ import annotations

import glob
import logging
import os
import re
from dataclasses import dataclass, field

import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.data.utils import set_rnd

from .data.datalists import DataError, check_entries, load_datalist, sample_k_shot
from .data.loading import load_training_slices
from .transforms import DEFAULT_SYNTHESIS_TASKS, RandAnomalySynthesisd

logger = logging.getLogger(__name__)

MAX_HELD_OUT_VALIDATION = 32


@dataclass
class FewShotData:
    """The k normal shots as 2D slices, and a fixed validation set with synthetic anomalies.

    ``train``: dicts {"image": 1 x S x S tensor in [0, 1], "name", "entry"}; ``support_images``: the same
    images, what CutPaste copies from; ``validation``: dicts {"image", "label", "name"} (label 1 x S x S
    binary); ``shot_slices``: per shot, the indices in ``train`` of its slices (one for a 2D shot).
    """

    train: list[dict]
    validation: list[dict]
    support_images: list[torch.Tensor] = field(repr=False)
    shot_slices: list[list[int]] = field(default_factory=list)


def _held_out_validation_items(datalist_path: str, training_items: list[dict], shots: list[dict]) -> list[dict]:
    """Normal images for validation: the datalist's own section, else training images left out of the shots."""
    try:
        return load_datalist(datalist_path, "validation")
    except DataError:
        pass
    chosen = {item["image"] for item in shots}
    rest = [item for item in training_items if item["image"] not in chosen]
    return rest[:MAX_HELD_OUT_VALIDATION]


def make_validation_set(
    slices: list[dict], support_images: list[torch.Tensor], synthesis_tasks: dict | None, seed: int
) -> list[dict]:
    """Each held-out normal slice twice: once as it is (normal), once with a synthetic anomaly.

    Pairing keeps the set balanced, so image AUROC is always defined, and it is drawn once from ``seed``,
    so every validation round scores the same cases.
    """
    tasks = {name: p for name, p in (synthesis_tasks or DEFAULT_SYNTHESIS_TASKS).items() if name != "Identity"}
    if not tasks:  # an Identity-only recipe still needs anomalous validation cases
        tasks = {name: p for name, p in DEFAULT_SYNTHESIS_TASKS.items() if name != "Identity"}
    synthesis = RandAnomalySynthesisd(keys="image", label_key="label", tasks=tasks, support_images=support_images)
    synthesis.set_random_state(seed)
    validation = []
    for item in slices:
        image = item["image"]
        validation.append({"image": image, "label": torch.zeros_like(image), "name": item["name"]})
        anomalous = synthesis({"image": image.clone()})
        validation.append(
            {"image": anomalous["image"], "label": anomalous["label"], "name": f"{item['name']}_synthetic"}
        )
    return validation


def prepare_few_shot_data(
    datalist: str,
    k_shot: int,
    seed: int,
    image_size: int,
    synthesis_tasks: dict | None = None,
) -> FewShotData:
    """Read the datalist, draw the k shots, check every file, and load shots and validation slices.

    Every bad entry (missing, unreadable, wrong dimensions) is reported in one DataError before any
    training step runs. Validation uses held-out normal images, never the test section.
    """
    training_items = load_datalist(datalist, "training")
    shots = sample_k_shot(training_items, k_shot, seed)
    validation_items = _held_out_validation_items(datalist, training_items, shots)
    check_entries(shots + validation_items)
    train = load_training_slices(shots, image_size=image_size)
    if not train:
        raise DataError(f"{datalist}: the {len(shots)} training images hold no slice with foreground.")
    support = [item["image"] for item in train]
    if validation_items:
        validation_slices = load_training_slices(validation_items, image_size=image_size)
    else:
        logger.warning("No held-out normal images: validating on the shots themselves (measures fit only).")
        validation_slices = train
    validation = make_validation_set(validation_slices, support, synthesis_tasks, seed + 1)
    logger.info(
        f"few-shot data: {len(shots)} shots -> {len(train)} training slices; "
        f"{len(validation_items)} held-out images -> {len(validation)} validation cases"
    )
    shot_slices = [[i for i, item in enumerate(train) if item["entry"] == shot] for shot in range(len(shots))]
    return FewShotData(train=train, validation=validation, support_images=support, shot_slices=shot_slices)


class EpochSeeder:
    """Seeds shuffling and anomaly synthesis from (seed, epoch, rank) at the start of every epoch.

    Every epoch then draws new anomalies, and a run resumed from a checkpoint draws exactly what an
    uninterrupted run would have drawn. The data loader must be built with ``generator``; with worker
    processes, MONAI's worker_init_fn seeds each worker's transforms from that generator.

    Args:
        seed: the config's seed.
        generator: the torch.Generator given to the training DataLoader.
        dataset: the training dataset (its transforms are re-seeded for in-process loading).
        rank: the process rank in distributed training.
    """

    def __init__(self, seed: int, generator: torch.Generator, dataset, rank: int = 0) -> None:
        self.seed = int(seed)
        self.generator = generator
        self.dataset = dataset
        self.rank = int(rank)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self)

    def __call__(self, engine: Engine) -> None:
        epoch_seed = int(np.random.SeedSequence([self.seed, engine.state.epoch, self.rank]).generate_state(1)[0])
        self.generator.manual_seed(epoch_seed)
        set_rnd(self.dataset, epoch_seed)
        # A fresh iterator: the previous epoch's exhausted one would still draw from the generator when
        # Ignite steps it to its end, which a resumed run never does.
        engine.set_data(engine.state.dataloader)


def latest_checkpoint(ckpt_dir: str, pattern: str = "resume_checkpoint_*.pt") -> str:
    """The resume checkpoint of the latest epoch in ``ckpt_dir``; a clear error when there is none."""
    files = glob.glob(os.path.join(ckpt_dir, pattern))

    def epoch_of(path: str) -> int:
        numbers = re.findall(r"(\d+)", os.path.basename(path))
        return int(numbers[-1]) if numbers else -1

    if not files:
        raise FileNotFoundError(
            f"{ckpt_dir}: no resume checkpoint ({pattern}) to resume from; run without --resume first."
        )
    return max(files, key=epoch_of)


def attach_resume(trainer: Engine, ckpt_dir: str, checkpoint_objects: dict) -> str:
    """Load the latest resume checkpoint of ``ckpt_dir`` into ``checkpoint_objects`` when training starts."""
    from monai.handlers import CheckpointLoader

    path = latest_checkpoint(ckpt_dir)
    logger.info(f"resuming from {path}")
    CheckpointLoader(load_path=path, load_dict=checkpoint_objects).attach(trainer)
    return path

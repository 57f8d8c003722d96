"""Glue between the training bundle config (bundle/configs/train.json) and the package.

The config holds the recipe; the few steps that are more than one expression live here as named
functions: the few-shot sample and its fixed validation set, the next step's text features computed once
for validation and training, and resume (the checkpoint to resume from, the
record of the best model that a resumed run must keep, and the removal of stale resume checkpoints).
Which datalist a run reads is decided in ``data.resolve``; the training batches of the whole run, seeded
per sample, come from ``data.epoch_stream``.
"""

from __future__ import annotations

import glob
import logging
import numbers
import os
import re
from dataclasses import dataclass, field

import torch
from ignite.engine import Engine, Events
from ignite.handlers.checkpoint import CheckpointEvents

from ..data.datalists import check_entries, load_datalist, sample_k_shot
from ..data.loading import load_training_slices
from ..errors import ConfigValueError, DataError
from ..precision import FLOAT32, Precision
from ..transforms import DEFAULT_SYNTHESIS_TASKS, RandAnomalySynthesisd

logger = logging.getLogger(__name__)

MAX_HELD_OUT_VALIDATION = 32


@dataclass
class FewShotData:
    """The k normal shots as 2D slices, and a fixed validation set with synthetic anomalies.

    ``train``: dicts {"image": 1 x S x S tensor in [0, 1], "name", "entry", "cache_key"}; ``support_images``:
    the same images, what CutPaste copies from; ``validation``: dicts {"image", "label", "name", "cache_key"}
    (label 1 x S x S binary; ``cache_key`` names the image for `CachedTokenInferer`); ``shot_slices``: per
    shot, the indices in ``train`` of its slices (one for a 2D shot); ``held_out``: whether the validation
    images are normals held out of the shots (False: the shot itself, when the datalist has a single
    image; such a set measures fit only, and cannot found a calibration).
    """

    train: list[dict]
    validation: list[dict]
    support_images: list[torch.Tensor] = field(repr=False)
    shot_slices: list[list[int]] = field(default_factory=list)
    held_out: bool = True


def _validation_split(
    datalist_path: str, training_items: list[dict], shots: list[dict], seed: int
) -> tuple[list[dict], list[dict], bool]:
    """The shots, the normal images of validation, and whether those are held out of the shots.

    Validation and calibration need normal images the model was not fitted on: the datalist's own
    ``validation`` section, else training images not drawn as shots (at most `MAX_HELD_OUT_VALIDATION`).
    When every training image is a shot, a quarter of them (at least one, drawn with ``seed``) is held out
    instead and the rest are the shots. A single image cannot be split: it validates on itself.
    """
    try:
        return shots, load_datalist(datalist_path, "validation"), True
    except DataError:
        pass
    chosen = {item["image"] for item in shots}
    rest = [item for item in training_items if item["image"] not in chosen]
    if rest:
        return shots, rest[:MAX_HELD_OUT_VALIDATION], True
    if len(shots) < 2:
        return shots, [], False
    kept = sample_k_shot(shots, len(shots) - max(1, len(shots) // 4), seed)
    kept_images = {item["image"] for item in kept}
    held_out = [item for item in shots if item["image"] not in kept_images]
    logger.warning(
        f"{datalist_path}: every training image is a shot and there is no 'validation' section; "
        f"{len(held_out)} of the {len(shots)} images are held out as normal validation images (validation and "
        f"calibration need normals the model was not fitted on), {len(kept)} are shots. Add a 'validation' "
        "section to train on all of them."
    )
    return kept, held_out, True


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
    for index, item in enumerate(validation):
        item["cache_key"] = f"validation/{index}"
    return validation


def prepare_few_shot_data(
    datalist: str,
    k_shot: int,
    seed: int,
    image_size: int,
    synthesis_tasks: dict | None = None,
) -> FewShotData:
    """Read the datalist, draw the k shots, check every file, and load shots and validation slices.

    Every bad entry is reported in one DataError before any training step runs: shots and validation
    images that are missing, unreadable or of the wrong dimensions, and every other training entry whose
    file is missing or not an image. Validation uses normal images held out of the shots (see
    `_validation_split`), never the test section.
    """
    training_items = load_datalist(datalist, "training")
    shots = sample_k_shot(training_items, k_shot, seed)
    shots, validation_items, held_out = _validation_split(datalist, training_items, shots, seed)
    read = {item["image"] for item in shots + validation_items}
    # The images not drawn are only checked to be there: reading every file of a large dataset takes long.
    check_entries(shots + validation_items, exist_only=[item for item in training_items if item["image"] not in read])
    slices = load_training_slices(shots + validation_items, image_size=image_size)  # every bad image at once
    train = [item for item in slices if item["entry"] < len(shots)]
    for index, item in enumerate(train):  # names the slice for the token cache (CachedTokenInferer)
        item["cache_key"] = f"train/{index}"
    if not train:
        raise DataError(f"{datalist}: the {len(shots)} training images hold no slice with foreground.")
    support = [item["image"] for item in train]
    if held_out:
        validation_slices = [item for item in slices if item["entry"] >= len(shots)]
    else:
        logger.warning(
            f"{datalist}: a single normal image, nothing to hold out: validating on the shot itself, which "
            "measures fit only; the model will not be calibrated"
        )
        validation_slices = train
    validation = make_validation_set(validation_slices, support, synthesis_tasks, seed + 1)
    logger.info(
        f"few-shot data: {len(shots)} shots -> {len(train)} training slices; "
        f"{len(validation_items)} held-out images -> {len(validation)} validation cases"
    )
    shot_slices = [[i for i, item in enumerate(train) if item["entry"] == shot] for shot in range(len(shots))]
    return FewShotData(
        train=train,
        validation=validation,
        support_images=support,
        shot_slices=shot_slices,
        held_out=held_out,
    )


class NextStepTextFeatures:
    """After every epoch but the last, computes the text features of the next training step ahead of time.

    The text features depend only on the prompt contexts, which do not change between the last step of
    an epoch and the first of the next: the validation round in between and that next step both use the
    features computed here (`PromptLearner.prepare_next_step`), instead of one text-tower forward each.
    Exact, and the same in mixed precision (computed in the training step's precision). Attach it to the
    trainer before the ValidationHandler, so that it runs first.

    Args:
        network: the MediCLIP network (not its DistributedDataParallel wrapper).
        precision: the training's precision (`mediclip_monai.precision`).
    """

    def __init__(self, network, precision: Precision = FLOAT32) -> None:
        self.network = network
        self.precision = precision

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        if engine.state.epoch >= engine.state.max_epochs:
            return  # no next step: the last validation round computes its own
        with self.precision.autocast():
            self.network.prompts.prepare_next_step()


RESUME_PATTERN = "resume_checkpoint_*.pt"


def _epoch_of(path: str) -> int:
    numbers_in_name = re.findall(r"(\d+)", os.path.basename(path))
    return int(numbers_in_name[-1]) if numbers_in_name else -1


def resume_checkpoints(ckpt_dir: str, pattern: str = RESUME_PATTERN) -> list[str]:
    """The resume checkpoints in ``ckpt_dir``, newest epoch first."""
    return sorted(glob.glob(os.path.join(ckpt_dir, pattern)), key=_epoch_of, reverse=True)


def latest_checkpoint(ckpt_dir: str, pattern: str = RESUME_PATTERN) -> str:
    """The newest resume checkpoint of ``ckpt_dir`` that reads to its end; a clear error when there is none.

    A run killed while writing its newest checkpoint leaves that file truncated: the one before it is used.
    """
    for path in resume_checkpoints(ckpt_dir, pattern):
        try:
            torch.load(path, map_location="cpu", weights_only=True)
            return path
        except Exception as error:  # noqa: BLE001 - whatever makes it unreadable, the older one is the fallback
            logger.warning(f"{path}: unreadable resume checkpoint ({type(error).__name__}), trying an older one")
    raise ConfigValueError(
        f"--resume true: {ckpt_dir} holds no readable resume checkpoint ({pattern}); give the --ckpt_dir of the "
        "interrupted run, or run without --resume"
    )


def attach_resume(trainer: Engine, ckpt_dir: str, checkpoint_objects: dict) -> str:
    """Load the latest resume checkpoint of ``ckpt_dir`` into ``checkpoint_objects`` when training starts."""
    from monai.handlers import CheckpointLoader

    path = latest_checkpoint(ckpt_dir)
    done = _epoch_of(path)
    if trainer.state.max_epochs is not None and done > trainer.state.max_epochs:
        raise ConfigValueError(
            f"--epochs {trainer.state.max_epochs} with --resume true: the run in {ckpt_dir} has already done {done} "
            f"epochs ({os.path.basename(path)}); give --epochs {done} or more"
        )
    logger.info(f"resuming from {path}")
    CheckpointLoader(load_path=path, load_dict=checkpoint_objects).attach(trainer)
    return path


class StaleResumeCheckpointRemover:
    """Once a resume checkpoint is written, removes every other one in its folder.

    The resume CheckpointSaver keeps all its files (``n_saved`` None) so that the previous checkpoint still
    exists while the next is being written; this removes it afterwards, together with those of earlier,
    interrupted or longer runs in the same ``ckpt_dir``, which a later ``--resume`` would otherwise pick up.

    Args:
        ckpt_dir: the folder of the resume checkpoints.
        pattern: their file names.
    """

    def __init__(self, ckpt_dir: str, pattern: str = RESUME_PATTERN) -> None:
        self.ckpt_dir = ckpt_dir
        self.pattern = pattern

    def attach(self, engine: Engine) -> None:
        if not engine.has_registered_events(CheckpointEvents.SAVED_CHECKPOINT):
            engine.register_events(*CheckpointEvents)
        engine.add_event_handler(CheckpointEvents.SAVED_CHECKPOINT, self)

    def __call__(self, engine: Engine) -> None:
        for path in resume_checkpoints(self.ckpt_dir, self.pattern):
            if _epoch_of(path) != engine.state.epoch:
                os.remove(path)


class BestModelRecord:
    """What a resumed run needs to keep model.pt the best epoch's, and the report of that epoch.

    MONAI's key-metric CheckpointSaver decides when model.pt is replaced, and the evaluator tracks the best
    metric, both in memory only: a resumed run would start both afresh and replace model.pt with the first
    epoch it validates, however much worse. As an entry of the resume checkpoint, this object carries the
    saver's record of its best score and the evaluator's best metric across the restart. It also keeps the
    epoch and the validation metrics of the round that wrote model.pt, for `report`.

    Attach it to the evaluator after the saver. Args:
        saver: the evaluator's key-metric CheckpointSaver (writes model.pt).
        model_path: where that saver writes model.pt (for the report).
    """

    def __init__(self, saver, model_path: str) -> None:
        self.saver = saver
        self.model_path = model_path
        self.evaluator: Engine | None = None  # stays None on DDP ranks that do not save
        self.best: dict = {}

    def attach(self, evaluator: Engine) -> None:
        self.evaluator = evaluator
        if not evaluator.has_registered_events(CheckpointEvents.SAVED_CHECKPOINT):
            evaluator.register_events(*CheckpointEvents)
        evaluator.add_event_handler(CheckpointEvents.SAVED_CHECKPOINT, self._model_saved)

    def _model_saved(self, evaluator: Engine) -> None:
        metrics = {k: float(v) for k, v in evaluator.state.metrics.items() if isinstance(v, numbers.Real)}
        self.best = {"epoch": int(evaluator.state.epoch), **metrics}

    def state_dict(self) -> dict:
        state = {
            # MONAI's CheckpointSaver restores this list (load_state_dict) but has no public getter for it.
            "saver": dict(self.saver._key_metric_checkpoint.state_dict()),
            "best": dict(self.best),
        }
        if self.evaluator is not None:
            state["best_metric"] = float(self.evaluator.state.best_metric)
            state["best_metric_epoch"] = int(self.evaluator.state.best_metric_epoch)
        return state

    def load_state_dict(self, state: dict) -> None:
        self.saver.load_state_dict(state["saver"])
        self.best = dict(state["best"])
        if self.evaluator is not None and "best_metric" in state:
            self.evaluator.state.best_metric = state["best_metric"]
            self.evaluator.state.best_metric_epoch = state["best_metric_epoch"]

    def report(self) -> str:
        """Print (and return) where model.pt is and the validation figures of its epoch."""
        if not self.best:
            line = f"no validation round wrote a model, so {self.model_path} was not written"
        else:
            metrics = ", ".join(f"{k} {v:.4f}" for k, v in self.best.items() if k != "epoch")
            epoch = self.best["epoch"]
            line = f"model.pt written to {os.path.abspath(self.model_path)} (best validation, epoch {epoch}: {metrics})"
        print(line, flush=True)
        return line

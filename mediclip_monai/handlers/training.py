"""Ignite handlers of the training recipe (bundle/configs/train.json): the next step's text features computed
once for validation and training, and resume (the checkpoint to resume from, the record of the best model that
a resumed run must keep, and the removal of stale resume checkpoints).
"""

from __future__ import annotations

import glob
import logging
import numbers
import os
import re

import torch
from ignite.engine import Engine, Events
from ignite.handlers.checkpoint import CheckpointEvents

from ..errors import ConfigValueError
from ..precision import FLOAT32, Precision

__all__ = [
    "BestModelRecord",
    "NextStepTextFeatures",
    "StaleResumeCheckpointRemover",
    "attach_resume",
    "latest_checkpoint",
    "resume_checkpoints",
]

logger = logging.getLogger(__name__)


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

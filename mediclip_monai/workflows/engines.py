"""The engine of the inference and evaluation recipes: a case dataset and an evaluator that keep going
past a bad case.

An exception inside Ignite's loop ends a run, so a case that cannot be read, scored or written must not
raise there. ``CaseDataset`` turns a case whose preprocessing fails (unreadable file, bad mask) into a
failure record; ``CaseEvaluator`` (MONAI's ``SupervisedEvaluator``) records those, catches what fails in
inference, postprocessing or writing of a case, and goes on with the next one. Its iteration output for
such a case is ``[NoPrediction(name, source, failure)]``, whose ``pred``, ``label`` (any key) is None: the
project's metrics and handlers skip it. When the loop is over, the
failures of every rank are reported in one ``CaseFailuresError`` (after the handlers have written what
the good cases gave), so the run exits non-zero and names every bad file with its reason. An output
folder that is full or read-only is not a case's fault: it stops the run at once with an ``OutputError``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch.distributed as dist
from monai.data import Dataset
from monai.engines import SupervisedEvaluator
from torch.utils.data import Sampler

from ..errors import MediclipError, OutputError, describe_failure, reason_of

__all__ = [
    "FAILURE_KEY",
    "CaseDataset",
    "CaseEvaluator",
    "CaseFailuresError",
    "CaseShardSampler",
    "is_distributed",
    "wait_for_every_rank",
]

logger = logging.getLogger(__name__)

FAILURE_KEY = "failure"
IDLE_KEY = "idle"


def is_distributed() -> bool:
    """Whether this process is one of several ranks of an initialised process group."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def wait_for_every_rank() -> None:
    """Wait until every rank of a distributed run gets here (train.json: while rank 0 calibrates); nothing to
    wait for in one process."""
    if is_distributed():
        dist.barrier()


class CaseFailuresError(MediclipError, RuntimeError):
    """Some cases could not be processed; the message lists each with its file and reason."""


class NoPrediction(dict):
    """The iteration output of a failed case or an idle iteration: any key a metric asks for is None."""

    def __missing__(self, key):
        return None


def _first(value):
    """The single item of a collated batch of one case (collation makes lists and 1-element tensors)."""
    if isinstance(value, (list, tuple)):
        return value[0] if value else None
    return value


class CaseDataset(Dataset):
    """A dataset of cases (dicts with ``name`` and ``source``) whose failures are data, not exceptions.

    A case whose ``transform`` raises becomes ``{"name", "source", "failure": "<source>: <reason>"}``,
    which ``CaseEvaluator`` reports; the other cases load as usual.
    """

    def _transform(self, index: int):
        try:
            return super()._transform(index)
        except Exception as error:  # one bad case must not stop the others
            item = self.data[index]
            source = str(item.get("source", item.get("image", "")))
            return {"name": item.get("name", ""), "source": source, FAILURE_KEY: describe_failure(source, error)}


class CaseShardSampler(Sampler):
    """This rank's share of the cases of a distributed run: cases ``rank``, ``rank + world``, ...

    Every case goes to exactly one rank and none is repeated (unlike samplers that pad ranks to equal
    length, which would write a case twice and count it twice in metrics); a rank may get no case.

    Args:
        dataset: the cases.
        num_replicas: number of ranks (default: the process group's size).
        rank: this rank (default: the process group's rank).
    """

    def __init__(self, dataset, num_replicas: int | None = None, rank: int | None = None) -> None:
        self.num_replicas = dist.get_world_size() if num_replicas is None else int(num_replicas)
        self.rank = dist.get_rank() if rank is None else int(rank)
        self.indices = range(self.rank, len(dataset), self.num_replicas)

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


class CaseEvaluator(SupervisedEvaluator):
    """MONAI's SupervisedEvaluator over cases, one case per iteration, that keeps going past a bad case.

    Same arguments as ``SupervisedEvaluator`` (the data loader should give one case per batch). A rank
    with no case at all (every case already done, or fewer cases than ranks) runs one idle iteration, so
    its epoch events (metrics, handlers, their collective calls) happen as on the other ranks.

    Attributes:
        failures: ``"<source>: <reason>"`` for every case of this rank that failed.

    Raises (from ``run``):
        CaseFailuresError: on rank 0, listing the failures of every rank, once all ranks are done.
    """

    def __init__(self, *args: Any, val_data_loader, epoch_length: int | None = None, **kwargs: Any) -> None:
        self.n_cases = len(val_data_loader)
        if self.n_cases == 0:
            val_data_loader, epoch_length = [{IDLE_KEY: True}], 1
        super().__init__(*args, val_data_loader=val_data_loader, epoch_length=epoch_length, **kwargs)
        self.failures: list[str] = []

    def _iteration(self, engine: SupervisedEvaluator, batchdata: dict[str, Any]) -> list[dict]:
        if batchdata.get(IDLE_KEY):
            return [NoPrediction()]
        name, source = _first(batchdata.get("name")), _first(batchdata.get("source"))
        failure = _first(batchdata.get(FAILURE_KEY))
        if failure is None:
            try:
                return super()._iteration(engine, batchdata)
            except Exception as error:  # reading, inference, postprocessing or writing of this case
                reason = reason_of(error)[0]
                if isinstance(reason, OutputError):  # the output folder, not the case: every next case would fail
                    raise reason
                failure = describe_failure(source, error)
        logger.error(failure)
        self.failures.append(failure)
        return [NoPrediction(name=name, source=source, **{FAILURE_KEY: failure})]

    def run(self, global_epoch: int = 1) -> None:
        self.failures = []
        super().run(global_epoch)
        failures, n_cases = self.failures, self.n_cases
        if is_distributed():
            gathered: list[Sequence] = [None] * dist.get_world_size()  # type: ignore[list-item]
            dist.all_gather_object(gathered, (failures, n_cases))  # also waits until every rank is done
            failures = [f for rank_failures, _ in gathered for f in rank_failures]
            n_cases = sum(n for _, n in gathered)
            if dist.get_rank() != 0:
                return
        if failures:
            raise CaseFailuresError(
                f"{len(failures)} of {n_cases} case(s) failed:\n" + "\n".join(f"  {f}" for f in failures)
            )

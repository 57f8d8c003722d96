"""The training data of a whole run as one stream of batches, each sample seeded from (seed, epoch, rank, index).

Few-shot training runs hundreds of short epochs (k = 16 shots at batch 8: two steps each). Restarting the
data loader every epoch (new worker processes, synthesis of the first batches while the network waits)
cost more than the network's own work. Here the loader is iterated once for the whole run:

- `EpochBatchSampler` yields the batches of every epoch from the first one still to run to the last,
  one after the other, each batch a list of ``(epoch, index)`` pairs and never spanning two epochs; the
  order of an epoch is a permutation drawn from ``(seed, epoch)`` and split between the ranks of a
  distributed run as ``DistributedSampler`` splits it. Its worker processes start once and keep
  synthesising ahead across epoch boundaries, while the network trains and validates.
- `EpochSeededDataset` seeds its random transforms (the anomaly synthesis) from ``(seed, epoch, rank,
  index)`` before each sample. So every epoch draws new anomalies, a sample does not depend on which worker
  made it (or how many there are), and a resumed run draws exactly what the uninterrupted run drew.

The trainer must be given the sampler's ``epoch_length`` (the loader's length is that of the whole run)
and `EpochStart` (a handler) tells the sampler which epoch a run starts at, a resumed run included.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.data.utils import set_rnd
from monai.transforms import apply_transform
from torch.utils.data import Dataset, Sampler

__all__ = ["EpochBatchSampler", "EpochSeededDataset", "EpochStart", "sample_seed"]


def sample_seed(*parts: int) -> int:
    """A 32-bit seed mixed from integers (``seed, epoch, rank, index``): nearby tuples give unrelated seeds."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


class EpochSeededDataset(Dataset):
    """``data`` through ``transform``, indexed by ``(epoch, index)``; random transforms seeded per sample.

    Args:
        data: the samples (dicts).
        transform: applied to a sample; its random parts (MONAI ``Randomizable``) are re-seeded from
            ``(seed, epoch, rank, index)`` before each call.
        seed: the config's seed.
        rank: the process's rank in a distributed run.
    """

    def __init__(self, data: Sequence, transform: Callable, seed: int = 0, rank: int = 0) -> None:
        self.data = data
        self.transform = transform
        self.seed = int(seed)
        self.rank = int(rank)

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, key: tuple[int, int]):
        epoch, index = key
        set_rnd(self.transform, sample_seed(self.seed, epoch, self.rank, index))
        return apply_transform(self.transform, self.data[index])


class EpochBatchSampler(Sampler):
    """Batches of ``(epoch, index)`` pairs for every epoch from `set_epoch`'s to ``max_epochs``, in one stream.

    Args:
        num_samples: the dataset's length.
        batch_size: samples per batch; an epoch's last batch may be smaller (it never takes samples of the
            next epoch).
        max_epochs: the last epoch (epochs count from 1, as Ignite's).
        seed: the config's seed (each epoch's order is drawn from ``(seed, epoch)``).
        num_replicas, rank: the ranks of a distributed run and this one's: the epoch's order is padded to a
            multiple of ``num_replicas`` with its first samples and dealt out, as ``DistributedSampler``
            does, so every rank makes the same number of steps.
        shuffle: draw a new order every epoch (else the dataset's order).
    """

    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        max_epochs: int,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
        shuffle: bool = True,
    ) -> None:
        if num_samples < 1 or batch_size < 1 or max_epochs < 1:
            raise ValueError(f"need samples, batch size and epochs >= 1, got {num_samples}, {batch_size}, {max_epochs}")
        self.num_samples = int(num_samples)
        self.batch_size = int(batch_size)
        self.max_epochs = int(max_epochs)
        self.seed = int(seed)
        self.num_replicas = int(num_replicas)
        self.rank = int(rank)
        self.shuffle = bool(shuffle)
        self.start_epoch = 1

    @property
    def samples_per_rank(self) -> int:
        return math.ceil(self.num_samples / self.num_replicas)

    @property
    def epoch_length(self) -> int:
        """Batches (training steps) per epoch on this rank."""
        return math.ceil(self.samples_per_rank / self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """The epoch the next iteration starts at (1 for a new run; a resumed run's next epoch)."""
        self.start_epoch = int(epoch)

    def epoch_order(self, epoch: int) -> list[int]:
        """This rank's samples of ``epoch``, in the order they are batched."""
        if self.shuffle:
            generator = torch.Generator().manual_seed(sample_seed(self.seed, epoch))
            order = torch.randperm(self.num_samples, generator=generator).tolist()
        else:
            order = list(range(self.num_samples))
        total = self.samples_per_rank * self.num_replicas
        order = (order * math.ceil(total / len(order)))[:total]
        return order[self.rank : total : self.num_replicas]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for epoch in range(self.start_epoch, self.max_epochs + 1):
            order = self.epoch_order(epoch)
            for start in range(0, len(order), self.batch_size):
                yield [(epoch, index) for index in order[start : start + self.batch_size]]

    def __len__(self) -> int:
        return max(0, self.max_epochs - self.start_epoch + 1) * self.epoch_length


class EpochStart:
    """Tells an `EpochBatchSampler` the epoch a run starts at, before the trainer first iterates its loader.

    Ignite creates the loader's iterator after the first ``EPOCH_STARTED`` of a run, once a resumed run's
    checkpoint has set the epoch; this handler runs at every ``EPOCH_STARTED``, and only the first matters.

    Args:
        batch_sampler: the training loader's `EpochBatchSampler`.
    """

    def __init__(self, batch_sampler: EpochBatchSampler) -> None:
        self.batch_sampler = batch_sampler

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self)

    def __call__(self, engine: Engine) -> None:
        self.batch_sampler.set_epoch(engine.state.epoch)

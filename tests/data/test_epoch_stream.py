"""The training stream: batches of (epoch, index) for the whole run, each sample seeded on its own."""

import torch
from torch.utils.data import DataLoader

from mediclip_monai.data.epoch_stream import EpochBatchSampler, EpochSeededDataset
from mediclip_monai.transforms import RandAnomalySynthesisd


def test_batches_cover_each_epoch_once_and_never_span_two_epochs():
    sampler = EpochBatchSampler(num_samples=10, batch_size=4, max_epochs=3, seed=0)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 3 * sampler.epoch_length == 9
    for epoch in (1, 2, 3):
        of_epoch = [b for b in batches if b[0][0] == epoch]
        assert all(e == epoch for b in of_epoch for e, _ in b)
        assert [len(b) for b in of_epoch] == [4, 4, 2]
        assert sorted(i for b in of_epoch for _, i in b) == list(range(10))
    orders = [[i for b in batches if b[0][0] == epoch for _, i in b] for epoch in (1, 2, 3)]
    assert orders[0] != orders[1] != orders[2]  # a new order every epoch...
    assert list(EpochBatchSampler(10, 4, 3, seed=0)) == batches  # ...drawn from the seed
    assert list(EpochBatchSampler(10, 4, 3, seed=1)) != batches


def test_a_run_resumed_at_an_epoch_gets_the_rest_of_the_same_stream():
    whole = list(EpochBatchSampler(7, 3, max_epochs=5, seed=4))
    resumed = EpochBatchSampler(7, 3, max_epochs=5, seed=4)
    resumed.set_epoch(3)
    assert list(resumed) == [b for b in whole if b[0][0] >= 3] and len(resumed) == 3 * resumed.epoch_length


def test_ranks_share_each_epoch_as_distributed_sampler_does():
    ranks = [EpochBatchSampler(9, 2, max_epochs=2, seed=0, num_replicas=2, rank=r) for r in (0, 1)]
    assert ranks[0].epoch_length == ranks[1].epoch_length == 3  # 9 samples padded to 10: 5 per rank
    for epoch in (1, 2):
        seen = [i for sampler in ranks for b in sampler if b[0][0] == epoch for _, i in b]
        assert len(seen) == 10 and set(seen) == set(range(9))


def _dataset(images, seed=0):
    synthesis = RandAnomalySynthesisd(keys="image", label_key="label", support_images=images, task_key="task")
    return EpochSeededDataset([{"image": image} for image in images], synthesis, seed=seed)


def test_a_sample_depends_on_its_seed_epoch_and_index_only():
    images = [torch.rand(1, 32, 32) for _ in range(6)]
    dataset = _dataset(images)
    first = dataset[(2, 3)]
    dataset[(1, 0)], dataset[(5, 4)]  # other draws in between change nothing
    again = dataset[(2, 3)]
    assert torch.equal(first["image"], again["image"]) and torch.equal(first["label"], again["label"])
    other_epochs = [dataset[(epoch, 3)] for epoch in range(3, 9)]
    assert any(not torch.equal(first["label"], o["label"]) for o in other_epochs)  # new anomalies every epoch
    reseeded = _dataset(images, seed=1)
    assert any(not torch.equal(reseeded[(2, i)]["image"], dataset[(2, i)]["image"]) for i in range(6))


def test_worker_processes_give_the_batches_of_the_main_process():
    images = [torch.rand(1, 32, 32) for _ in range(6)]
    loaders = [
        DataLoader(_dataset(images), batch_sampler=EpochBatchSampler(6, 4, 2, seed=0), num_workers=workers)
        for workers in (0, 2)
    ]
    for a, b in zip(*loaders, strict=True):
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"]) and a["task"] == b["task"]

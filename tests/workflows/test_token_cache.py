"""CachedTokenInferer and PatchTokenCache: tokens of images seen before are reused, and only those."""

import pytest
import torch

from mediclip_monai.networks import MediCLIP, PatchTokenCache
from mediclip_monai.workflows.inferers import CachedTokenInferer


@pytest.fixture(scope="module")
def network():
    torch.manual_seed(0)
    return MediCLIP("mediclip-tiny", "none").eval()


@pytest.fixture
def backbone_batches(network, monkeypatch):
    """The batch size of every pass through the frozen backbone."""
    sizes = []
    original = network.backbone.patch_tokens

    def counted(images):
        sizes.append(images.shape[0])
        return original(images)

    monkeypatch.setattr(network.backbone, "patch_tokens", counted)
    return sizes


def images(n, seed):
    return torch.randn(n, 3, 224, 224, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def test_validation_images_run_through_the_backbone_once_and_give_bit_identical_maps(network, backbone_batches):
    inferer = CachedTokenInferer(PatchTokenCache())
    batch, keys = images(4, 0), [f"validation/{i}" for i in range(4)]
    expected = network(batch)
    assert backbone_batches == [4]
    first = inferer(batch, network, cache_keys=keys)
    second = inferer(batch, network, cache_keys=keys)
    assert backbone_batches == [4, 4]  # the first round computes the batch as a whole; the second nothing
    assert torch.equal(first, expected) and torch.equal(second, expected)
    assert len(inferer.cache) == 4 and inferer.cache.hits == 4


@torch.no_grad()
def test_a_partly_known_batch_computes_only_the_rest(network, backbone_batches):
    inferer = CachedTokenInferer(PatchTokenCache())
    batch = images(4, 1)
    inferer(batch[:2], network, cache_keys=["a", "b"])
    out = inferer(batch, network, cache_keys=["a", "b", "c", "d"])
    assert backbone_batches == [2, 2]
    torch.testing.assert_close(out, network(batch), rtol=0, atol=1e-5)


@torch.no_grad()
def test_training_reuses_only_images_the_identity_task_left_unchanged(network, backbone_batches):
    inferer = CachedTokenInferer(PatchTokenCache())
    batch = images(4, 2)
    keys = ["train/0", "train/1", "train/2", "train/3"]
    inferer(batch, network, cache_keys=keys, tasks=["Identity", "CutPaste", "Identity", "GaussIntensityChange"])
    # Each unchanged shot alone (a batch of one, whatever batch met it first), then the changed ones together.
    assert backbone_batches == [1, 1, 2]
    assert sorted(inferer.cache.keys()) == ["train/0", "train/2"]
    for i in (0, 2):
        fresh = network.patch_tokens(batch[i : i + 1])
        for cached, layer in zip(inferer.cache.get(keys[i]), fresh):
            torch.testing.assert_close(cached, layer[0], rtol=0, atol=1e-5)
    backbone_batches.clear()
    # The next epoch: shot 0 is unchanged again, shot 2 now has an anomaly (its cached tokens must not be used).
    later = batch.clone()
    later[2] += 0.5
    out = inferer(later, network, cache_keys=keys, tasks=["Identity", "SourceDeformation", "CutPaste", "CutPaste"])
    assert backbone_batches == [3]
    torch.testing.assert_close(out, network(later), rtol=0, atol=1e-5)


@torch.no_grad()
def test_the_cache_keeps_no_more_than_its_bound(network, backbone_batches):
    one_image = sum(t[0].numel() * t.element_size() for t in network.patch_tokens(images(1, 3)))
    cache = PatchTokenCache(max_bytes=2.5 * one_image)
    inferer = CachedTokenInferer(cache)
    batch = images(4, 3)
    out = inferer(batch, network, cache_keys=list("abcd"))
    assert len(cache) == 2 and cache.bytes <= cache.max_bytes and cache.full
    assert torch.equal(out, network(batch))
    # Full: an unchanged training image now runs inside the batch like the others.
    backbone_batches.clear()
    inferer(batch, network, cache_keys=list("wxyz"), tasks=["Identity"] * 4)
    assert backbone_batches == [4]


@torch.no_grad()
def test_a_cache_of_zero_bytes_is_off(network, backbone_batches):
    inferer = CachedTokenInferer(PatchTokenCache(max_bytes=0))
    batch = images(2, 4)
    out = inferer(batch, network, cache_keys=["a", "b"], tasks=["Identity", "Identity"])
    assert backbone_batches == [2] and len(inferer.cache) == 0
    assert torch.equal(out, network(batch))

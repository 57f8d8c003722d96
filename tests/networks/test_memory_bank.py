"""The patch memory bank (mediclip_monai.networks.memory_bank): exact search, coreset bound, chunking, state."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mediclip_monai.networks.clip_backbone import ClipBackbone
from mediclip_monai.networks.memory_bank import (
    PatchMemoryBank,
    evenly_spaced_slices,
    greedy_coreset,
    upsample_patch_map,
)


def random_tokens(n, width=12, side=4, layers=3, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(n, width, side, side, generator=generator) for _ in range(layers)]


def brute_force_scores(bank_tokens, query_tokens):
    """1 - max cosine similarity per layer, averaged over layers, by the plain definition."""
    per_layer = []
    for bank_layer, query_layer in zip(bank_tokens, query_tokens):
        b = F.normalize(bank_layer.permute(0, 2, 3, 1).reshape(-1, bank_layer.shape[1]), dim=-1)
        q = query_layer.permute(0, 2, 3, 1)
        cos = F.normalize(q, dim=-1) @ b.T  # B x h x w x M
        per_layer.append(1.0 - cos.amax(dim=-1))
    return torch.stack(per_layer).mean(dim=0)


def test_unsubsampled_bank_is_the_exact_nearest_neighbour_score():
    shots, queries = random_tokens(5), random_tokens(3, seed=1)
    bank = PatchMemoryBank(max_patches=1000, storage_dtype=torch.float32).build(shots)
    assert bank.size == 5 * 16 and bank.num_layers == 3 and bank.width == 12
    expected = brute_force_scores(shots, queries)
    torch.testing.assert_close(bank.patch_scores(queries), expected, rtol=0, atol=1e-6)
    # a shot's own patches are in the bank: distance 0
    torch.testing.assert_close(bank.patch_scores([t[:2] for t in shots]), torch.zeros(2, 4, 4), rtol=0, atol=1e-6)


def test_float16_storage_stays_close_to_float32():
    shots, queries = random_tokens(5), random_tokens(3, seed=1)
    exact = PatchMemoryBank(storage_dtype=torch.float32).build(shots).patch_scores(queries)
    half = PatchMemoryBank().build(shots)
    assert half.patches.dtype == torch.float16
    torch.testing.assert_close(half.patch_scores(queries), exact, rtol=0, atol=2e-3)


def test_coreset_respects_the_bound_and_keeps_rare_patterns():
    # 200 patches of one common pattern and 2 patches of a rare, distant one
    common = torch.randn(1, 12, 1, 1) + 0.05 * torch.randn(200, 12, 1, 1)
    rare = -common[:1] + 0.05 * torch.randn(2, 12, 1, 1)
    tokens = [torch.cat([common, rare])]
    bank = PatchMemoryBank(max_patches=8, storage_dtype=torch.float32).build(tokens)
    assert bank.size == 8
    scores = bank.patch_scores(tokens)[:, 0, 0]
    assert float(scores[-2:].max()) < 0.05  # the rare pattern made it into the bank
    # every kept patch is one of the candidates
    candidates = F.normalize(tokens[0][:, :, 0, 0], dim=-1)
    kept = bank.patches[0]
    distances = torch.cdist(kept, candidates, compute_mode="donot_use_mm_for_euclid_dist")
    assert distances.amin(dim=1).max() < 1e-6


def test_coreset_of_volume_sized_input_is_bounded_and_seeded():
    tokens = random_tokens(40, width=16, side=6)  # 1440 candidates
    a = PatchMemoryBank(max_patches=100, seed=3).build(tokens)
    b = PatchMemoryBank(max_patches=100, seed=3).build(tokens)
    c = PatchMemoryBank(max_patches=100, seed=4).build(tokens)
    assert tuple(a.patches.shape) == (3, 100, 16)
    assert torch.equal(a.patches, b.patches)
    assert not torch.equal(a.patches, c.patches)


def test_greedy_coreset_picks_the_farthest_point_each_step():
    points = torch.tensor([[0.0], [1.0], [10.0], [4.0], [9.0]])
    assert greedy_coreset(points, 3, start=0).tolist() == [0, 2, 3]
    assert sorted(greedy_coreset(points, 5).tolist()) == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="coreset size"):
        greedy_coreset(points, 6)


def test_chunked_search_equals_one_shot_search():
    shots, queries = random_tokens(6), random_tokens(4, seed=2)
    whole = PatchMemoryBank(storage_dtype=torch.float32).build(shots)
    chunked = PatchMemoryBank(storage_dtype=torch.float32, bank_chunk=5).build(shots)
    assert torch.equal(whole.patches, chunked.patches)
    torch.testing.assert_close(chunked.patch_scores(queries), whole.patch_scores(queries), rtol=0, atol=1e-7)


def test_building_from_batches_equals_building_at_once():
    shots = random_tokens(6)
    at_once = PatchMemoryBank(max_patches=50).build(shots)
    batched = PatchMemoryBank(max_patches=50).build_from_batches([[t[:2] for t in shots], [t[2:] for t in shots]])
    assert torch.equal(at_once.patches, batched.patches)


def test_state_dict_round_trip_with_weights_only_into_an_empty_bank(tmp_path):
    class Holder(nn.Module):  # the bank as a submodule, as inside the network
        def __init__(self):
            super().__init__()
            self.memory_bank = PatchMemoryBank()

    built = Holder()
    built.memory_bank.build(random_tokens(5))
    path = tmp_path / "model.pt"
    torch.save(built.state_dict(), path)
    fresh = Holder()
    assert not fresh.memory_bank.is_built
    fresh.load_state_dict(torch.load(path, weights_only=True), strict=True)
    assert torch.equal(fresh.memory_bank.patches, built.memory_bank.patches)
    assert fresh.memory_bank.patches.dtype == torch.float16
    queries = random_tokens(2, seed=5)
    assert torch.equal(fresh.memory_bank.patch_scores(queries), built.memory_bank.patch_scores(queries))


def test_scores_need_a_built_bank_with_matching_layers():
    with pytest.raises(RuntimeError, match="empty"):
        PatchMemoryBank().patch_scores(random_tokens(1))
    bank = PatchMemoryBank().build(random_tokens(2))
    with pytest.raises(ValueError, match="3 layers of width 12"):
        bank.patch_scores(random_tokens(1, layers=2))
    with pytest.raises(ValueError, match="one shape"):
        PatchMemoryBank().build([torch.randn(2, 12, 4, 4), torch.randn(2, 8, 4, 4)])


def test_anomaly_map_upsamples_like_the_mediclip_map():
    scores = torch.rand(2, 4, 4)
    up = upsample_patch_map(scores, (16, 16))
    assert up.shape == (2, 16, 16)
    # align_corners=True: the corner pixels are the corner patches' scores exactly
    torch.testing.assert_close(up[:, [0, -1]][:, :, [0, -1]], scores[:, [0, -1]][:, :, [0, -1]])
    bank = PatchMemoryBank().build(random_tokens(2))
    queries = random_tokens(1, seed=3)
    torch.testing.assert_close(
        bank.anomaly_map(queries, (16, 16)), upsample_patch_map(bank.patch_scores(queries), (16, 16))
    )


def test_bank_from_the_tiny_backbone_scores_shots_low_and_changed_images_higher():
    torch.manual_seed(0)
    backbone = ClipBackbone("mediclip-tiny", "none")
    shots = torch.rand(3, 3, 224, 224)
    bank = PatchMemoryBank().build(backbone.patch_tokens(shots))
    assert bank.num_layers == len(backbone.feature_layers) and bank.width == backbone.vision_width
    own = bank.patch_scores(backbone.patch_tokens(shots[:1]))
    changed = shots[:1].clone()
    changed[..., 50:150, 50:150] = 3.0  # a bright square no shot has
    other = bank.patch_scores(backbone.patch_tokens(changed))
    assert float(own.max()) < 2e-3
    assert float(other[0, 5:9, 5:9].mean()) > 10 * float(own.mean()) + 0.01


@pytest.mark.parametrize(
    ("n", "most", "expected"),
    [(5, 8, [0, 1, 2, 3, 4]), (9, 3, [0, 4, 8]), (10, 4, [0, 3, 6, 9]), (7, 1, [3]), (0, 4, [])],
)
def test_evenly_spaced_slices(n, most, expected):
    assert evenly_spaced_slices(n, most) == expected


def test_evenly_spaced_slices_rejects_a_zero_budget():
    with pytest.raises(ValueError, match="at least 1"):
        evenly_spaced_slices(5, 0)

"""Metric numbers against scikit-learn, hand-computed values and a naive AUPRO."""


import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import f1_score, roc_auc_score

from mediclip_monai.metrics import (
    image_auroc,
    max_f1,
    pixel_aupro,
    pixel_auroc,
)


@pytest.fixture
def rng():
    return np.random.default_rng(42)


def test_image_auroc_and_pixel_auroc_match_sklearn(rng):
    labels = rng.integers(0, 2, size=40)
    scores = rng.random(40) + 0.3 * labels
    assert image_auroc(labels, scores) == pytest.approx(roc_auc_score(labels, scores))

    masks = rng.random((5, 16, 16)) > 0.8
    maps = rng.random((5, 16, 16)) + 0.5 * masks
    assert pixel_auroc(masks, maps) == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()))
    # A list of differently sized samples is pooled the same way.
    as_list_masks, as_list_maps = [masks[0], masks[1, :8]], [maps[0], maps[1, :8]]
    pooled = roc_auc_score(
        np.concatenate([m.ravel() for m in as_list_masks]), np.concatenate([s.ravel() for s in as_list_maps])
    )
    assert pixel_auroc(as_list_masks, as_list_maps) == pytest.approx(pooled)


def test_auroc_with_ties_equals_sklearn_to_the_last_digit(rng):
    labels = rng.random(50_000) < 0.1
    scores = np.round(rng.random(50_000) + 0.2 * labels, 2)  # 121 distinct values: ties across both classes
    assert pixel_auroc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert image_auroc([0, 1, 0, 1], [0.5, 0.5, 0.5, 0.5]) == 0.5


def test_max_f1_is_the_best_f1_over_all_thresholds(rng):
    labels = rng.integers(0, 2, size=60)
    scores = rng.random(60) + 0.4 * labels
    brute_force = max(f1_score(labels, scores >= t) for t in np.unique(scores))
    assert max_f1(labels, scores) == pytest.approx(brute_force)
    assert max_f1([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]) == 1.0


@pytest.mark.parametrize(
    "fn, args",
    [
        (image_auroc, ([0, 0, 0], [0.1, 0.5, 0.9])),
        (image_auroc, ([1, 1], [0.1, 0.5])),
        (max_f1, ([0, 0, 0], [0.1, 0.5, 0.9])),
        (pixel_auroc, (np.zeros((2, 4, 4)), np.random.rand(2, 4, 4))),
        (pixel_aupro, (np.zeros((2, 4, 4)), np.random.rand(2, 4, 4))),
        (pixel_aupro, (np.ones((2, 4, 4)), np.random.rand(2, 4, 4))),
    ],
)
def test_one_class_gives_nan_and_a_warning(fn, args):
    with pytest.warns(UserWarning, match="undefined"):
        assert np.isnan(fn(*args))


def test_aupro_perfect_map_is_one():
    masks = np.zeros((2, 10, 10), dtype=bool)
    masks[0, 2:4, 2:5] = True
    masks[0, 7:9, 7:9] = True
    masks[1, 5, 1:8] = True
    assert pixel_aupro(masks, masks.astype(float)) == pytest.approx(1.0)


def test_aupro_constant_map_is_half_of_max_fpr():
    masks = np.zeros((1, 8, 8), dtype=bool)
    masks[0, 2:5, 2:5] = True
    assert pixel_aupro(masks, np.full((1, 8, 8), 0.5)) == pytest.approx(0.15)
    assert pixel_aupro(masks, np.full((1, 8, 8), 0.5), max_fpr=1.0) == pytest.approx(0.5)


def test_aupro_weighs_regions_not_pixels():
    """One 1-pixel region found (score 1), one 8-pixel region missed (score 0 like the background).

    PRO is 1/2 for any threshold in (0, 1] at FPR 0, and 1 at threshold 0 (FPR 1). Curve up to 0.3:
    (0, 0) -> (0, 0.5) -> (0.3, 0.5 + 0.5 * 0.3): area 0.3 * (0.5 + 0.65) / 2, normalised: 0.575.
    """
    masks = np.zeros((1, 12, 12), dtype=bool)
    maps = np.zeros((1, 12, 12))
    masks[0, 1, 1] = True
    maps[0, 1, 1] = 1.0
    masks[0, 6:8, 6:10] = True
    assert pixel_aupro(masks, maps) == pytest.approx(0.575)


def _naive_aupro(masks, maps, max_fpr=0.3, num_thresholds=200):
    """Threshold by threshold, region by region: slow but obviously the definition."""
    thresholds = np.linspace(maps.min(), maps.max(), num_thresholds)
    points = [(0.0, 0.0)]
    for t in thresholds[::-1]:
        overlaps = []
        for mask, score_map in zip(masks, maps):
            labeled, n = ndimage.label(mask, structure=np.ones((3,) * mask.ndim))
            overlaps += [(score_map[labeled == r] >= t).mean() for r in range(1, n + 1)]
        fpr = (maps[~masks] >= t).mean()
        points.append((fpr, np.mean(overlaps)))
    fpr, pro = np.array(points).T
    pro_at_max = np.interp(max_fpr, fpr, pro)
    keep = fpr <= max_fpr
    return np.trapezoid(np.append(pro[keep], pro_at_max), np.append(fpr[keep], max_fpr)) / max_fpr


@pytest.mark.parametrize("shape", [(3, 20, 20), (2, 10, 10, 6)])
def test_aupro_matches_a_naive_implementation(rng, shape):
    smooth = ndimage.gaussian_filter(rng.random(shape), sigma=(0,) + (1.5,) * (len(shape) - 1))
    masks = smooth > np.quantile(smooth, 0.8)  # blobs of various sizes, several per sample
    maps = np.clip(rng.normal(0.3, 0.15, shape) + 0.3 * masks, 0, 1)
    assert ndimage.label(masks[0], structure=np.ones((3,) * (len(shape) - 1)))[1] > 1
    assert pixel_aupro(masks, maps) == pytest.approx(_naive_aupro(masks, maps), abs=1e-9)

"""Metrics: numpy functions against scikit-learn and hand-computed values, Ignite metrics in real engines
(plain Ignite, MONAI's SupervisedEvaluator, two gloo processes)."""

import json
import warnings

import ignite.distributed as idist
import numpy as np
import pytest
import torch
from ignite.engine import Engine
from scipy import ndimage
from sklearn.metrics import f1_score, roc_auc_score

from mediclip_monai.metrics import (
    ImageAccuracy,
    ImageAUROC,
    PixelAUROC,
    PixelDice,
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


# --- Ignite ------------------------------------------------------------------------------------------


def _batches(rng, n_batches=3, batch=4, size=8):
    """Softmax-like 2-channel maps and 1-channel masks; the last batch is uneven, one image normal."""
    out = []
    for b in range(n_batches):
        n = batch if b < n_batches - 1 else batch - 1
        label = (rng.random((n, 1, size, size)) > 0.85).astype(np.float32)
        label[0] = 0  # at least one normal image per batch
        anomaly = np.clip(rng.random((n, size, size)) * 0.6 + 0.3 * label[:, 0], 0, 1).astype(np.float32)
        anomaly[0, rng.integers(size), rng.integers(size)] = rng.uniform(0.75, 0.9)  # hot spot in a normal image
        pred = np.stack([1 - anomaly, anomaly], axis=1)
        out.append((torch.from_numpy(pred), torch.from_numpy(label)))
    return out


def _expected(batches):
    pred = torch.cat([p for p, _ in batches]).numpy()
    label = torch.cat([lab for _, lab in batches]).numpy()
    image = image_auroc(label.reshape(len(label), -1).max(axis=1), pred[:, 1].reshape(len(pred), -1).max(axis=1))
    pixel = pixel_auroc(label[:, 0], pred[:, 1])
    return image, pixel


def test_ignite_metrics_in_an_engine_equal_the_numpy_functions(rng):
    batches = _batches(rng)
    engine = Engine(lambda engine, batch: batch)
    ImageAUROC().attach(engine, "image_auroc")
    PixelAUROC().attach(engine, "pixel_auroc")
    state = engine.run(batches, max_epochs=1)
    assert state.iteration == 3
    image, pixel = _expected(batches)
    assert state.metrics["image_auroc"] == pytest.approx(image)
    assert state.metrics["pixel_auroc"] == pytest.approx(pixel)
    assert 0.0 < image < 1.0 and 0.5 < pixel < 1.0  # imperfect, so a wrong image score would show

    # A second epoch resets: same data, same values (nothing accumulated twice).
    state = engine.run(batches, max_epochs=2)
    assert state.metrics["image_auroc"] == pytest.approx(image)


def test_ignite_metrics_from_bundle_config_on_decollated_monai_output(rng):
    """The bundle JSON form, fed MONAI's decollated output (a list of per-sample dicts) via from_engine."""
    from monai.bundle import ConfigParser  # MONAI imported here only: the gloo test's workers stay light

    config = json.loads(
        '{"image_auroc": {"_target_": "mediclip_monai.metrics.ImageAUROC",'
        " \"output_transform\": \"$monai.handlers.from_engine(['pred', 'label'])\"},"
        ' "pixel_auroc": {"_target_": "mediclip_monai.metrics.PixelAUROC",'
        " \"output_transform\": \"$monai.handlers.from_engine(['pred', 'label'])\"}}"
    )
    parser = ConfigParser(config)
    image_metric, pixel_metric = parser.get_parsed_content("image_auroc"), parser.get_parsed_content("pixel_auroc")
    assert isinstance(image_metric, ImageAUROC) and isinstance(pixel_metric, PixelAUROC)

    batches = _batches(rng)

    def decollated(engine, batch):
        pred, label = batch
        return [{"pred": p, "label": lab} for p, lab in zip(pred, label)]

    engine = Engine(decollated)
    image_metric.attach(engine, "image_auroc")
    pixel_metric.attach(engine, "pixel_auroc")
    state = engine.run(batches, max_epochs=1)
    image, pixel = _expected(batches)
    assert state.metrics["image_auroc"] == pytest.approx(image)
    assert state.metrics["pixel_auroc"] == pytest.approx(pixel)


def test_ignite_metrics_in_monai_supervised_evaluator(rng):
    from monai.engines import SupervisedEvaluator
    from monai.handlers import from_engine

    batches = _batches(rng)
    data = [{"image": pred, "label": label} for pred, label in batches]
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"),
        val_data_loader=data,
        epoch_length=len(data),
        network=torch.nn.Identity(),  # the "image" already is the 2-channel probability map
        key_val_metric={"val_image_auroc": ImageAUROC(output_transform=from_engine(["pred", "label"]))},
        additional_metrics={"val_pixel_auroc": PixelAUROC(output_transform=from_engine(["pred", "label"]))},
    )
    evaluator.run()
    image, pixel = _expected(batches)
    assert evaluator.state.metrics["val_image_auroc"] == pytest.approx(image)
    assert evaluator.state.metrics["val_pixel_auroc"] == pytest.approx(pixel)
    assert evaluator.state.best_metric == pytest.approx(image)


def test_ignite_metric_is_nan_with_a_warning_when_all_images_are_normal():
    pred = torch.rand(2, 2, 4, 4)
    label = torch.zeros(2, 1, 4, 4)
    engine = Engine(lambda engine, batch: batch)
    ImageAUROC().attach(engine, "image_auroc")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        state = engine.run([(pred, label)], max_epochs=1)
    assert np.isnan(state.metrics["image_auroc"])
    assert any("undefined" in str(w.message) for w in caught)


def _distributed_worker(local_rank, batches_per_rank, results):
    rank = idist.get_rank()
    engine = Engine(lambda engine, batch: batch)
    ImageAUROC().attach(engine, "image_auroc")
    PixelAUROC().attach(engine, "pixel_auroc")
    state = engine.run(batches_per_rank[rank], max_epochs=1)
    results[rank] = (state.metrics["image_auroc"], state.metrics["pixel_auroc"])


def test_ignite_metrics_gather_uneven_shards_across_two_processes(rng):
    """Two gloo processes with different numbers of samples: each reports the metric over all of them."""
    import torch.multiprocessing as mp

    batches_per_rank = [_batches(rng, n_batches=2), _batches(rng, n_batches=1)]
    results = mp.Manager().dict()
    with idist.Parallel(backend="gloo", nproc_per_node=2) as parallel:
        parallel.run(_distributed_worker, batches_per_rank, results)
    image, pixel = _expected(batches_per_rank[0] + batches_per_rank[1])
    for rank in (0, 1):
        assert results[rank][0] == pytest.approx(image)
        assert results[rank][1] == pytest.approx(pixel)


def test_pooled_dice_and_image_accuracy_at_a_threshold():
    dice = PixelDice()
    truth = torch.zeros(2, 1, 4, 4)
    truth[0, 0, :2] = 1  # 8 anomalous pixels in case 0; case 1 normal
    mask = torch.zeros(2, 1, 4, 4)
    mask[0, 0, 1:3] = 1  # 8 predicted, 4 of them right
    mask[1, 0, 0, 0] = 1  # one false positive on the normal case
    dice.update((list(mask), list(truth)))
    dice.update(([None], [truth[0]]))  # a case without a prediction is left out
    assert dice.compute() == pytest.approx(2 * 4 / (9 + 8))
    accuracy = ImageAccuracy()
    accuracy.update(([1, 0, 1, 0], [torch.tensor(1), torch.tensor(0), torch.tensor(0), torch.tensor(0)]))
    assert accuracy.compute() == pytest.approx(0.75)
    # image scores given per sample, not maps: the AUROC uses them as they are
    auroc = ImageAUROC()
    auroc.update(([0.2, 0.9, 0.4], [torch.tensor(0), torch.tensor(1), torch.tensor(1)]))
    assert auroc.compute() == pytest.approx(roc_auc_score([0, 1, 1], [0.2, 0.9, 0.4]))

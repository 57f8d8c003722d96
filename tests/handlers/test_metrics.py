"""Ignite metrics in real engines (plain Ignite, MONAI's SupervisedEvaluator, two gloo processes) equal the
metric numbers; the metric set of an anomaly branch."""

import json
import warnings

import ignite.distributed as idist
import numpy as np
import pytest
import torch
from ignite.engine import Engine
from sklearn.metrics import roc_auc_score

from mediclip_monai.handlers.metrics import ImageAccuracy, ImageAUROC, PixelAUROC, PixelDice
from mediclip_monai.metrics import image_auroc, pixel_auroc


@pytest.fixture
def rng():
    return np.random.default_rng(42)


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
        '{"image_auroc": {"_target_": "mediclip_monai.handlers.ImageAUROC",'
        " \"output_transform\": \"$monai.handlers.from_engine(['pred', 'label'])\"},"
        ' "pixel_auroc": {"_target_": "mediclip_monai.handlers.PixelAUROC",'
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

"""The anomaly-synthesis array transforms and the task mixture (mediclip_monai.transforms.synthesis)."""

import re

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from scipy import ndimage

from mediclip_monai.transforms import (
    DEFAULT_SYNTHESIS_TASKS,
    SYNTHESIS_TASKS,
    IdentityAnomaly,
    RandAnomalySynthesis,
    RandCutPaste,
    RandGaussIntensityChange,
    RandSinkDeformation,
    RandSmoothIntensityChange,
    RandSourceDeformation,
    make_synthesis_task,
)

from .conftest import body_image, textured_image, to_numpy

ANOMALY_TASKS = [name for name, task in SYNTHESIS_TASKS.items() if task.changes_image]
PERLIN_TASKS = ["CutPaste", "GaussIntensityChange", "SmoothIntensityChange"]
RADIAL_TASKS = ["SourceDeformation", "SinkDeformation"]


def seeded(name, seed=0, **kwargs):
    task = make_synthesis_task(name, **kwargs)
    if hasattr(task, "set_random_state"):
        task.set_random_state(seed)
    return task


def union_of_placements(task, shape):
    union = np.zeros(shape, dtype=bool)
    for p in task.placements:
        union[p.box] |= p.shape
    return union


# --- behaviour on every task, numpy and torch ------------------------------------------------------


@pytest.mark.parametrize("name", list(SYNTHESIS_TASKS))
def test_seeded_runs_are_bit_identical_and_seeds_differ(name, to_input):
    image = textured_image()
    first = [seeded(name, 3)(to_input(image)) for _ in range(2)]
    for a, b in zip(*first):
        assert type(a) is type(b) and np.array_equal(to_numpy(a), to_numpy(b))
    if name == "Identity":
        return
    outputs = {to_numpy(seeded(name, seed)(to_input(image))[1]).tobytes() for seed in range(4)}
    assert len(outputs) == 4, "different seeds must give different anomalies"


@pytest.mark.parametrize("name", ANOMALY_TASKS)
def test_anomaly_is_binary_nonempty_in_range_and_nothing_outside_the_mask_changes(name, to_input):
    task = seeded(name, 1)
    for seed in range(8):
        image = textured_image(seed=seed)
        x = to_input(image)
        out, mask = task(x)
        assert type(out) is type(x) and type(mask) is type(x)
        assert out.shape == mask.shape == x.shape and out.dtype == mask.dtype == x.dtype
        out, mask = to_numpy(out), to_numpy(mask)
        assert set(np.unique(mask)) <= {0.0, 1.0} and mask.sum() > 0
        inside = mask.astype(bool)
        assert np.array_equal(out[~inside], image[~inside])
        assert np.any(out[inside] != image[inside]), "the anomaly must change the image"
        assert out.min() >= 0.0 and out.max() <= 1.0
        # The mask marks placed shapes only.
        assert not np.any(inside[0] & ~union_of_placements(task, image.shape[1:]))


@pytest.mark.parametrize(
    "name", ["GaussIntensityChange", "SourceDeformation", "SinkDeformation", "SmoothIntensityChange"]
)
def test_mask_is_exactly_the_union_of_the_placed_shapes(name):
    task = seeded(name, 2)
    for seed in range(6):
        image = textured_image(seed=seed)
        _, mask = task(image)
        assert np.array_equal(mask[0].astype(bool), union_of_placements(task, image.shape[1:]))


def test_identity_leaves_image_and_mask_untouched(to_input):
    image = textured_image()
    x = to_input(image)
    out, mask = IdentityAnomaly()(x)
    assert type(out) is type(x) and np.array_equal(to_numpy(out), image)
    assert mask.shape == x.shape and mask.dtype == x.dtype and not to_numpy(mask).any()


@pytest.mark.parametrize("name", list(SYNTHESIS_TASKS))
def test_metatensor_affine_and_meta_survive(name):
    affine = torch.diag(torch.tensor([0.7, 0.7, 1.0, 1.0], dtype=torch.float64))
    x = MetaTensor(
        torch.from_numpy(textured_image()), affine=affine, meta={"filename_or_obj": "case_007.nii.gz"}
    )
    out, mask = seeded(name)(x)
    for result in (out, mask):
        assert isinstance(result, MetaTensor)
        assert torch.equal(result.affine, affine)
        assert result.meta["filename_or_obj"] == "case_007.nii.gz"


@pytest.mark.parametrize("dtype", [np.float64, np.float16])
def test_other_float_dtypes_are_kept_exactly_outside_the_mask(dtype):
    image = textured_image().astype(dtype)
    out, mask = seeded("SourceDeformation")(image)
    assert out.dtype == mask.dtype == dtype
    assert np.array_equal(out[mask == 0], image[mask == 0])


def test_bfloat16_tensor_keeps_its_dtype():
    x = torch.from_numpy(textured_image()).to(torch.bfloat16)
    out, mask = seeded("GaussIntensityChange")(x)
    assert out.dtype == mask.dtype == torch.bfloat16
    assert torch.equal(out[mask == 0], x[mask == 0])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_gpu_tensor_comes_back_on_its_device():
    x = torch.from_numpy(textured_image()).cuda()
    out, mask = seeded("CutPaste")(x)
    assert out.device == mask.device == x.device


def test_randomize_false_reuses_the_draws_and_checks_the_size():
    task = seeded("GaussIntensityChange")
    image = textured_image()
    first = task(image)
    again = task(image, randomize=False)
    assert np.array_equal(first[0], again[0]) and np.array_equal(first[1], again[1])
    with pytest.raises(ValueError, match="size"):
        task(textured_image(size=32), randomize=False)
    with pytest.raises(RuntimeError, match="randomize"):
        RandCutPaste()(image, randomize=False)


def test_prob_zero_returns_the_image_with_an_empty_mask():
    image = textured_image()
    out, mask = RandGaussIntensityChange(prob=0.0)(image)
    assert np.array_equal(out, image) and not mask.any()


# --- task-specific behaviour ----------------------------------------------------------------------


def test_cutpaste_pastes_support_content_and_labels_only_what_changed():
    target = np.zeros((1, 40, 40), np.float32)
    bright = np.full((1, 40, 40), 0.8, np.float32)
    task = RandCutPaste(support_images=[bright])
    task.set_random_state(0)
    out, mask = task(target)
    blobs = union_of_placements(task, (40, 40))
    # Everything pasted differs from the black target: the label is the whole blob, full of support content.
    assert np.array_equal(mask[0].astype(bool), blobs)
    np.testing.assert_allclose(out[mask == 1], 0.8, atol=1e-6)

    # Content identical to what is there: nothing changes, nothing is labelled.
    task.set_support_images([target])
    out, mask = task(target)
    assert not mask.any() and np.array_equal(out, target)


def test_cutpaste_without_support_images_uses_the_image_itself():
    constant = np.full((1, 32, 32), 0.4, np.float32)
    out, mask = seeded("CutPaste")(constant)
    assert not mask.any() and np.array_equal(out, constant)
    out, mask = seeded("CutPaste")(textured_image())
    assert mask.any()


def test_cutpaste_support_set_accepts_tensors_batches_and_other_sizes():
    support = torch.from_numpy(np.stack([textured_image(56, seed=s) for s in range(3)]))  # (K, 1, H, W)
    task = RandCutPaste(support_images=support)
    assert len(task.support_images) == 3
    task.set_support_images([torch.from_numpy(textured_image(24, seed=4))])  # smaller than the target
    task.set_random_state(0)
    for _ in range(20):
        out, _ = task(textured_image(48))
        assert np.isfinite(out).all() and 0.0 <= out.min() and out.max() <= 1.0


def test_gauss_intensity_change_changes_every_unclipped_pixel_in_its_blob():
    image = np.full((1, 40, 40), 0.5, np.float32)  # mid grey: +/- 0.6 never reaches a clip limit
    task = seeded("GaussIntensityChange", 5)
    for _ in range(10):
        out, mask = task(image)
        diff = (out - image)[mask == 1]
        assert np.abs(diff).max() <= 0.6 + 1e-6
        assert np.mean(diff != 0) > 0.9


def test_smooth_intensity_change_stays_in_the_image_range_and_ramps_in_from_the_edge():
    image = textured_image()
    task = seeded("SmoothIntensityChange", 0)
    ramped = 0
    for _ in range(20):
        out, _ = task(image)
        assert image.min() <= out.min() and out.max() <= image.max()
        if len(task.placements) > 1:
            continue
        placement = task.placements[0]
        depth = ndimage.distance_transform_edt(np.pad(placement.shape, 1))[1:-1, 1:-1]
        change = np.abs(out - image)[0][placement.box]
        ramped += change[depth == 1].mean() < change[depth == depth.max()].mean()
    assert ramped >= 5, "the change must be weaker on the blob's edge than in its depth"


def test_source_magnifies_the_centre_and_sink_the_edge():
    d_max = np.full(99, 10.0)
    d = np.linspace(0.1, 10.0, 99)
    for factor in (2**0.5, 2.0, 4.0):
        source = RandSourceDeformation._new_distance(d, d_max, factor)
        sink = RandSinkDeformation._new_distance(d, d_max, factor)
        # Both keep the edge fixed and are monotone: tissue moves along rays, never folds.
        assert source[-1] == pytest.approx(10.0) and sink[-1] == pytest.approx(10.0)
        assert np.all(np.diff(source) > 0) and np.all(np.diff(sink) > 0)
        # Source samples nearer the centre (content pushed out), sink nearer the edge (pulled in).
        assert np.all(source[:-1] < d[:-1]) and np.all(sink[:-1] > d[:-1])


def test_deformation_moves_content_inside_the_shape():
    rows, cols = np.mgrid[:48, :48]
    stripes = (0.5 + 0.4 * np.sin(rows / 2.0) * np.cos(cols / 3.0))[None].astype(np.float32)
    for name in RADIAL_TASKS:
        task = seeded(name, 4)
        for _ in range(5):
            out, mask = task(stripes)
            assert np.mean(np.abs(out - stripes)[mask == 1]) > 0.01


# --- statistics over many draws (small images, fixed seeds) ------------------------------------------


@pytest.mark.parametrize("name", PERLIN_TASKS)
def test_perlin_patch_sides_within_bounds_and_cover_their_range(name):
    task = seeded(name, 11)
    image = textured_image(40)
    (lb, ub), _ = task.box_bounds((40, 40))
    assert (lb, ub) == (round(task.min_prop * 40), round(task.max_prop * 40))
    sides = []
    for _ in range(150):
        task.randomize(image)
        for p in task.placements:
            sides.extend(p.shape.shape)
            assert p.shape.mean() >= 0.2, "the blob must cover at least 20% of its box"
            assert all(0 <= c <= 40 - s for c, s in zip(p.corner, p.shape.shape))
    assert min(sides) == lb and max(sides) == ub - 1


@pytest.mark.parametrize("name", RADIAL_TASKS)
def test_hypershape_sides_within_bounds(name):
    task = seeded(name, 12)
    image = textured_image(40)
    (lb, ub), _ = task.box_bounds((40, 40))
    sides, kinds = [], []
    for _ in range(300):
        task.randomize(image)
        for p in task.placements:
            shape = p.params["hypershape"]
            sides.extend(shape.sides)
            kinds.append(shape.kind)
            assert max(p.shape.shape) <= ub
            assert p.shape[tuple(p.params["centre"].astype(int))], (
                "the deformation centre lies inside the shape"
            )
    assert min(sides) == lb and max(sides) == ub
    assert 0.4 < kinds.count("ellipse") / len(kinds) < 0.6


@pytest.mark.parametrize("name", ANOMALY_TASKS)
def test_second_anomaly_about_half_the_time_and_corners_uniform(name):
    task = seeded(name, 13)
    image = textured_image(40)
    counts, positions = [], []
    for _ in range(300):
        task.randomize(image)
        counts.append(len(task.placements))
        for p in task.placements:
            free = [40 - s for s in p.shape.shape]
            positions.extend(c / f for c, f in zip(p.corner, free) if f > 0)
    assert set(counts) == {1, 2}
    assert 0.42 < np.mean(np.array(counts) == 2) < 0.58
    # Uniform corner over valid positions: mean 1/2, both extremes reached.
    assert 0.45 < np.mean(positions) < 0.55 and min(positions) == 0.0 and max(positions) == 1.0


def test_mixture_draws_tasks_with_their_probabilities():
    mixture = RandAnomalySynthesis({"CutPaste": 2, "GaussIntensityChange": 1, "SourceDeformation": 1})
    mixture.set_random_state(21)
    image = textured_image(24)
    drawn = []
    for _ in range(800):
        mixture.randomize(image)
        drawn.append(mixture.chosen_task)
    assert abs(drawn.count("CutPaste") / 800 - 0.5) < 0.05
    assert abs(drawn.count("GaussIntensityChange") / 800 - 0.25) < 0.05
    assert abs(drawn.count("SourceDeformation") / 800 - 0.25) < 0.05


def test_default_mixture_is_mediclips_and_a_quarter_stay_normal():
    mixture = RandAnomalySynthesis()
    assert dict(zip(mixture.task_names, mixture.probabilities)) == DEFAULT_SYNTHESIS_TASKS
    mixture.set_random_state(0)
    image = textured_image(24)
    empty = [not mixture(image)[1].any() for _ in range(400)]
    assert 0.19 < np.mean(empty) < 0.31


# --- the mixture's interface ---------------------------------------------------------------------


def test_mixture_rejects_unknown_names_and_bad_probabilities():
    with pytest.raises(ValueError, match="CutPaste.*GaussIntensityChange.*Identity") as error:
        RandAnomalySynthesis({"Cutpaste": 1.0})
    assert "Cutpaste" in str(error.value)
    with pytest.raises(ValueError, match=">= 0"):
        RandAnomalySynthesis({"CutPaste": -1.0, "Identity": 2.0})
    with pytest.raises(ValueError, match="positive"):
        RandAnomalySynthesis({"CutPaste": 0.0})


def test_mixture_normalises_and_accepts_a_list_of_names():
    mixture = RandAnomalySynthesis({"SinkDeformation": 3.0, "SmoothIntensityChange": 1.0, "Identity": 0.0})
    assert mixture.task_names == ["SinkDeformation", "SmoothIntensityChange"]
    np.testing.assert_allclose(mixture.probabilities, [0.75, 0.25])
    assert RandAnomalySynthesis(["CutPaste", "Identity"]).probabilities.tolist() == [0.5, 0.5]


def test_mixture_forwards_support_images_to_cutpaste():
    mixture = RandAnomalySynthesis({"CutPaste": 1.0})
    mixture.set_support_images([textured_image(seed=s) for s in range(4)])
    assert len(mixture.tasks["CutPaste"].support_images) == 4
    RandAnomalySynthesis({"Identity": 1.0}).set_support_images([textured_image()])  # no CutPaste: no error


def test_mixture_seeding_drives_every_task_from_one_generator():
    mixture = RandAnomalySynthesis({name: 1.0 for name in SYNTHESIS_TASKS})
    mixture.set_random_state(5)
    for task in mixture.tasks.values():
        if hasattr(task, "R"):
            assert task.R is mixture.R
    image = textured_image(32)
    first = [to_numpy(mixture(image)[1]) for _ in range(12)]
    mixture.set_random_state(5)
    second = [to_numpy(mixture(image)[1]) for _ in range(12)]
    assert all(np.array_equal(a, b) for a, b in zip(first, second))
    mixture.set_random_state(6)
    third = [to_numpy(mixture(image)[1]) for _ in range(12)]
    assert not all(np.array_equal(a, b) for a, b in zip(first, third))


# --- foreground placement --------------------------------------------------------------------------


@pytest.mark.parametrize("name", ANOMALY_TASKS)
def test_foreground_threshold_places_every_anomaly_on_the_body(name):
    image = body_image(48)
    body = image[0] > 0.05
    off, on = seeded(name, 7), seeded(name, 7, foreground_threshold=0.05)
    centres = {"off": [], "on": []}
    labelled_on_background = {"off": 0, "on": 0}
    for _ in range(60):
        for key, task in (("off", off), ("on", on)):
            _, mask = task(image)
            assert all(p.shape[p.centre[0] - p.corner[0], p.centre[1] - p.corner[1]] for p in task.placements)
            centres[key].extend(image[0][p.centre] for p in task.placements)
            labelled_on_background[key] += np.sum((mask[0] == 1) & ~body)
    assert min(centres["on"]) > 0.05
    assert np.mean(np.array(centres["off"]) == 0) > 0.1, (
        "off by default: the reference places on background too"
    )
    assert labelled_on_background["on"] < labelled_on_background["off"]


def test_foreground_threshold_with_no_foreground_falls_back_to_anywhere():
    out, mask = seeded("GaussIntensityChange", foreground_threshold=0.5)(np.zeros((1, 32, 32), np.float32))
    assert mask.any() and np.isfinite(out).all()


# --- degenerate inputs and errors -------------------------------------------------------------------


@pytest.mark.parametrize("name", list(SYNTHESIS_TASKS))
@pytest.mark.parametrize(
    "image",
    [
        pytest.param(np.full((1, 32, 32), 0.6, np.float32), id="constant"),
        pytest.param(np.zeros((1, 32, 32), np.float32), id="zeros"),
        pytest.param(np.ones((1, 32, 32), np.float32), id="ones"),
        pytest.param(textured_image(32), id="32x32"),
        pytest.param(textured_image(48)[:, :, :20], id="48x20"),
        pytest.param(textured_image(8), id="8x8"),
        pytest.param(textured_image(8)[:, :1, :3], id="1x3"),
    ],
)
def test_degenerate_images_do_not_crash_or_make_nan(name, image):
    task = seeded(name, 0, support_images=[textured_image(32)]) if name == "CutPaste" else seeded(name, 0)
    for _ in range(10):
        out, mask = task(image)
        assert out.shape == mask.shape == image.shape
        assert np.isfinite(out).all() and np.isfinite(mask).all()
        assert set(np.unique(mask)) <= {0.0, 1.0}
        assert np.array_equal(out[mask == 0], image[mask == 0])
        assert 0.0 <= out.min() and out.max() <= 1.0


@pytest.mark.parametrize("name", list(SYNTHESIS_TASKS))
@pytest.mark.parametrize("shape", [(1, 16, 16, 16), (16, 16), (3, 16, 16), (1, 1, 16, 16)])
def test_wrong_dimensions_are_a_clear_error(name, shape):
    with pytest.raises(ValueError, match=r"\(1, H, W\).*" + re.escape(str(shape))):
        seeded(name)(np.zeros(shape, np.float32))


def test_integer_images_are_a_clear_error():
    with pytest.raises(ValueError, match=r"floating-point.*\[0, 1\]"):
        seeded("CutPaste")(np.zeros((1, 16, 16), np.uint8))
    with pytest.raises(ValueError, match=r"floating-point"):
        seeded("SourceDeformation")(torch.zeros((1, 16, 16), dtype=torch.int64))


def test_wrong_support_image_is_a_clear_error():
    with pytest.raises(ValueError, match=r"\(1, H, W\)"):
        RandCutPaste(support_images=[np.zeros((16, 16, 16), np.float32)])


def test_proportions_are_checked():
    with pytest.raises(ValueError, match="min_prop"):
        RandSmoothIntensityChange(min_prop=0.5, max_prop=0.2)


def test_a_registered_task_is_known_to_the_mixture_to_validation_and_to_the_token_cache(request):
    """A new task is one class and its declaration: what it needs and whether it changes the image."""
    from mediclip_monai.transforms import synthesis_task, unchanged_tasks
    from mediclip_monai.workflows.inferers import CachedTokenInferer
    from mediclip_monai.workflows.training import make_validation_set

    @synthesis_task("Blank", changes_image=False)
    class Blank(IdentityAnomaly):
        pass

    request.addfinalizer(lambda: SYNTHESIS_TASKS.pop("Blank"))
    shots = [torch.as_tensor(body_image(32, seed)) for seed in range(12)]
    mixture = RandAnomalySynthesis({"Blank": 1.0, "CutPaste": 1.0}, support_images=shots)
    assert isinstance(mixture.tasks["Blank"], Blank)
    assert "Blank" in unchanged_tasks() and "Blank" in CachedTokenInferer(cache=None).reusable_tasks
    # validation draws its anomalies from the tasks that paint one
    slices = [{"image": shot, "name": f"s{i}"} for i, shot in enumerate(shots)]
    validation = make_validation_set(slices, shots, {"Blank": 0.5, "GaussIntensityChange": 0.5}, seed=0)
    assert all(item["label"].any() for item in validation[1::2])
    with pytest.raises(ValueError, match="unknown anomaly-synthesis task.*valid names: CutPaste, .*Identity, Blank"):
        RandAnomalySynthesis({"Noise": 1.0})

"""Dictionary versions of the synthesis transforms: image and label keys, seeding, bundle configs, loaders."""

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.data import DataLoader, Dataset, MetaTensor
from monai.transforms import Compose
from monai.utils import set_determinism

import mediclip_monai.transforms as T

from .conftest import textured_image, to_numpy

DICT_TRANSFORMS = {
    "CutPaste": T.RandCutPasted,
    "GaussIntensityChange": T.RandGaussIntensityChanged,
    "SourceDeformation": T.RandSourceDeformationd,
    "SinkDeformation": T.RandSinkDeformationd,
    "SmoothIntensityChange": T.RandSmoothIntensityChanged,
    "Identity": T.IdentityAnomalyd,
}


@pytest.mark.parametrize("name", DICT_TRANSFORMS)
def test_dictionary_versions_write_image_and_label(name, to_input):
    transform = DICT_TRANSFORMS[name](keys="image", label_key="mask")
    if hasattr(transform, "set_random_state"):
        transform.set_random_state(0)
    image = textured_image()
    data = {"image": to_input(image), "name": "case_1"}
    out = transform(data)
    assert set(out) == {"image", "mask", "name"} and out["name"] == "case_1"
    assert "mask" not in data, "the input dictionary is not modified"
    assert type(out["image"]) is type(data["image"]) and type(out["mask"]) is type(data["image"])
    assert out["mask"].shape == (1, 40, 40)
    mask = to_numpy(out["mask"]).astype(bool)
    assert mask.any() == (name != "Identity")
    assert np.array_equal(to_numpy(out["image"])[~mask], image[~mask])


@pytest.mark.parametrize("name", DICT_TRANSFORMS)
def test_d_and_dict_aliases(name):
    cls = DICT_TRANSFORMS[name]
    stem = cls.__name__[:-1]
    assert getattr(T, stem + "D") is cls and getattr(T, stem + "Dict") is cls
    assert T.RandAnomalySynthesisD is T.RandAnomalySynthesisDict is T.RandAnomalySynthesisd


@pytest.mark.parametrize("name", [n for n in DICT_TRANSFORMS if n != "Identity"])
def test_dictionary_seeding_is_reproducible(name):
    image = textured_image()

    def run(seed):
        transform = DICT_TRANSFORMS[name]().set_random_state(seed)
        return [to_numpy(transform({"image": image})["label"]) for _ in range(3)]

    assert all(np.array_equal(a, b) for a, b in zip(run(1), run(1)))
    assert not all(np.array_equal(a, b) for a, b in zip(run(1), run(2)))


def test_dictionary_prob_zero_still_writes_an_empty_label():
    image = textured_image()
    out = T.RandGaussIntensityChanged(prob=0.0)({"image": image})
    assert (
        np.array_equal(out["image"], image) and out["label"].shape == image.shape and not out["label"].any()
    )


def test_dictionary_versions_want_one_image_key():
    with pytest.raises(ValueError, match="one image key"):
        T.RandAnomalySynthesisd(keys=["image", "other"])
    with pytest.raises(ValueError, match="one image key"):
        T.IdentityAnomalyd(keys=["image", "other"])


def test_missing_key_allowed_only_when_asked():
    with pytest.raises(KeyError):
        T.RandSourceDeformationd()({"other": textured_image()})
    assert T.RandSourceDeformationd(allow_missing_keys=True)({"other": 1}) == {"other": 1}


def test_mixture_keeps_metatensor_metadata_on_image_and_label():
    affine = torch.diag(torch.tensor([0.5, 0.5, 1.0, 1.0], dtype=torch.float64))
    image = MetaTensor(
        torch.from_numpy(textured_image()), affine=affine, meta={"filename_or_obj": "a.nii.gz"}
    )
    transform = T.RandAnomalySynthesisd(tasks={"SourceDeformation": 1.0}).set_random_state(0)
    out = transform({"image": image})
    for key in ("image", "label"):
        assert isinstance(out[key], MetaTensor) and torch.equal(out[key].affine, affine)
        assert out[key].meta["filename_or_obj"] == "a.nii.gz"


def test_mixture_from_a_bundle_config_with_plain_arguments():
    config = {
        "support": "$[torch.rand(1, 32, 32) for _ in range(3)]",
        "synthesis": {
            "_target_": "mediclip_monai.transforms.RandAnomalySynthesisd",
            "keys": "image",
            "label_key": "label",
            "tasks": {"CutPaste": 0.5, "SinkDeformation": 0.5},
            "support_images": "@support",
            "foreground_threshold": None,
        },
    }
    parser = ConfigParser(config)
    synthesis = parser.get_parsed_content("synthesis")
    assert isinstance(synthesis, T.RandAnomalySynthesisd)
    assert synthesis.synthesis.task_names == ["CutPaste", "SinkDeformation"]
    assert len(synthesis.synthesis.tasks["CutPaste"].support_images) == 3
    out = synthesis.set_random_state(0)({"image": torch.rand(1, 32, 32)})
    assert out["label"].shape == (1, 32, 32) and synthesis.chosen_task in ("CutPaste", "SinkDeformation")


def test_mixture_set_support_images_reaches_cutpaste():
    transform = T.RandAnomalySynthesisd(tasks={"CutPaste": 1.0})
    transform.set_support_images([np.ones((1, 40, 40), np.float32)])
    out = transform.set_random_state(0)({"image": np.zeros((1, 40, 40), np.float32)})
    assert out["label"].any() and np.all(out["image"][out["label"] == 1] == 1.0)


def _labels_per_epoch(loader, epochs=2):
    return [torch.cat([batch["label"] for batch in loader]).numpy() for _ in range(epochs)]


@pytest.mark.parametrize("num_workers", [0, 1])
def test_monai_per_worker_seeding_draws_new_anomalies_every_epoch_and_reproduces_runs(num_workers):
    images = [{"image": torch.from_numpy(textured_image(32, seed=s))} for s in range(4)]

    def run():
        set_determinism(seed=123)
        synthesis = T.RandAnomalySynthesisd(tasks={"SourceDeformation": 1, "GaussIntensityChange": 1})
        dataset = Dataset(images, transform=Compose([synthesis]))
        loader = DataLoader(dataset, batch_size=2, num_workers=num_workers)
        return _labels_per_epoch(loader)

    try:
        first_run, second_run = run(), run()
    finally:
        set_determinism(seed=None)
    epoch_1, epoch_2 = first_run
    assert not np.array_equal(epoch_1, epoch_2), "every epoch must draw new anomalies"
    assert all(np.array_equal(a, b) for a, b in zip(first_run, second_run)), (
        "a seeded run must repeat exactly"
    )

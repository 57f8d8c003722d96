"""The held-out brain set (mediclip_monai.data.heldout_brain): built once per module into a temporary folder."""

import json
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from mediclip_monai.data.datalists import check_entries, load_datalist
from mediclip_monai.data.heldout_brain import build_heldout_brain, insert_foci, insert_wedge, load_subject
from mediclip_monai.data.loading import load_training_slices, read_image


@pytest.fixture(scope="module")
def heldout(tmp_path_factory):
    return Path(build_heldout_brain(tmp_path_factory.mktemp("heldout"), seed=0))


def test_datalist_is_complete_and_every_file_loads(heldout):
    raw = json.loads(heldout.read_text())
    assert {"training", "validation", "test"} <= raw.keys()
    training, validation, test = (load_datalist(heldout, s) for s in ("training", "validation", "test"))
    assert len(training) >= 16 and len(validation) >= 8 and len(test) >= 20
    check_entries(training + validation)
    check_entries(test, keys=("image", "label"))
    assert all("label" not in e and "abnormal" not in e for e in training + validation)
    assert sum(e["abnormal"] for e in test) == len(test) // 2
    assert {e.get("lesion") for e in test if e["abnormal"]} == {"foci", "wedge"}
    # the training loader takes it as it is: 2D slices in [0, 1]
    slices = load_training_slices(training[:4], image_size=64)
    assert len(slices) == 4 and all(s["image"].shape == (1, 64, 64) for s in slices)


def test_masks_match_the_lesions(heldout):
    for entry in load_datalist(heldout, "test"):
        image, mask = read_image(entry["image"]), read_image(entry["label"])
        assert image.shape == mask.shape and image.ndim == 3
        np.testing.assert_allclose(image.affine.numpy(), mask.affine.numpy())
        assert image.affine[1, 0] < 0  # the demo's display view: one row down moves posterior
        inside = mask[0].numpy() > 0
        assert set(np.unique(mask.numpy())) <= {0.0, 1.0}
        assert bool(inside.any()) == bool(entry["abnormal"])
        if not entry["abnormal"]:
            continue
        pixels = image[0].numpy()
        if entry["lesion"] == "foci":  # bright spots: brighter than most of the slice
            assert np.median(pixels[inside]) > np.percentile(pixels[~inside], 85)
        else:  # dark homogeneous wedge: darker than the rest of the slice, and flat inside (texture lost)
            assert np.median(pixels[inside]) < np.median(pixels[~inside])
            core = ndimage.binary_erosion(inside, iterations=2)
            assert pixels[core].std() < 0.3 * pixels[~inside].std()


def test_lesion_generators_change_the_tissue_only_at_the_mask():
    rng = np.random.default_rng(3)
    tissue = 0.5 + 0.2 * rng.random((72, 56))
    for insert in (insert_foci, insert_wedge):
        out, mask = insert(tissue, np.random.default_rng(4))
        assert mask.dtype == np.uint8 and 0 < mask.mean() < 0.5
        changed = np.abs(out - tissue) > 0.05
        assert changed[mask > 0].mean() > 0.8, insert.__name__
        # soft edges reach a pixel or two past the mask, no farther
        near = ndimage.binary_dilation(mask > 0, iterations=3)
        assert not changed[~near].any(), insert.__name__


def test_build_is_deterministic_for_a_seed(heldout, tmp_path):
    again = Path(build_heldout_brain(tmp_path / "again", seed=0))
    other = Path(build_heldout_brain(tmp_path / "other", seed=1))
    name = load_datalist(heldout, "test")[1]["image"].split("/")[-1]
    first = read_image(heldout.parent / "test" / name).numpy()
    assert np.array_equal(first, read_image(again.parent / "test" / name).numpy())
    assert not np.array_equal(first, read_image(other.parent / "test" / name).numpy())


def test_source_is_a_real_subject_and_not_the_demo_template():
    volume, affine = load_subject()
    assert volume.shape == (33, 41, 25) and np.allclose(np.abs(np.diag(affine)[:3]), 2.0)
    assert 0.9 < float(np.percentile(volume, 99)) <= 1.0 + 1e-6

"""The calibration set: held-out normal slices and their copies with anomalies of kinds training never makes."""

import numpy as np
import torch

from mediclip_monai.data.unseen_anomalies import UNSEEN_FAMILIES, RandUnseenAnomaly, make_calibration_set
from mediclip_monai.transforms.synthesis import SYNTHESIS_TASKS


def brain_slices(n=3):
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:64, :64]
    disc = ((yy - 32) ** 2 + (xx - 32) ** 2 < 26**2).astype(np.float32)
    return [
        {"image": torch.as_tensor(disc * (0.6 + 0.05 * rng.standard_normal((64, 64))))[None].float(),
         "name": f"s{i}", "entry": i // 2}
        for i in range(n)
    ]  # fmt: skip


def test_each_normal_slice_comes_with_anomalous_copies_and_changes_only_inside_the_mask():
    slices = brain_slices()
    cases = make_calibration_set(slices, seed=5, copies=2)
    assert [c["copy"] for c in cases] == [0, 1, 2] * 3
    assert [c["entry"] for c in cases] == [0, 0, 0, 0, 0, 0, 1, 1, 1]
    for case in cases:
        source = slices[[s["name"] for s in slices].index(case["name"].split("_")[0])]["image"]
        mask = case["label"] > 0
        if case["copy"] == 0:
            assert case["family"] is None and not mask.any() and torch.equal(case["image"], source)
            continue
        assert case["family"] in UNSEEN_FAMILIES and mask.any()
        assert torch.equal(case["image"][~mask], source[~mask])
        assert not torch.equal(case["image"][mask], source[mask])
        assert 0 <= float(case["image"].min()) and float(case["image"].max()) <= 1
    # the same seed, the same set (the end of training and a later calibrate run see the same cases)
    again = make_calibration_set(slices, seed=5, copies=2)
    assert all(torch.equal(a["image"], b["image"]) for a, b in zip(cases, again))


def test_the_families_are_none_of_the_training_tasks():
    assert not set(UNSEEN_FAMILIES) & set(SYNTHESIS_TASKS)
    synthesis = RandUnseenAnomaly()
    synthesis.set_random_state(0)
    drawn = set()
    for _ in range(12):
        synthesis(brain_slices(1)[0]["image"].clone())
        drawn.add(synthesis.chosen_family)
    assert drawn == set(UNSEEN_FAMILIES)

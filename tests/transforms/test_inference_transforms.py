"""Pre- and postprocessing transforms of the inference and evaluation recipes."""

import logging

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from monai.data import MetaTensor
from monai.transforms import NormalizeIntensity

from mediclip_monai.data.datalists import DataError
from mediclip_monai.data.loading import volume_to_slices, volume_to_views
from mediclip_monai.decisions import BranchDecisions
from mediclip_monai.transforms import (
    MODEL_GRID_AFFINE,
    AnomalyScored,
    AnomalyTruthd,
    BinariseMaskd,
    ClipInput,
    ClipInputd,
    ModelGridd,
    SplitBranchesd,
)

MEAN, STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


def oblique(shape=(7, 9, 5)):
    affine = torch.tensor([[0.0, 0.0, -1.0, 3.0], [0.96, 0.28, 0.0, 1.0], [-0.28, 0.96, 0.0, -2.0], [0, 0, 0, 1.0]])
    return MetaTensor(torch.rand(1, *shape), affine=affine, meta={"filename_or_obj": "/data/vol.nii.gz"})


@pytest.mark.parametrize("as_numpy", [False, True])
def test_clip_input_is_three_normalised_channels(as_numpy):
    image = torch.rand(1, 6, 7)
    expected = NormalizeIntensity(subtrahend=MEAN, divisor=STD, channel_wise=True)(image.repeat(3, 1, 1))
    out = ClipInput(MEAN, STD)(image.numpy() if as_numpy else image)
    assert isinstance(out, np.ndarray) == as_numpy
    np.testing.assert_allclose(np.asarray(out), np.asarray(expected), atol=1e-6)
    batch = ClipInput(MEAN, STD)(torch.rand(4, 1, 6, 7))
    assert batch.shape == (4, 3, 6, 7)
    assert ClipInputd("image", MEAN, STD)({"image": image})["image"].shape == (3, 6, 7)
    with pytest.raises(ValueError, match="one channel"):
        ClipInput(MEAN, STD)(torch.rand(3, 6, 7))


def test_model_grid_holds_every_axial_view_resized_and_is_its_own_view():
    volume = oblique()
    label = MetaTensor((torch.rand(1, 7, 9, 5) > 0.7).float(), affine=volume.affine)
    out = ModelGridd(["image", "label"], spatial_size=(16, 16), mode=["bilinear", "nearest"])(
        {"image": volume, "label": label}
    )
    slices = volume_to_slices(volume, min_foreground=0.0)
    assert out["image"].shape == (1, 16, 16, len(slices))
    for k, view in slices:
        resized = F.interpolate(view[None].as_tensor(), size=(16, 16), mode="bilinear", align_corners=False)[0]
        torch.testing.assert_close(out["image"][..., k].as_tensor(), resized)
    assert set(torch.unique(out["label"]).tolist()) <= {0.0, 1.0}
    # the grid's own axial views are its arrays: the inferer cuts exactly these slices
    torch.testing.assert_close(out["image"].affine, MODEL_GRID_AFFINE)
    torch.testing.assert_close(volume_to_views(out["image"])[:, 0], out["image"][0].as_tensor().permute(2, 0, 1))
    picture = ModelGridd("image", spatial_size=(16, 16))({"image": MetaTensor(torch.rand(1, 30, 20))})
    assert picture["image"].shape == (1, 16, 16)


def test_binarise_mask_keeps_binary_masks_quietly(caplog):
    for mask in (torch.tensor([[[0.0, 1.0], [1.0, 0.0]]]), torch.tensor([[[0.0, 255.0], [255.0, 0.0]]])):
        with caplog.at_level(logging.WARNING):
            out = BinariseMaskd("label")({"image": torch.zeros(1, 2, 2), "label": mask})
        assert out["label"].tolist() == [[[0.0, 1.0], [1.0, 0.0]]]
    assert not caplog.records


def test_binarise_mask_says_how_it_binarises_soft_masks(caplog):
    mask = MetaTensor(torch.tensor([[[0.0, 0.3], [0.7, 1.0]]]), meta={"filename_or_obj": "/data/soft_mask.nii.gz"})
    with caplog.at_level(logging.WARNING):
        out = BinariseMaskd("label")({"image": torch.zeros(1, 2, 2), "label": mask})
    assert out["label"].tolist() == [[[0.0, 0.0], [1.0, 1.0]]]
    assert "/data/soft_mask.nii.gz" in caplog.text and ">= 0.5" in caplog.text and "2 of 3" in caplog.text


def test_binarise_mask_refuses_to_empty_a_mask_or_to_take_another_shape():
    faint = MetaTensor(torch.tensor([[[0.0, 0.2], [0.4, 0.0]]]), meta={"filename_or_obj": "/data/faint.nii.gz"})
    with pytest.raises(DataError, match=r"/data/faint\.nii\.gz: .*would empty"):
        BinariseMaskd("label")({"image": torch.zeros(1, 2, 2), "label": faint})
    with pytest.raises(DataError, match=r"faint\.nii\.gz: mask shape \(2, 2\) differs"):
        BinariseMaskd("label")({"image": torch.zeros(1, 3, 2), "label": faint})
    empty = BinariseMaskd("label")({"image": torch.zeros(1, 2, 2), "label": torch.zeros(1, 2, 2)})
    assert not empty["label"].any()


def test_anomaly_scored_gives_mask_score_slice_and_decision_on_the_axial_axis():
    volume = oblique()  # axial axis of this affine: array axis 1
    anomaly_map = MetaTensor(torch.full((1, 7, 9, 5), 0.1), affine=volume.affine)
    anomaly_map[0, 2, 6, 3] = 0.8
    out = AnomalyScored("pred", BranchDecisions("mediclip", 0.5, 0.5))({"pred": anomaly_map})
    assert out["score"] == pytest.approx(0.8) and out["max_slice"] == 6 and out["decision"] == "abnormal"
    assert out["mask"].dtype == torch.uint8 and int(out["mask"].sum()) == 1
    torch.testing.assert_close(out["mask"].affine, volume.affine)
    picture = AnomalyScored("pred", BranchDecisions("mediclip", 0.9, 0.9))({"pred": torch.full((1, 4, 4), 0.3)})
    assert picture["max_slice"] is None and picture["decision"] == "normal"


def test_anomaly_truth_fills_normal_masks_and_derives_missing_labels():
    pred = torch.rand(1, 4, 4)
    normal = AnomalyTruthd()({"pred": pred, "abnormal": torch.tensor(0), "source": "n.png"})
    assert normal["image_truth"] == 0 and not normal["label"].any() and normal["label"].shape == pred.shape
    lesion = torch.zeros(1, 4, 4)
    lesion[0, 1, 1] = 1
    from_mask = AnomalyTruthd()({"pred": pred, "label": lesion, "source": "a.png"})
    assert from_mask["image_truth"] == 1
    no_mask = AnomalyTruthd()({"pred": pred, "abnormal": 1, "source": "b.png"})
    assert no_mask["image_truth"] == 1 and no_mask["label"] is None
    with pytest.raises(DataError, match="c.png: .*neither"):
        AnomalyTruthd()({"pred": pred, "source": "c.png"})


def test_scoring_with_a_rule_and_an_image_threshold_and_branches_side_by_side():
    maps = torch.zeros(3, 4, 4)  # channels: mediclip, memory_bank, fused
    maps[0, 0, 0], maps[1] = 0.9, 0.3
    maps[2, :2] = 0.6
    split = SplitBranchesd("pred", ("mediclip", "memory_bank", "fused"), main_branch="fused")({"pred": maps})
    assert torch.equal(split["pred"], maps[2:3]) and torch.equal(split["pred_mediclip"], maps[0:1])
    rule = {"top_fraction": 0.25, "foreground_level": 0.1}
    image = torch.ones(1, 4, 4)
    decisions = BranchDecisions("mediclip", threshold=0.5, image_threshold=0.3, score_rule=rule)
    scored = AnomalyScored("pred_mediclip", decisions, prefix="mediclip_")({**split, "image": image})
    # top 4 of 16 pixels: one 0.9 and three 0: 0.225, under the image threshold though the mask is not empty
    assert scored["mediclip_score"] == pytest.approx(0.225) and int(scored["mediclip_mask"].sum()) == 1
    assert scored["mediclip_abnormal_decision"] == 0 and scored["mediclip_decision"] == "normal"
    assert scored["mediclip_threshold"] == 0.5 and scored["mediclip_image_threshold"] == 0.3
    assert "score" not in scored  # the prefix keeps branches apart
    with pytest.raises(ValueError, match="3 channels"):
        SplitBranchesd("pred", ("mediclip", "fused"), main_branch="fused")({"pred": maps})

"""MediCLIP's training loss (Focal + Dice on probabilities) against values worked out by hand."""

import math

import pytest
import torch

from mediclip_monai.losses import BinaryDiceLoss, FocalLoss, MediCLIPLoss


def two_class(anomaly):
    """B x 2 x H x W softmax-like probabilities from B x 1 x H x W anomaly probabilities."""
    return torch.cat([1 - anomaly, anomaly], dim=1)


def test_focal_loss_of_one_pixel_is_the_formula():
    probabilities = two_class(torch.full((1, 1, 1, 1), 0.8))
    smooth = 1e-5
    p_true = smooth * 0.2 + (1 - smooth) * 0.8 + smooth  # smoothed one-hot of class 1, then the floor
    expected = -((1 - p_true) ** 2) * math.log(p_true)
    target = torch.ones(1, 1, 1, 1)
    assert FocalLoss()(probabilities, target).item() == pytest.approx(expected, rel=1e-6)
    assert FocalLoss(gamma=0)(probabilities, target).item() == pytest.approx(-math.log(p_true), rel=1e-6)


def test_focal_loss_falls_as_the_true_class_gains_and_tends_to_zero():
    target = torch.ones(1, 1, 2, 2)
    losses = [FocalLoss()(two_class(torch.full((1, 1, 2, 2), p)), target).item() for p in (0.3, 0.6, 0.9, 1.0)]
    assert losses == sorted(losses, reverse=True) and losses[-1] < 1e-9


def test_dice_loss_counts_overlap_with_its_smoothing():
    truth = torch.zeros(1, 1, 4, 4)
    truth[..., :2, :] = 1  # 8 pixels
    assert BinaryDiceLoss()(truth.clone(), truth).item() == pytest.approx(0.0, abs=1e-7)
    disjoint = 1 - truth  # the other 8 pixels
    assert BinaryDiceLoss()(disjoint, truth).item() == pytest.approx(1 - 1 / 17)
    empty = torch.zeros(1, 1, 4, 4)
    assert BinaryDiceLoss()(empty, empty).item() == pytest.approx(0.0)  # smooth 1: an empty mask matched
    # per sample, then the batch mean
    batch = BinaryDiceLoss()(torch.cat([truth, disjoint]), torch.cat([truth, truth])).item()
    assert batch == pytest.approx((0 + (1 - 1 / 17)) / 2)


def test_mediclip_loss_weights_its_terms_and_binarises_the_target():
    torch.manual_seed(0)
    anomaly = torch.rand(2, 1, 8, 8, requires_grad=True)
    soft_target = torch.rand(2, 1, 8, 8)
    binary = (soft_target > 0.5).float()
    probabilities = two_class(anomaly)
    focal, dice = FocalLoss()(probabilities, binary), BinaryDiceLoss()(anomaly, binary)
    loss = MediCLIPLoss(focal_weight=2.0, dice_weight=0.5)(probabilities, soft_target)
    torch.testing.assert_close(loss, 2.0 * focal + 0.5 * dice)
    torch.testing.assert_close(MediCLIPLoss()(probabilities, soft_target), focal + dice)
    loss.backward()
    assert anomaly.grad is not None and anomaly.grad.abs().sum() > 0

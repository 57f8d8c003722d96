"""MediCLIP's training loss: focal loss on the 2-class softmax map plus binary Dice on the anomaly channel.

MediCLIP (MICCAI 2024, arXiv 2405.11315) trains on synthetic anomaly masks with Focal (gamma 2) + Dice
(smooth 1), weighted 1:1. Both terms take the network's *probabilities* (it ends in a softmax), as the
reference code does.
"""

from __future__ import annotations

import torch
from torch import nn


class FocalLoss(nn.Module):
    """Focal loss on class probabilities.

    Args:
        gamma: focusing exponent (2 in MediCLIP).
        smooth: label smoothing of the one-hot target and floor of the true-class probability, so
            log() never sees 0.

    Input B x C x H x W probabilities (summing to 1 over C), target B x 1 x H x W class indices.
    """

    def __init__(self, gamma: float = 2.0, smooth: float = 1e-5) -> None:
        super().__init__()
        self.gamma = gamma
        self.smooth = smooth

    def forward(self, probabilities: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        n_classes = probabilities.shape[1]
        one_hot = torch.zeros_like(probabilities).scatter_(1, target.long(), 1.0)
        one_hot = one_hot.clamp(self.smooth / (n_classes - 1), 1.0 - self.smooth)
        p_true = (one_hot * probabilities).sum(dim=1) + self.smooth
        return (-((1.0 - p_true) ** self.gamma) * p_true.log()).mean()


class BinaryDiceLoss(nn.Module):
    """Soft Dice loss per sample, averaged over the batch.

    Args:
        smooth: added to numerator and denominator (1 in MediCLIP), so empty masks give a finite loss.

    Input B x 1 x H x W anomaly probabilities, target B x 1 x H x W binary masks.
    """

    def __init__(self, smooth: float = 1.0) -> None:
        super().__init__()
        self.smooth = smooth

    def forward(self, probabilities: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        pred = probabilities.flatten(1)
        truth = target.flatten(1).to(pred.dtype)
        dice = (2 * (pred * truth).sum(1) + self.smooth) / (pred.sum(1) + truth.sum(1) + self.smooth)
        return 1.0 - dice.mean()


class MediCLIPLoss(nn.Module):
    """Focal + Dice, the MediCLIP training objective.

    Args:
        focal_weight, dice_weight: weights of the two terms (1 and 1 in MediCLIP).

    Input: the network's B x 2 x H x W softmax map; target: B x 1 x H x W binary anomaly mask.
    """

    def __init__(self, focal_weight: float = 1.0, dice_weight: float = 1.0) -> None:
        super().__init__()
        self.focal = FocalLoss()
        self.dice = BinaryDiceLoss()
        self.focal_weight = focal_weight
        self.dice_weight = dice_weight

    def forward(self, probabilities: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        target = (target > 0.5).to(probabilities.dtype)
        focal = self.focal(probabilities, target)
        dice = self.dice(probabilities[:, 1:2], target)
        return self.focal_weight * focal + self.dice_weight * dice

"""A network stub with known maps, for checks that must not go through the code under test."""

import torch
from torch import nn

from mediclip_monai.networks import InputContract

CONTRACT = InputContract(
    mean=(0.48145466, 0.4578275, 0.40821073), std=(0.26862954, 0.26130258, 0.27577711), image_size=(32, 32)
)


class IntensityMapNetwork(nn.Module):
    """B x 3 x S x S CLIP-normalised images -> B x 2 x S x S maps whose anomaly channel is the image itself.

    The anomaly probability of a pixel is its intensity in [0, 1] before normalisation, so a test knows
    every map from its input files alone.
    """

    def __init__(self, contract: InputContract = CONTRACT):
        super().__init__()
        self.input_contract = contract
        self.calls = 0

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        assert images.shape[1:] == (3, *self.input_contract.image_size), images.shape
        self.calls += 1
        anomaly = (images[:, :1] * self.input_contract.std[0] + self.input_contract.mean[0]).clamp(0, 1)
        return torch.cat([1 - anomaly, anomaly], dim=1)

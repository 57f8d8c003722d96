"""The network's input contract: the image size, mean and std its CLIP image tower was trained with.

They come from the backbone itself (open_clip's ``model.visual.preprocess_cfg``), so training, inference,
evaluation and the benchmarks all feed the network what it expects, whatever the backbone. Read them with
``input_contract(network)`` and apply them with ``transforms.ClipInput`` / ``ClipInputd``.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

__all__ = ["InputContract", "input_contract"]


@dataclass(frozen=True)
class InputContract:
    """What the network's image input must be: ``image_size`` (rows, columns) pixels, 3 channels,
    normalised per channel as ``(x - mean) / std`` from intensities in [0, 1]."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    image_size: tuple[int, int]


def input_contract(network: nn.Module) -> InputContract:
    """The input contract of a MediCLIP network (or of a wrapper such as DistributedDataParallel).

    A network that declares ``input_contract`` itself is taken at its word; otherwise the contract is
    read from its open_clip backbone's ``visual.preprocess_cfg``.
    """
    network = getattr(network, "module", network)  # DistributedDataParallel keeps the network in .module
    declared = getattr(network, "input_contract", None)
    if declared is not None:
        return InputContract(tuple(declared.mean), tuple(declared.std), tuple(declared.image_size))
    config = network.backbone.clip.visual.preprocess_cfg
    size = config["size"]
    size = (size, size) if isinstance(size, int) else tuple(size)
    return InputContract(tuple(config["mean"]), tuple(config["std"]), (int(size[0]), int(size[1])))

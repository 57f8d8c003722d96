"""Small test images for the anomaly-synthesis tests: textured everywhere, or a body on empty background."""

import numpy as np
import pytest
import torch
from scipy import ndimage


def textured_image(size=40, seed=0) -> np.ndarray:
    """(1, size, size) float32 smooth texture in [0.1, 0.9]: every paste or deformation changes pixels."""
    rng = np.random.RandomState(seed)
    texture = ndimage.gaussian_filter(rng.rand(size, size), 1.5)
    texture = (texture - texture.min()) / (texture.max() - texture.min())
    return (0.1 + 0.8 * texture)[None].astype(np.float32)


def body_image(size=48, seed=0) -> np.ndarray:
    """(1, size, size) float32: a textured disc (the body) on a zero background."""
    image = textured_image(size, seed)
    rows, cols = np.mgrid[:size, :size] - (size - 1) / 2
    image[0][np.hypot(rows, cols) > 0.3 * size] = 0.0
    return image


def to_numpy(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


@pytest.fixture(params=["numpy", "torch"])
def to_input(request):
    """Converts a numpy test image to the input type under test (numpy array or torch tensor)."""
    if request.param == "numpy":
        return lambda a: np.array(a)
    return lambda a: torch.from_numpy(np.array(a))

"""Shape makers for anomaly synthesis (mediclip_monai.transforms.shapes)."""

import numpy as np
import pytest

from mediclip_monai.transforms import deformed_hypershape, perlin_blob, perlin_noise
from mediclip_monai.transforms.shapes import _inside, _random_gradients


def perlin_noise_2d(shape, res, rng):
    """A ``shape`` grid of the noise with ``res`` lattice cells along each axis, as the blobs draw it."""
    x = np.arange(shape[0], dtype=np.float64)[:, None] * (res[0] / shape[0])
    y = np.arange(shape[1], dtype=np.float64)[None, :] * (res[1] / shape[1])
    return perlin_noise(*np.broadcast_arrays(x, y), _random_gradients(res, rng))


def test_perlin_noise_is_zero_on_the_lattice_smooth_and_bounded():
    noise = perlin_noise_2d((64, 64), (4, 4), np.random.RandomState(0))
    assert noise.shape == (64, 64)
    np.testing.assert_allclose(noise[::16, ::16], 0.0, atol=1e-12)
    assert np.abs(noise).max() <= 1.0 + 1e-9 and noise.std() > 0.05
    # Smooth: neighbouring pixels differ by a small fraction of the range.
    assert np.abs(np.diff(noise, axis=0)).max() < 0.2 and np.abs(np.diff(noise, axis=1)).max() < 0.2


def test_perlin_noise_is_seeded():
    a = perlin_noise_2d((16, 16), (2, 2), np.random.RandomState(3))
    b = perlin_noise_2d((16, 16), (2, 2), np.random.RandomState(3))
    c = perlin_noise_2d((16, 16), (2, 2), np.random.RandomState(4))
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_perlin_blob_box_coverage_and_single_component():
    from scipy import ndimage

    rng = np.random.RandomState(0)
    components = []
    for _ in range(100):
        blob = perlin_blob([(10, 30), (12, 20)], rng)
        assert 10 <= blob.shape[0] < 30 and 12 <= blob.shape[1] < 20
        assert blob.dtype == bool and blob.mean() >= 0.2
        components.append(ndimage.label(blob)[1])
    assert np.mean(np.array(components) == 1) > 0.9, "single-cell Perlin noise gives one smooth blob"


def test_perlin_blob_on_a_tiny_box_terminates_with_a_nonempty_mask():
    blob = perlin_blob([(1, 1), (1, 2)], np.random.RandomState(0))
    assert blob.shape == (1, 1) and blob.all()


def test_hypershape_sides_box_and_centre():
    rng = np.random.RandomState(0)
    kinds = set()
    for _ in range(200):
        shape = deformed_hypershape([(10, 40), (10, 40)], (64, 64), rng)
        kinds.add(shape.kind)
        assert np.all((10 <= shape.sides) & (shape.sides <= 40))
        assert max(shape.mask.shape) <= 40
        assert shape.mask[tuple(shape.origin.astype(int))], "the shape's centre is inside it"
        # Tight box: every border row and column touches the shape.
        m = shape.mask
        assert m[0].any() and m[-1].any() and m[:, 0].any() and m[:, -1].any()
    assert kinds == {"rectangle", "ellipse"}


@pytest.mark.parametrize("seed", range(6))
def test_hypershape_distance_to_edge_lands_on_the_edge(seed):
    rng = np.random.RandomState(seed)
    shape = deformed_hypershape([(20, 50), (20, 50)], (100, 100), rng)
    inside = np.argwhere(shape.mask).T.astype(float)
    centre = inside[:, rng.randint(inside.shape[1])][:, None]
    angles = np.linspace(0, 2 * np.pi, 64, endpoint=False)
    directions = np.stack([np.cos(angles), np.sin(angles)])
    distance = shape.distance_to_edge(centre, directions)
    inverse = np.linalg.inv(shape.matrix)

    def within(points):
        return _inside(shape.kind, inverse @ (points - shape.origin[:, None]), shape.sides)

    assert np.all(np.isfinite(distance)) and np.all(distance >= 0)
    assert np.all(within(centre + (distance - 1e-6) * directions))
    assert not np.any(within(centre + (distance + 1e-3) * directions))


def test_axis_aligned_rectangle_distance_is_exact():
    from mediclip_monai.transforms import Hypershape

    square = Hypershape(
        mask=np.ones((11, 11), bool),
        kind="rectangle",
        sides=np.array([10.0, 10.0]),
        matrix=np.eye(2),
        origin=np.array([5.0, 5.0]),
    )
    directions = np.array([[1.0, 0.0, -1.0, 0.0], [0.0, 1.0, 0.0, -1.0]])
    np.testing.assert_allclose(square.distance_to_edge(np.array([[5.0], [7.0]]), directions), [5, 3, 5, 7])

"""SliceWiseInferer: a MONAI Inferer that maps each case on its own grid, slice by slice."""

import torch
import torch.nn.functional as F
from monai.data import MetaTensor, list_data_collate
from monai.inferers import Inferer

from mediclip_monai.data.loading import volume_to_slices
from mediclip_monai.workflows.inferers import SliceWiseInferer

from ..stubs import IntensityMapNetwork


def volume(shape, affine):
    return MetaTensor(torch.rand(1, *shape), affine=torch.as_tensor(affine, dtype=torch.float64))


def test_inferer_is_a_monai_inferer_and_keeps_each_case_on_its_own_grid():
    network = IntensityMapNetwork()
    inferer = SliceWiseInferer(batch_size=3)
    assert isinstance(inferer, Inferer)
    oblique = [[0.0, 0.0, -1.0, 3.0], [0.96, 0.28, 0.0, 1.0], [-0.28, 0.96, 0.0, -2.0], [0, 0, 0, 1.0]]
    cases = [volume((20, 24, 7), oblique), volume((20, 24, 7), torch.eye(4))]
    batch = list_data_collate([{"image": c} for c in cases])["image"]
    maps = inferer(batch, network)
    assert maps.shape == batch.shape and maps.dtype == torch.float32
    assert network.calls == 8 + 3  # 24 axial slices (oblique: axis 1) and 7 (axis 2), 3 per forward
    for b, case in enumerate(cases):
        torch.testing.assert_close(maps.affine[b], case.affine)
        # the stub's map is the input resized to 32 x 32 and back, slice by slice in the display view
        for k, view in volume_to_slices(case, min_foreground=0.0):
            small = F.interpolate(view[None].as_tensor(), size=(32, 32), mode="bilinear", align_corners=False)
            back = F.interpolate(small, size=view.shape[-2:], mode="bilinear", align_corners=False)[0]
            got = volume_to_slices(MetaTensor(maps[b].as_tensor(), affine=case.affine), min_foreground=0.0)[k][1]
            torch.testing.assert_close(got.as_tensor(), back.clamp(0, 1), atol=1e-5, rtol=0)


def test_a_case_already_at_the_network_size_is_not_resized():
    image = MetaTensor(torch.rand(2, 1, 32, 32))
    maps = SliceWiseInferer()(image, IntensityMapNetwork())
    torch.testing.assert_close(maps.as_tensor(), image.as_tensor(), atol=1e-6, rtol=0)

"""SliceWiseInferer: a MONAI Inferer that maps each case on its own grid, slice by slice."""

import pytest
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


def test_the_image_level_score_comes_from_the_pass_that_makes_the_maps():
    from monai.data import decollate_batch

    from mediclip_monai.decisions import Decisions, run_decisions
    from mediclip_monai.decisions.image_level import (
        SIGNALS,
        SLICE_FOREGROUND_KEY,
        SLICE_SCORES_KEY,
        fit_image_level,
        slice_probabilities,
        slice_signals,
    )
    from mediclip_monai.networks import MediCLIP
    from mediclip_monai.transforms import AnomalyScored

    from ..networks.test_branches import calibrate_on_random_cases

    torch.manual_seed(0)
    network = calibrate_on_random_cases(MediCLIP("mediclip-tiny", "none").eval())
    shots = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        tokens = network.image_tokens(shots)
    network.shot_embeddings.build(tokens.class_tokens, tokens.embedding)
    rng = torch.Generator().manual_seed(4)
    signals = {name: torch.randn(20, generator=rng).numpy() for name in SIGNALS}
    copies = [0] * 10 + [1] * 10
    rule = fit_image_level(signals, copies, list(range(10)) * 2, [1.0] * 20, "memory_bank")
    network.decisions = Decisions({**network.decisions.calibration, "image_level": rule})
    network.anomaly_branch = "mediclip"

    case = volume((40, 36, 3), torch.eye(4))
    batch = list_data_collate([{"image": case}])["image"]
    maps = SliceWiseInferer(batch_size=2)(batch, network)
    # the maps are those of a run without the image-level score, bit for bit
    assert torch.equal(maps.as_tensor(), SliceWiseInferer(batch_size=2, image_level=False)(batch, network).as_tensor())
    assert maps.meta[SLICE_SCORES_KEY].shape == maps.meta[SLICE_FOREGROUND_KEY].shape == (1, 3)
    # each slice's probability is the rule on its signals, with the map of the rule's branch
    views = F.interpolate(case.as_tensor().permute(3, 0, 1, 2), size=(224, 224), mode="bilinear")
    contract = network.input_contract
    inputs = (views.expand(-1, 3, -1, -1) - torch.tensor(contract.mean)[:, None, None]) / torch.tensor(
        contract.std
    )[:, None, None]
    with torch.no_grad():
        tokens = network.image_tokens(inputs)
        bank_map = network.anomaly_maps_from_tokens(tokens.patch_tokens, (224, 224), ("memory_bank",))["memory_bank"]
    expected = slice_probabilities(slice_signals(network, tokens, views, bank_map), rule)
    torch.testing.assert_close(maps.meta[SLICE_SCORES_KEY][0], torch.from_numpy(expected), atol=1e-4, rtol=0)
    # the case, once decollated, is scored by the run's decisions from those probabilities
    item = decollate_batch({"pred": maps, "image": batch})[0]
    scored = AnomalyScored("pred", run_decisions(network))(item)
    assert scored["image_threshold"] == rule["threshold"]
    assert scored["score"] == pytest.approx(float(maps.meta[SLICE_SCORES_KEY][0].max()))
    assert scored["max_slice"] == int(maps.meta[SLICE_SCORES_KEY][0].argmax())

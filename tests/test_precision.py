"""Mixed precision and the boolean keys: what `amp` resolves to, and strict parsing of true/false."""

import pytest
import torch

from mediclip_monai.errors import ConfigValueError
from mediclip_monai.networks import MediCLIP
from mediclip_monai.precision import AMP_MIN_BATCH, Precision, resolve_precision
from mediclip_monai.settings import flag


@pytest.mark.parametrize("value", [True, 1, "true", "True", "TRUE", "yes", "on", "1", " Yes "])
def test_true_in_any_spelling(value):
    assert flag(value, "resume") is True


@pytest.mark.parametrize("value", [False, 0, "false", "False", "no", "off", "0", "NO"])
def test_false_in_any_spelling(value):
    assert flag(value, "resume") is False


@pytest.mark.parametrize("value", ["maybe", "", 2, 0.5, "null", None, [True]])
def test_anything_else_is_refused_naming_the_key(value):
    with pytest.raises(ConfigValueError, match=r"^--overwrite .*: must be true or false"):
        flag(value, "overwrite")


def test_null_means_decide_where_allowed():
    assert flag(None, "amp", allow_null=True) is None
    assert flag("null", "amp", allow_null=True) is None
    with pytest.raises(ConfigValueError, match="--amp 'maybe'"):
        flag("maybe", "amp", allow_null=True)


def test_amp_null_is_on_for_cuda_and_off_on_the_cpu():
    assert resolve_precision(None, "cpu").dtype is None
    assert resolve_precision("false", "cuda").dtype is None
    cuda = resolve_precision(None, "cuda:1")
    assert cuda.device_type == "cuda" and cuda.dtype in (torch.bfloat16, torch.float16)
    assert cuda.grad_scaler == (cuda.dtype == torch.float16)  # bfloat16 needs no GradScaler


def test_amp_true_on_the_cpu_is_bfloat16_autocast():
    precision = resolve_precision("True", "cpu")
    assert precision == Precision("cpu", torch.bfloat16) and not precision.grad_scaler
    with precision.autocast():
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16 and torch.is_autocast_enabled("cpu")
    with precision.autocast(batch_size=AMP_MIN_BATCH - 1):
        assert not torch.is_autocast_enabled("cpu")  # small inference batches stay float32


def test_heads_take_tokens_computed_in_mixed_precision_outside_autocast(tiny_kwargs):
    """The token cache and calibration hand bfloat16 tokens to float32 adapters (the GPU failure at the end of
    training: 'Input type (c10::Half) and bias type (float) should be the same')."""
    network = MediCLIP(**tiny_kwargs).eval()
    images = torch.randn(2, 3, 224, 224)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        tokens = network.patch_tokens(images)
    assert tokens[0].dtype == torch.bfloat16
    with torch.no_grad():
        probabilities = network.probabilities_from_tokens(tokens, (224, 224))
        reference = network(images)
    assert probabilities.dtype == torch.float32
    assert torch.allclose(probabilities, reference, atol=0.02)


def test_network_outputs_are_float32_under_autocast(tiny_kwargs):
    network = MediCLIP(**tiny_kwargs).eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert network(torch.randn(4, 3, 224, 224)).dtype == torch.float32

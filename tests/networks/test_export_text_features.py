"""Text features under tracing and torch.export: a constant of the graph once computed in eval mode, and
never stale (a load in between, or weights that changed since, give the new weights' features)."""

import pytest
import torch

from mediclip_monai.networks import MediCLIP


@pytest.fixture
def network():
    torch.manual_seed(0)
    return MediCLIP("mediclip-tiny", "none").eval()


def other_weights(network):
    state = network.state_dict()
    return {k: (v + 0.5 * torch.randn_like(v)) if k == "prompts.context" else v for k, v in state.items()}


def images(batch=2):
    return torch.randn(batch, 3, 224, 224, generator=torch.Generator().manual_seed(1))


def test_eval_mode_computes_the_text_features_before_any_forward(network):
    cached = network.prompts._cache
    assert cached is not None
    with torch.no_grad():
        assert network.text_features() is cached[1]


def test_trace_holds_the_text_features_as_a_constant(network):
    with torch.no_grad():
        traced = torch.jit.trace(network, images(1))  # check_trace re-traces: graphs must be equal
        expected = network(images())
        torch.testing.assert_close(traced(images()), expected, rtol=0, atol=1e-6)
        traced.prompts.context.add_(1.0)  # not part of the graph
        torch.testing.assert_close(traced(images()), expected, rtol=0, atol=1e-6)


def test_trace_after_a_load_without_eval_uses_the_loaded_weights(network):
    with torch.no_grad():
        before = network(images())
    network.load_state_dict(other_weights(network))
    with torch.no_grad():
        traced = torch.jit.trace(network, images(1))
        network.eval()  # the eager reference computes the loaded weights' features
        loaded = network(images())
        torch.testing.assert_close(traced(images()), loaded, rtol=0, atol=1e-6)
    assert not torch.allclose(loaded, before)  # the features did change with the load


def test_export_holds_the_text_features_as_a_constant(network):
    with torch.no_grad():
        program = torch.export.export(network, (images(),))
        text = network.text_features()
    assert any(torch.equal(c, text) for c in program.constants.values())
    inputs = {spec.arg.name: spec.target for spec in program.graph_signature.input_specs}
    used = {inputs.get(node.name) for node in program.graph.nodes if node.op == "placeholder" and node.users}
    assert "prompts.context" not in used and not [t for t in used if t and "token_embedding" in t]
    with torch.no_grad():
        torch.testing.assert_close(program.module()(images()), network(images()), rtol=0, atol=1e-6)


def test_export_after_a_load_without_eval_uses_the_loaded_weights(network):
    with torch.no_grad():
        before = network(images())
    network.load_state_dict(other_weights(network))  # still in eval mode, no eager forward since
    with torch.no_grad():
        program = torch.export.export(network, (images(),))
        got = program.module()(images())
        network.eval()
        expected = network(images())
    assert (expected - before).abs().max() > 1e-4
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)

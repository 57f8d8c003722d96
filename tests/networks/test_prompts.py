"""The prompt encoder's exact savings in the text tower give what the whole text transformer gives."""

import pytest
import torch
import torch.nn.functional as F

from mediclip_monai.networks import MediCLIP


def whole_transformer_features(prompts, text):
    """The prompts' text features through every row of every block of the text tower (open_clip's own forward)."""
    embeddings = text.token_embedding(prompts.tokens)
    n = prompts.context.shape[1]
    x = torch.cat([embeddings[:, :1], prompts.context, embeddings[:, 1 + n :]], dim=1) + text.positional_embedding
    x = text.transformer(x, attn_mask=text.attn_mask if prompts.causal_text_mask else None)
    x = text.ln_final(x)[torch.arange(x.shape[0]), prompts.tokens.argmax(dim=-1)] @ text.text_projection
    pooled = torch.stack([x[: prompts.n_normal].mean(0), x[prompts.n_normal :].mean(0)], dim=1)
    return F.normalize(pooled, dim=0)


@pytest.mark.parametrize("causal", [False, True])
def test_end_of_text_savings_match_the_whole_text_transformer(causal):
    torch.manual_seed(0)
    network = MediCLIP("mediclip-tiny", "none", causal_text_mask=causal)
    prompts, text = network.prompts, network.backbone.text
    last_block = text.transformer.resblocks[-1]
    mlp_rows = []
    hook = last_block.mlp.register_forward_hook(lambda module, args, out: mlp_rows.append(args[0].shape[1]))
    weights = torch.randn(64, 2)
    results = []
    for encode in (lambda prompts: whole_transformer_features(prompts, text), type(prompts)._encode):
        prompts.context.grad = None
        features = encode(prompts)
        (features * weights).sum().backward()
        results.append((features.detach(), prompts.context.grad.clone()))
    hook.remove()
    (features, grad), (saved_features, saved_grad) = results
    torch.testing.assert_close(saved_features, features, rtol=0, atol=1e-6)
    assert (saved_grad - grad).norm() <= 1e-5 * grad.norm()
    # The whole forward ran the last MLP on all 77 positions; the saving path on the end-of-text row alone.
    assert mlp_rows == [77, 1]

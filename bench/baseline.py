"""The step as it was before the text tower's savings, for the benchmarks' ``--baseline`` figures."""

import torch


def whole_text_transformer(transformer, x, eot, causal_mask, causal):
    """Stands in for ``clip_backbone._encode_end_of_text``: every row of every block, open_clip's own forward."""
    out = transformer(x, attn_mask=causal_mask if causal else None)
    return out[torch.arange(out.shape[0]), eot]

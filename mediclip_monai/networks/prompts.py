"""Learnable state prompts of MediCLIP (CoOp-style, class-specific context), encoded by the frozen CLIP
text tower into one normal and one abnormal text embedding.

MediCLIP (MICCAI 2024, arXiv 2405.11315): each state phrase becomes "X X X X X X X X {phrase}." and the
8 placeholder token embeddings are replaced by 8 learnable context vectors of its own. The prompts do
not depend on the image, so their embeddings are computed once per set of weights (see
:meth:`PromptLearner.text_features`).
"""

from __future__ import annotations

import open_clip
import torch
import torch.nn.functional as F
from open_clip.transformer import ResidualAttentionBlock
from torch import nn

from ..quiet_logs import quiet_open_clip

NORMAL_PHRASES = (
    "normal",
    "healthy",
    "negative",
    "unremarkable",
    "clear",
    "asymptomatic",
    "normal findings",
    "no findings",
    "in good health",
    "no evidence of disease",
)
ABNORMAL_PHRASES = (
    "abnormal",
    "positive",
    "symptomatic",
    "disease",
    "lesion",
    "pathological",
    "impaired",
    "evidence of disease",
    "abnormal finding",
    "pathological condition",
    "pathological abnormality",
)
N_CONTEXT = 8


def _text_tower(clip: nn.Module) -> nn.Module:
    """The module holding token_embedding, transformer, ln_final...: CLIP itself or its ``text`` tower."""
    return clip.text if hasattr(clip, "text") and hasattr(clip.text, "token_embedding") else clip


class PromptLearner(nn.Module):
    """Per-phrase learnable context vectors and their encoding through a frozen CLIP text tower.

    Args:
        clip: the frozen open_clip model (its text tower is used, never trained).
        tokenizer: open_clip tokenizer of that model.
        causal_text_mask: False (default, as the reference code) runs the text transformer without its
            causal attention mask, so the end-of-text token also sees the padding; True uses CLIP's mask.
        n_context: learnable context tokens per phrase (8 in MediCLIP).
    """

    def __init__(self, clip: nn.Module, tokenizer, causal_text_mask: bool = False, n_context: int = N_CONTEXT):
        super().__init__()
        # Kept out of the module tree: the text tower belongs to the backbone and is not saved here.
        self.__dict__["_text"] = _text_tower(clip)
        self.causal_text_mask = causal_text_mask
        self.n_normal = len(NORMAL_PHRASES)
        phrases = NORMAL_PHRASES + ABNORMAL_PHRASES
        placeholder = " ".join(["X"] * n_context)
        tokens = tokenizer([f"{placeholder} {phrase}." for phrase in phrases])
        self.register_buffer("tokens", tokens, persistent=False)
        width = self._text.token_embedding.weight.shape[1]
        self.context = nn.Parameter(torch.empty(len(phrases), n_context, width).normal_(std=0.02))
        self._cache: tuple | None = None
        self._next_step: tuple | None = None  # (key, embeddings with their graph), see prepare_next_step
        # A load changes the weights in place: under torch.export that could not be seen (no version check).
        self.register_load_state_dict_post_hook(_forget_text_features)

    def _encode(self) -> torch.Tensor:
        text = self._text
        embeddings = text.token_embedding(self.tokens).to(self.context.dtype)
        # Position 0 is the start-of-text token; positions 1..n_context held the "X" placeholders.
        n_ctx = self.context.shape[1]
        x = torch.cat([embeddings[:, :1], self.context, embeddings[:, 1 + n_ctx :]], dim=1)
        x = x + text.positional_embedding.to(x.dtype)
        # Pool at the end-of-text token: it has the largest id in CLIP's vocabulary.
        eot = self.tokens.argmax(dim=-1)
        x = text.ln_final(_encode_end_of_text(text.transformer, x, eot, text.attn_mask, self.causal_text_mask))
        projection = text.text_projection
        x = projection(x) if isinstance(projection, nn.Module) else x @ projection
        normal = x[: self.n_normal].mean(dim=0)
        abnormal = x[self.n_normal :].mean(dim=0)
        return F.normalize(torch.stack([normal, abnormal], dim=1), dim=0)

    def _text_parameters(self) -> list[nn.Parameter]:
        text = self._text
        modules = (text.token_embedding, text.transformer, text.ln_final)
        params = [p for m in modules for p in m.parameters()] + [text.positional_embedding]
        projection = text.text_projection
        return params + (list(projection.parameters()) if isinstance(projection, nn.Module) else [projection])

    def text_features(self) -> torch.Tensor:
        """text_dim x 2 matrix of L2-normalised class embeddings (column 0 normal, column 1 abnormal).

        Recomputed while gradients are needed; otherwise cached until the contexts or the text weights
        change (an optimizer step or a load bumps a parameter's version counter). Entering eval mode
        computes them (see :meth:`train`), so a traced or exported network holds them as a constant.
        """
        if torch.is_grad_enabled() and self.context.requires_grad:
            self._cache = None
            prepared, self._next_step = self._next_step, None  # usable once: a backward frees its graph
            if prepared is not None and prepared[0] == self._key():
                return prepared[1]
            return self._encode()
        if torch.compiler.is_exporting():
            # torch.export runs on fake tensors, which have no data pointer to check the cache with: the
            # embeddings of eval() become a constant of the graph (a load in between clears them).
            return self._cache[1] if self._cache is not None else self._encode()
        key = self._key()
        if self._cache is None or self._cache[0] != key:
            if torch.jit.is_tracing():  # stale in a trace: computed in its graph, not cached (a re-trace would
                return self._encode()  # see a constant instead and fail the trace's check)
            with torch.no_grad():
                self._cache = (key, self._encode())
        return self._cache[1]

    def _key(self) -> tuple:
        # Versions of the frozen text weights too: loading other CLIP weights in place must not reuse
        # embeddings of the old ones.
        return (
            self.context.data_ptr(),
            self.context._version,
            self.causal_text_mask,
            tuple(p._version for p in self._text_parameters()),
        )

    def prepare_next_step(self) -> None:
        """Compute now, with their autograd graph, the embeddings the next training step will need.

        Training calls this after the last step of an epoch (`mediclip_monai.handlers.NextStepTextFeatures`):
        the validation round in between reads the same embeddings (cached, no gradient) instead of running
        the text tower itself, and the next step, if the contexts have not changed, takes them with their
        graph instead of a forward of its own. Exact: the same forward, done once instead of twice.
        """
        key = self._key()
        with torch.enable_grad():
            features = self._encode()
        self._next_step, self._cache = (key, features), (key, features.detach())

    def train(self, mode: bool = True) -> PromptLearner:
        """Eval mode fixes the embeddings: computed now, eagerly, so exporters (which call ``eval()``
        first: MONAI's ``ckpt_export``/``onnx_export``) find them cached and bake them in."""
        super().train(mode)
        if not mode:
            with torch.no_grad():
                self.text_features()
        return self


def _encode_end_of_text(
    transformer: nn.Module, x: torch.Tensor, eot: torch.Tensor, causal_mask: torch.Tensor | None, causal: bool
) -> torch.Tensor:
    """P x width output of ``transformer`` at the end-of-text rows ``eot`` of the P x L x width input ``x``.

    Equal to running the whole transformer and taking those rows, with exact savings. The last block's
    attention queries and MLP only matter at the end-of-text row (its keys and values still come from every
    position). With the causal mask, no position attends to a later one, so the sequence is cut after the
    last end-of-text token. The attention runs on the batch-first layout as one matrix product per
    projection (`_self_attention`), without the transposes of ``nn.MultiheadAttention``'s general path.
    Other transformers (not batch-first, other block types) run whole.
    """
    mask = causal_mask if causal else None
    if causal:
        length = int(eot.max()) + 1
        x = x[:, :length]
        mask = None if mask is None else mask[:length, :length]
    blocks = list(transformer.resblocks)
    plain = getattr(transformer, "batch_first", False) and all(_is_plain(block) for block in blocks)
    if getattr(transformer, "grad_checkpointing", False) or not plain:
        out = transformer(x, attn_mask=mask)
        return out[torch.arange(out.shape[0], device=out.device), eot]
    for block in blocks[:-1]:
        x = x + block.ls_1(_self_attention(block.attn, block.ln_1(x), mask))
        x = x + block.ls_2(block.mlp(block.ln_2(x)))
    last = blocks[-1]
    rows = torch.arange(x.shape[0], device=x.device)
    keys = last.ln_1(x)
    row_mask = None if mask is None else mask[eot][:, None, None, :]  # P x 1 (heads) x 1 (query) x L
    y = x[rows, eot].unsqueeze(1) + last.ls_1(_self_attention(last.attn, keys, row_mask, keys[rows, eot].unsqueeze(1)))
    y = y + last.ls_2(last.mlp(last.ln_2(y)))
    return y[:, 0]


def _is_plain(block: nn.Module) -> bool:
    """An open_clip self-attention block whose attention `_self_attention` can compute."""
    attention = getattr(block, "attn", None)
    return (
        isinstance(block, ResidualAttentionBlock)
        and not hasattr(block, "ln_1_kv")
        and isinstance(attention, nn.MultiheadAttention)
        and attention.in_proj_weight is not None
        and attention.dropout == 0.0
    )


def _self_attention(
    attention: nn.MultiheadAttention, x: torch.Tensor, mask: torch.Tensor | None, queries: torch.Tensor | None = None
) -> torch.Tensor:
    """``attention(q, x, x)`` for batch-first P x L x width ``x``; q = ``queries`` (P x Q x width) or ``x``."""
    batch, length, width = x.shape
    heads = attention.num_heads
    weight, bias = attention.in_proj_weight, attention.in_proj_bias
    if queries is None:
        q, k, v = F.linear(x, weight, bias).view(batch, length, 3, heads, width // heads).permute(2, 0, 3, 1, 4)
    else:
        k, v = F.linear(x, weight[width:], bias[width:]).view(batch, length, 2, heads, -1).permute(2, 0, 3, 1, 4)
        q = F.linear(queries, weight[:width], bias[:width]).view(batch, -1, heads, width // heads).transpose(1, 2)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=None if mask is None else mask.to(q.dtype))
    return attention.out_proj(out.transpose(1, 2).reshape(batch, -1, width))


def _forget_text_features(module: PromptLearner, incompatible_keys) -> None:
    module._cache = module._next_step = None


def build_tokenizer(clip_model: str):
    """open_clip's tokenizer for the model (CLIP's BPE tokenizer ships inside open_clip: no download)."""
    with quiet_open_clip():
        return open_clip.get_tokenizer(clip_model)

"""Learnable state prompts of MediCLIP (CoOp-style, class-specific context), encoded by the backbone's frozen
text tower (``backbone.Backbone.encode_text``) into one normal and one abnormal text embedding.

MediCLIP (MICCAI 2024, arXiv 2405.11315): each state phrase becomes "X X X X X X X X {phrase}." and the
8 placeholder token embeddings are replaced by 8 learnable context vectors of its own. The prompts do
not depend on the image, so their embeddings are computed once per set of weights (see
:meth:`PromptLearner.text_features`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .backbone import Backbone

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


class PromptLearner(nn.Module):
    """Per-phrase learnable context vectors and their encoding through a backbone's frozen text tower.

    Args:
        backbone: the frozen backbone (its text tower is used, never trained).
        causal_text_mask: False (default, as the reference code) runs the text transformer without its
            causal attention mask, so the end-of-text token also sees the padding; True uses CLIP's mask.
        n_context: learnable context tokens per phrase (8 in MediCLIP).
    """

    def __init__(self, backbone: Backbone, causal_text_mask: bool = False, n_context: int = N_CONTEXT):
        super().__init__()
        # Kept out of the module tree: the backbone belongs to the network and is not saved here.
        self.__dict__["_backbone"] = backbone
        self.causal_text_mask = causal_text_mask
        self.n_normal = len(NORMAL_PHRASES)
        phrases = NORMAL_PHRASES + ABNORMAL_PHRASES
        placeholder = " ".join(["X"] * n_context)
        tokens = backbone.tokenize([f"{placeholder} {phrase}." for phrase in phrases])
        self.register_buffer("tokens", tokens, persistent=False)
        self.context = nn.Parameter(torch.empty(len(phrases), n_context, backbone.text_width).normal_(std=0.02))
        self._cache: tuple | None = None
        self._next_step: tuple | None = None  # (key, embeddings with their graph), see prepare_next_step
        # A load changes the weights in place: under torch.export that could not be seen (no version check).
        self.register_load_state_dict_post_hook(_forget_text_features)

    def _encode(self) -> torch.Tensor:
        backbone = self._backbone
        embeddings = backbone.token_embeddings(self.tokens).to(self.context.dtype)
        # Position 0 is the start-of-text token; positions 1..n_context held the "X" placeholders.
        n_ctx = self.context.shape[1]
        x = torch.cat([embeddings[:, :1], self.context, embeddings[:, 1 + n_ctx :]], dim=1)
        x = backbone.encode_text(x, self.tokens, self.causal_text_mask)
        normal = x[: self.n_normal].mean(dim=0)
        abnormal = x[self.n_normal :].mean(dim=0)
        return F.normalize(torch.stack([normal, abnormal], dim=1), dim=0)

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
            tuple(p._version for p in self._backbone.text_parameters()),
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


def _forget_text_features(module: PromptLearner, incompatible_keys) -> None:
    module._cache = module._next_step = None

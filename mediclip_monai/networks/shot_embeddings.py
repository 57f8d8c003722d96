"""The shots' global descriptors, scored by nearest neighbour: how unlike every normal shot an image is as a whole.

Few-shot detectors that do well at image level compare an image's global descriptor with those of the normal
shots (the image-level nearest neighbour of PatchCore- and AnomalyDINO-style methods): a scan unlike every shot
is suspect even when no single patch stands out. `ShotEmbeddings` keeps, for each shot slice that feeds the
patch memory bank, CLIP's image embedding and the class token of every tapped block, L2-normalised, and scores
an image by ``1 - max cosine similarity`` to them: once for the embedding (``embedding_knn``), and averaged over
the tapped blocks for the class tokens (``class_token_knn``). Both lie in [0, 2]; 0 means "a shot".

Size: slices x (layers x vision_width + embed_dim) floats, kept in float32: 128 slices (16 volume shots of 8
slices) at ViT-L-14 (3 x 1024 + 768) take 2 MB of model.pt. Scoring is one small matrix product per batch.

The module knows nothing about files: its two buffers are saved with the network's state dict and load with
``weights_only=True`` into a freshly built, empty one (a model.pt made before it existed leaves it empty).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["GLOBAL_DISTANCES", "ShotEmbeddings"]

# The signals `ShotEmbeddings.distances` returns, in this order.
GLOBAL_DISTANCES = ("embedding_knn", "class_token_knn")


class ShotEmbeddings(nn.Module):
    """Nearest-neighbour distances of images' global descriptors to those of the normal shots.

    Build with :meth:`build`, score with :meth:`distances`; both take what `ClipBackbone.image_tokens` gives
    (the class token of each tapped block, and the image embedding).
    """

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("class_tokens", torch.empty(0, 0, 0))  # layers x slices x vision_width
        self.register_buffer("embeddings", torch.empty(0, 0))  # slices x embed_dim

    @property
    def is_built(self) -> bool:
        return self.embeddings.numel() > 0

    @property
    def size(self) -> int:
        """Shot slices kept."""
        return self.embeddings.shape[0]

    @torch.no_grad()
    def build(self, class_tokens: Sequence[torch.Tensor], embeddings: torch.Tensor) -> ShotEmbeddings:
        """Keep the shots' descriptors (normalised, float32): per tapped block N x vision_width, and N x embed_dim."""
        if len(class_tokens) == 0 or any(t.shape[0] != embeddings.shape[0] for t in class_tokens):
            raise ValueError("expected the class tokens of every tapped block and the embeddings of the same slices")
        device = self.embeddings.device
        self.class_tokens = F.normalize(torch.stack([t.float() for t in class_tokens]), dim=-1).to(device)
        self.embeddings = F.normalize(embeddings.float(), dim=-1).to(device)
        return self

    @torch.no_grad()
    def distances(self, class_tokens: Sequence[torch.Tensor], embedding: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{"embedding_knn": B, "class_token_knn": B}`` float32 distances (``1 - max cosine similarity``).

        Args:
            class_tokens: per tapped block (the blocks the shots came from, in that order), B x vision_width.
            embedding: B x embed_dim image embeddings.
        """
        if not self.is_built:
            raise RuntimeError("no shot embeddings: build them from the normal shots first")
        if len(class_tokens) != self.class_tokens.shape[0]:
            layers = self.class_tokens.shape[0]
            raise ValueError(f"expected the class tokens of {layers} blocks, got {len(class_tokens)}")
        # float32 even under autocast, as the patch memory bank: distances near 0 need the bits
        with torch.autocast(embedding.device.type, enabled=False):
            queries = F.normalize(torch.stack([t.float() for t in class_tokens]), dim=-1)  # L x B x W
            layer_similarity = torch.bmm(queries, self.class_tokens.transpose(1, 2)).amax(dim=2)  # L x B
            similarity = F.normalize(embedding.float(), dim=-1) @ self.embeddings.T
        return {
            "embedding_knn": 1.0 - similarity.amax(dim=1),
            "class_token_knn": (1.0 - layer_similarity).mean(dim=0),
        }

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, *args, **kwargs):
        # The number of shot slices is only known from the checkpoint: resize the buffers before the copy.
        for name in ("class_tokens", "embeddings"):
            saved = state_dict.get(prefix + name)
            if isinstance(saved, torch.Tensor):
                setattr(self, name, torch.empty(saved.shape, dtype=saved.dtype, device=getattr(self, name).device))
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, *args, **kwargs)

    def extra_repr(self) -> str:
        return f"slices={self.size}, layers={self.class_tokens.shape[0]}"

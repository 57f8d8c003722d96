"""A bounded store of the frozen backbone's patch tokens, for images that come back unchanged.

The CLIP image tower is frozen, so the tapped tokens of an image never change during a run. Training
meets the same images again and again: the fixed validation set every round, and every shot that the
Identity task leaves as it is (a quarter of MediCLIP's mixture). `CachedTokenInferer`
(``mediclip_monai.workflows.inferers``) keeps their tokens here and runs only the trainable heads and the text
tower on them. The store is bounded: past ``max_bytes`` nothing more is kept and the rest is computed
afresh, as without a cache.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import torch

__all__ = ["PatchTokenCache"]


class PatchTokenCache:
    """Per-image tapped tokens (one ``C x h x w`` tensor per tapped layer), keyed by a name of the image.

    Args:
        max_bytes: the most bytes of tokens kept (on the device they were computed on); 0 keeps nothing.
    """

    def __init__(self, max_bytes: float = 2**31) -> None:
        self.max_bytes = int(max_bytes)
        self._tokens: dict[Hashable, list[torch.Tensor]] = {}
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self.full = False  # an image was turned away for lack of room

    @property
    def enabled(self) -> bool:
        """False for a cache of 0 bytes: the inferer then runs as if there were none."""
        return self.max_bytes > 0

    def __len__(self) -> int:
        return len(self._tokens)

    def keys(self) -> list[Hashable]:
        return list(self._tokens)

    def get(self, key: Hashable) -> list[torch.Tensor] | None:
        tokens = self._tokens.get(key)
        if tokens is None:
            self.misses += 1
        else:
            self.hits += 1
        return tokens

    def put(self, key: Hashable, tokens: Sequence[torch.Tensor]) -> bool:
        """Keep a copy of one image's tokens (not a view: that would keep its whole batch alive); False if full."""
        if key in self._tokens:
            return True
        size = sum(t.numel() * t.element_size() for t in tokens)
        if self.bytes + size > self.max_bytes:
            self.full = True
            return False
        self._tokens[key] = [t.detach().clone() for t in tokens]
        self.bytes += size
        return True

    def __repr__(self) -> str:
        return (
            f"PatchTokenCache({len(self)} images, {self.bytes / 2**20:.1f} of {self.max_bytes / 2**20:.0f} MiB, "
            f"{self.hits} hits, {self.misses} misses)"
        )

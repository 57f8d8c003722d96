"""A training-free few-shot branch: a memory bank of the shots' patch tokens, scored by nearest neighbour.

The frozen backbone's tapped patch tokens of the k normal shots are kept, per tapped layer and
L2-normalised per patch. A test patch scores ``1 - max cosine similarity`` to the bank of each layer,
averaged over the layers: patches unlike anything seen in the normal shots score high (as PatchCore,
AnomalyDINO and MVFA's few-shot branch do). The patch-grid score is upsampled like MediCLIP's map
(bilinear, ``align_corners=True``).

Size is bounded: k volumes of 100+ slices would give millions of patches, so the bank keeps at most
``max_patches`` of them, chosen by a greedy k-centre coreset (PatchCore, Roth et al., CVPR 2022): each
step takes the patch farthest from those already kept, so rare normal patterns survive while repeated
ones are thinned. One coreset is chosen over patches (their tokens at every tapped layer together,
through a seeded random projection for the selection distances), so each layer keeps the same patches.
Search runs in chunks of bank patches, so memory stays bounded whatever the bank size (per step: layers x
test patches x ``bank_chunk`` floats, 25 MB for a batch of 8 at ViT-L-14).

Default ``max_patches = 4096``: a whole k=16 shot set of 2D images at ViT-L-14 (16 x 256 patches) is kept
exactly; stored in float16 at ViT-L-14 (3 layers x 1024) it takes 25 MB of model.pt; scoring one image
costs ``patches x max_patches x width x layers x 2`` = 6.4 GFLOP at ViT-L-14 (4% of its image tower) and
3.7 GFLOP at ViT-B-16 (about 10%; measured 12-14% of the ViT-B-16 tower on a 2-core CPU at batch 8,
where the matrix product alone takes 11%). ``max_patches = 2048`` halves that cost.

The module knows nothing about files: its one buffer (``patches``, layers x bank size x width) is saved
with the network's state dict and loads with ``weights_only=True`` into a freshly built, empty bank.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["DEFAULT_MAX_PATCHES", "DEFAULT_MAX_SLICES", "PatchMemoryBank", "evenly_spaced_slices"]

DEFAULT_MAX_PATCHES = 4096
# Slices of one volume shot that feed the bank: a ViT-B forward is ~0.2 s per slice on a 2-core CPU,
# so k=16 volumes x 8 slices take ~25 s, and neighbouring slices add little that is new.
DEFAULT_MAX_SLICES = 8
PROJECTION_DIM = 128


def evenly_spaced_slices(num_slices: int, max_slices: int = DEFAULT_MAX_SLICES) -> list[int]:
    """Indices of at most ``max_slices`` slices spread evenly over ``num_slices`` (both ends included).

    Rule: all slices when there are no more than ``max_slices``; else ``round(linspace(0, n - 1, max))``.

    Args:
        num_slices: how many slices the volume offers (e.g. those with foreground).
        max_slices: the most to return (>= 1).
    """
    if max_slices < 1:
        raise ValueError(f"max_slices must be at least 1, got {max_slices}")
    if num_slices <= max_slices:
        return list(range(num_slices))
    if max_slices == 1:
        return [(num_slices - 1) // 2]
    step = (num_slices - 1) / (max_slices - 1)
    return [round(i * step) for i in range(max_slices)]


def _flatten_layers(tokens: Sequence[torch.Tensor]) -> torch.Tensor:
    """Per-layer B x C x h x w tokens -> L x (B h w) x C, L2-normalised per patch, float32."""
    if len(tokens) == 0:
        raise ValueError("expected tokens of at least one tapped layer")
    shape = tuple(tokens[0].shape)
    if len(shape) != 4 or any(tuple(t.shape) != shape for t in tokens):
        raise ValueError(
            f"expected per-layer tokens of one shape B x C x h x w, got {[tuple(t.shape) for t in tokens]}"
        )
    flat = torch.stack([t.detach().float().permute(0, 2, 3, 1).reshape(-1, shape[1]) for t in tokens])
    return F.normalize(flat, dim=-1)


def greedy_coreset(points: torch.Tensor, size: int, start: int = 0) -> torch.Tensor:
    """Greedy k-centre selection: indices of ``size`` rows of ``points``, each the farthest from the chosen.

    Args:
        points: N x D selection features (float32).
        size: how many rows to choose (<= N).
        start: the first chosen row.

    Returns:
        1-D long tensor of ``size`` distinct row indices, in selection order. Ties go to the lowest index.
    """
    n = points.shape[0]
    if not 0 < size <= n:
        raise ValueError(f"coreset size must lie in 1..{n}, got {size}")
    chosen = torch.empty(size, dtype=torch.long)
    squared_norms = (points * points).sum(dim=1)
    nearest = torch.full((n,), float("inf"), dtype=points.dtype, device=points.device)
    distances = torch.empty_like(nearest)
    index = int(start)
    # Each step is one small matrix-vector product: on CPU, thread hand-offs cost more than they save.
    threads = torch.get_num_threads()
    if points.device.type == "cpu":
        torch.set_num_threads(1)
    try:
        for i in range(size):
            chosen[i] = index
            torch.mv(points, points[index], out=distances)
            distances.mul_(-2.0).add_(squared_norms).add_(squared_norms[index])
            torch.minimum(nearest, distances, out=nearest)
            nearest[index] = -1.0  # never chosen twice (rounding can leave a chosen row slightly above 0)
            index = int(nearest.argmax())
    finally:
        torch.set_num_threads(threads)
    return chosen


class PatchMemoryBank(nn.Module):
    """Nearest-neighbour anomaly scores against the patch tokens of normal shots.

    Args:
        max_patches: the most patches kept per layer; more candidates are thinned by a greedy k-centre
            coreset. The same patches are kept in every layer.
        seed: seed of the random projection and the coreset's first patch (the build is deterministic).
        storage_dtype: dtype of the stored bank (float16 halves model.pt; scores are computed in float32).
        bank_chunk: bank patches compared at once (memory per step: test patches x bank_chunk floats per layer).

    Build with :meth:`build` (tokens as ``ClipBackbone.patch_tokens`` returns them) or
    :meth:`build_from_batches`; score with :meth:`patch_scores` (patch grid) or :meth:`anomaly_map`.
    """

    def __init__(
        self,
        max_patches: int = DEFAULT_MAX_PATCHES,
        seed: int = 0,
        storage_dtype: torch.dtype = torch.float16,
        bank_chunk: int = 1024,
    ) -> None:
        super().__init__()
        if max_patches < 1 or bank_chunk < 1:
            raise ValueError("max_patches and bank_chunk must be positive")
        self.max_patches = int(max_patches)
        self.seed = int(seed)
        self.storage_dtype = storage_dtype
        self.bank_chunk = int(bank_chunk)
        self.register_buffer("patches", torch.empty(0, 0, 0, dtype=storage_dtype))

    # ------------------------------------------------------------------------------------ properties

    @property
    def is_built(self) -> bool:
        return self.patches.numel() > 0

    @property
    def num_layers(self) -> int:
        return self.patches.shape[0]

    @property
    def size(self) -> int:
        """Patches kept per layer."""
        return self.patches.shape[1]

    @property
    def width(self) -> int:
        return self.patches.shape[2]

    # ------------------------------------------------------------------------------------ building

    @torch.no_grad()
    def build(self, tokens: Sequence[torch.Tensor]) -> PatchMemoryBank:
        """Fill the bank from the shots' tokens: a list per tapped layer of N x C x h x w tensors."""
        return self.build_from_batches([tokens])

    @torch.no_grad()
    def build_from_batches(self, batches: Iterable[Sequence[torch.Tensor]]) -> PatchMemoryBank:
        """Fill the bank from batches of tokens (each a list per layer), e.g. one backbone pass per batch.

        Candidates are held normalised in the storage dtype while batches arrive, so memory grows with
        the candidates at half the float32 size; pick the slices of volume shots with
        `evenly_spaced_slices` to bound them. Replaces whatever the bank held.
        """
        parts = [_flatten_layers(batch).to(self.storage_dtype) for batch in batches]
        if not parts:
            raise ValueError("no tokens to build the memory bank from")
        if any(p.shape[0] != parts[0].shape[0] or p.shape[2] != parts[0].shape[2] for p in parts):
            raise ValueError("every batch must have the same tapped layers and width")
        candidates = torch.cat(parts, dim=1)
        del parts
        if candidates.shape[1] > self.max_patches:
            candidates = candidates[:, self._coreset(candidates)]
        self.patches = candidates.contiguous()
        return self

    def _coreset(self, candidates: torch.Tensor) -> torch.Tensor:
        """Indices of ``max_patches`` patches chosen by greedy k-centre on a seeded random projection.

        A patch's selection feature is its normalised tokens of all layers side by side (scaled so that
        squared distances average over layers), projected to ``PROJECTION_DIM`` dimensions with a Gaussian
        matrix: distances are kept up to a small factor (Johnson-Lindenstrauss) at a fraction of the cost.
        """
        layers, n, width = candidates.shape
        generator = torch.Generator().manual_seed(self.seed)
        dim = layers * width
        features = torch.empty(n, min(PROJECTION_DIM, dim))
        if dim <= PROJECTION_DIM:
            projection = None
        else:
            projection = torch.randn(layers, width, PROJECTION_DIM, generator=generator) / math.sqrt(PROJECTION_DIM)
        for start in range(0, n, self.bank_chunk):  # chunked: no float32 copy of every candidate at once
            block = candidates[:, start : start + self.bank_chunk].float() / math.sqrt(layers)
            if projection is None:
                features[start : start + block.shape[1]] = block.permute(1, 0, 2).reshape(block.shape[1], -1)
            else:
                features[start : start + block.shape[1]] = torch.einsum("lnc,lcp->np", block, projection)
        first = int(torch.randint(n, (1,), generator=generator))
        return greedy_coreset(features, self.max_patches, start=first).sort().values

    # ------------------------------------------------------------------------------------ scoring

    @torch.no_grad()
    def patch_scores(self, tokens: Sequence[torch.Tensor]) -> torch.Tensor:
        """Anomaly score per patch: 1 - max cosine similarity to the bank, averaged over layers.

        Args:
            tokens: per tapped layer B x C x h x w (the layers the bank was built from, in that order).

        Returns:
            B x h x w float32 scores in [0, 2] (0: the patch is in the bank).
        """
        if not self.is_built:
            raise RuntimeError("the memory bank is empty: build it from the normal shots' patch tokens first")
        if len(tokens) != self.num_layers or tokens[0].shape[1] != self.width:
            raise ValueError(
                f"memory bank holds {self.num_layers} layers of width {self.width}; got {len(tokens)} "
                f"layers of width {tokens[0].shape[1]}"
            )
        batch, _, h, w = tokens[0].shape
        # float32 even under autocast: similarities near 1 keep 3 significant digits in bfloat16, too few for
        # the small differences (1 - similarity) that make the score
        with torch.autocast(tokens[0].device.type, enabled=False):
            queries = _flatten_layers(tokens)  # L x P x C
            bank = self._float_patches(queries.device)
            # Chunks of the bank only, never of the queries: the bank's size is fixed, so a torch.jit.trace of
            # this loop holds for any batch size (a loop over query chunks would be unrolled for the traced batch).
            best = None
            for start in range(0, self.size, self.bank_chunk):
                keys = bank[:, start : start + self.bank_chunk]
                similarity = torch.bmm(queries, keys.transpose(1, 2)).amax(dim=2)
                best = similarity if best is None else torch.maximum(best, similarity)
            return (1.0 - best).mean(dim=0).reshape(batch, h, w)

    def _float_patches(self, device: torch.device) -> torch.Tensor:
        """The bank in float32 on ``device``, converted once (per change of the stored bank), not per batch."""
        if torch.jit.is_tracing():  # a traced graph must hold the conversion, not a constant made from it
            return self.patches.to(device=device, dtype=torch.float32)
        key = (self.patches.data_ptr(), self.patches._version, str(device))
        cached = getattr(self, "_float_cache", None)
        if cached is None or cached[0] != key:
            self._float_cache = cached = (key, self.patches.to(device=device, dtype=torch.float32))
        return cached[1]

    def anomaly_map(self, tokens: Sequence[torch.Tensor], output_size: Sequence[int]) -> torch.Tensor:
        """B x S x S float32 map: `patch_scores` upsampled bilinearly (align_corners=True), like MediCLIP's map."""
        scores = self.patch_scores(tokens)
        with torch.autocast(scores.device.type, enabled=False):
            return upsample_patch_map(scores, output_size)

    # ------------------------------------------------------------------------------------ state

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, *args, **kwargs):
        # The bank's size is only known from the checkpoint: resize the buffer before the copy.
        saved = state_dict.get(prefix + "patches")
        if isinstance(saved, torch.Tensor):
            if saved.ndim != 3:
                raise ValueError(f"{prefix}patches: expected layers x patches x width, got shape {tuple(saved.shape)}")
            self.patches = torch.empty(saved.shape, dtype=saved.dtype, device=self.patches.device)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, *args, **kwargs)

    def extra_repr(self) -> str:
        return (
            f"layers={self.num_layers}, size={self.size}, width={self.width}, max_patches={self.max_patches}, "
            f"dtype={self.patches.dtype}"
        )


def upsample_patch_map(scores: torch.Tensor, output_size: Sequence[int]) -> torch.Tensor:
    """B x h x w patch-grid scores -> B x S x S, bilinear with align_corners=True (as MediCLIP's logits)."""
    return F.interpolate(scores[:, None], size=tuple(output_size), mode="bilinear", align_corners=True)[:, 0]

"""Mixed precision: which floating-point precision the network runs in, decided in one place.

The config's ``amp`` key says what the user wants; `resolve_precision` turns it and the device into a
`Precision`, which every place that runs the network applies (the training and validation inferer, the
slice-wise inferer of inference and evaluation, the text features between epochs, bank building and
calibration, the MONAI Label app):

- ``amp`` null (the default): on for CUDA devices, off on the CPU (there bf16 autocast was measured slower
  than float32: 3x on a 2-core AVX-512 machine);
- ``amp`` true: on for any device; ``amp`` false: float32 everywhere.

On means autocast in bfloat16 where the device computes it natively (the CPU; GPUs with
``torch.cuda.is_bf16_supported()``, Ampere and newer), else float16 with MONAI's GradScaler (bfloat16 has
float32's range, so its gradients need no scaling). What stays float32 under autocast: the network's
outputs (probabilities, anomaly maps, the loss computed from them), the memory bank's similarity search
(`PatchMemoryBank.patch_scores`: cosine similarities near 1 have too few bits in bfloat16), resizing and
normalisation of the inputs.

Small forward batches run in float32: below `AMP_MIN_BATCH` images per forward pass autocast's casts of
the weights cost more than the low-precision matrix products save (measured on an H200 at batch 1, ViT-L-14:
float16 autocast 19.2 ms against float32 9.7 ms). The rule is applied per call of an inferer (one training
batch, one case), never between the slices of one volume, so a volume's map has one precision.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass

import torch

from .settings import flag

__all__ = ["AMP_MIN_BATCH", "FLOAT32", "Precision", "resolve_precision"]

logger = logging.getLogger(__name__)

# Forward batches smaller than this run in float32 (see the module docstring).
AMP_MIN_BATCH = 4


@dataclass(frozen=True)
class Precision:
    """The precision the network runs in on one device type.

    Args:
        device_type: ``"cpu"`` or ``"cuda"`` (what ``torch.autocast`` takes).
        dtype: the autocast dtype (``torch.bfloat16`` or ``torch.float16``); None: float32, no autocast.
    """

    device_type: str = "cpu"
    dtype: torch.dtype | None = None

    @property
    def enabled(self) -> bool:
        return self.dtype is not None

    @property
    def grad_scaler(self) -> bool:
        """Whether training needs a GradScaler (float16 gradients underflow; bfloat16's do not)."""
        return self.dtype == torch.float16

    @property
    def autocast_kwargs(self) -> dict:
        """``torch.autocast`` keywords for MONAI's engines (``amp_kwargs``), which autocast on CUDA."""
        return {"dtype": self.dtype} if self.enabled else {}

    def autocast(self, batch_size: int | None = None) -> contextlib.AbstractContextManager:
        """The autocast context of this precision for a forward pass of ``batch_size`` images (None: any size).

        Outside it nothing changes: float32 stays float32. Below `AMP_MIN_BATCH` images it is float32.
        """
        enabled = self.enabled and (batch_size is None or batch_size >= AMP_MIN_BATCH)
        if not enabled:
            return torch.autocast(self.device_type, enabled=False)
        return torch.autocast(self.device_type, dtype=self.dtype)

    def __str__(self) -> str:
        return "float32" if self.dtype is None else f"{str(self.dtype).removeprefix('torch.')} autocast"


FLOAT32 = Precision()


def resolve_precision(amp, device) -> Precision:
    """The `Precision` of the config's ``amp`` (null, true or false; strings as the command line gives them)
    on ``device`` (``"cpu"``, ``"cuda"``, ``"cuda:1"`` or a torch.device)."""
    device_type = torch.device(device).type
    wanted = flag(amp, "amp", allow_null=True)
    if wanted is None:
        wanted = device_type == "cuda"
    if not wanted:
        precision = Precision(device_type, None)
    elif device_type == "cuda":
        precision = Precision("cuda", torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)
    else:
        precision = Precision(device_type, torch.bfloat16)
    logger.info(f"precision on {device}: {precision} (amp {amp})")
    return precision

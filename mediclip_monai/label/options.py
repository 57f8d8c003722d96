"""What a client or the server's ``--conf`` may set, and how each value is read: no outside text is code.

MONAI's ``ConfigParser`` evaluates a string that begins with ``$`` as Python, resolves ``@`` (a reference)
and ``%`` (a macro, which reads a file), instantiates any dict with a ``_target_``, and rewrites ``#`` inside
strings. So the app hands the bundle configs typed values only: numbers, booleans, None, strings from a
closed set (device names, anomaly branches, the backbones it offers) and paths it made absolute. Every
option of an infer or train request and of ``--conf`` is read here into its type and checked; an unknown
key, a value of another type or out of range is an `OptionError` naming the key (HTTP 422). The keys MONAI
Label and its clients add to requests themselves are tolerated and left out of what the task reads.
"""

from __future__ import annotations

import math
import numbers
import os
import re
from collections.abc import Collection, Mapping
from typing import Any

import torch

from mediclip_monai.decisions import BRANCHES
from mediclip_monai.errors import MediclipError

# The keys MONAI Label adds to an infer request (endpoint: model, image, label, session; its clients:
# client_id; MONAILabelApp.infer: description, save_label; batch inference: the rest; DICOM SEG output:
# label_info). None of them reaches a bundle config.
MONAI_LABEL_INFER_KEYS = frozenset(
    {
        "model", "image", "label", "session", "client_id", "description", "save_label", "label_tag",
        "label_info", "logging", "timeout", "result_extension", "result_dtype", "result_compress",
        "images", "labels", "max_batch_size", "multi_gpu", "gpus", "max_workers", "_id", "_image_id",
    }
)  # fmt: skip
# The keys MONAI Label adds to a train request (its clients: client_id; the training process: gpus, local_rank;
# bundle apps: bundle_path).
MONAI_LABEL_TRAIN_KEYS = frozenset({"model", "client_id", "gpus", "local_rank", "bundle_path"})
# MONAI Label's own --conf keys that this app accepts (read by MONAILabelApp itself).
MONAI_LABEL_CONF_KEYS = frozenset({"server_mode"})
# MONAI Label sets its logger's level from a request's "logging"; anything else would fail there.
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
# The anomaly branch a request may ask for; "default" is the model's calibrated one.
DEFAULT_BRANCH = "default"
BRANCH_CHOICES = (DEFAULT_BRANCH, *BRANCHES)

_DEVICE = re.compile(r"^(cpu|cuda(:\d+)?)$")
_INTEGER = re.compile(r"^[+-]?\d+$")
# open_clip model names (``hf-hub:org/name`` too) and pretrained tags; a letter or digit first, no '#'.
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]*$")
_NULL = ("", "null", "none")


class OptionError(MediclipError, ValueError):
    """A request or ``--conf`` value that the app does not accept; the message starts with the key."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"{key}: {reason}")
        self.key = key


def check_keys(values: Mapping[str, Any], known: Collection[str], tolerated: Collection[str] = ()) -> None:
    """Refuse the first key of ``values`` that is neither an option (``known``) nor ``tolerated``."""
    for key in values:
        if key not in known and key not in tolerated:
            raise OptionError(str(key)[:80], f"unknown option; the options are {', '.join(sorted(known))}")


def whole_number(key: str, value: Any, low: int, high: int) -> int:
    """An integer in [low, high]: an int, or its decimal digits as text (``--conf``, HTML forms)."""
    if isinstance(value, str) and _INTEGER.match(value.strip()):
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not low <= value <= high:
        raise OptionError(key, f"{_shown(value)} is not a whole number from {low} to {high}")
    return int(value)


def number(key: str, value: Any, low: float, high: float, meaning: str, allow_null: bool = False) -> float | None:
    """A finite number in [low, high] (text allowed); with ``allow_null``, null, none or empty text is None."""
    if allow_null and (value is None or (isinstance(value, str) and value.strip().lower() in _NULL)):
        return None
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            pass
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not math.isfinite(value)
        or not low <= value <= high
    ):
        null = " (or null)" if allow_null else ""
        raise OptionError(key, f"{_shown(value)} is not a number from {low:g} to {high:g}{null}: {meaning}")
    return float(value)


def boolean(key: str, value: Any) -> bool:
    """``true`` or ``false``: a JSON boolean or that very word; nothing else counts as yes or no."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise OptionError(key, f"{_shown(value)} is not true or false")


def choice(key: str, value: Any, choices: Collection[str]) -> str:
    """One of ``choices``, exactly; MONAI Label's clients send a list option as its chosen (first) item."""
    if isinstance(value, list) and value:
        value = value[0]
    if not isinstance(value, str) or value not in choices:
        raise OptionError(key, f"{_shown(value)} is not one of {', '.join(choices)}")
    return value


def device(key: str, value: Any) -> str:
    """A torch device of this machine: ``cpu``, ``cuda`` or ``cuda:N`` (a GPU's display name, as MONAI Label
    lists devices, stands for its ``cuda`` name)."""
    from monailabel.utils.others.generic import device_map

    if isinstance(value, list) and value:
        value = value[0]
    if not isinstance(value, str):
        raise OptionError(key, f"{_shown(value)} is not a device (cpu, cuda or cuda:N)")
    name = device_map().get(value, value.strip())
    if not _DEVICE.match(name):
        raise OptionError(key, f"{_shown(value)} is not a device (cpu, cuda or cuda:N)")
    if name.startswith("cuda"):
        count = torch.cuda.device_count()
        index = int(name.partition(":")[2] or 0)
        if index >= count:
            have = f"GPUs cuda:0 to cuda:{count - 1}" if count else "no GPU"
            raise OptionError(key, f"{value!r}: this server has {have}; use cpu or one of those")
    return name


def devices() -> list[str]:
    """The devices this machine offers, as `device` accepts them: ``cuda``, ``cuda:N`` ..., ``cpu``."""
    count = torch.cuda.device_count()
    return (["cuda"] if count else []) + [f"cuda:{i}" for i in range(count if count > 1 else 0)] + ["cpu"]


def name(key: str, value: Any) -> str:
    """An open_clip model name or pretrained tag (a letter or digit, then letters, digits and . _ - : /)."""
    if not isinstance(value, str) or not _NAME.match(value.strip()):
        raise OptionError(key, f"{_shown(value)} is not an open_clip model name or pretrained tag")
    return value.strip()


def path(key: str, value: Any, must_exist: str | None = None) -> str:
    """An absolute path (``--conf`` only): never read as a config expression, reference or macro.

    Args:
        must_exist: "file" or "dir": the path must be one.
    """
    if not isinstance(value, str) or not value.strip():
        raise OptionError(key, f"{_shown(value)} is not a path")
    if "#" in value:  # MONAI's config parser would rewrite it to '::'
        raise OptionError(key, f"{value!r}: a path with '#' cannot be given to the bundle configs; rename it")
    absolute = os.path.abspath(os.path.expanduser(value.strip()))
    if must_exist == "file" and not os.path.isfile(absolute):
        raise OptionError(key, f"{absolute} is not a file")
    if must_exist == "dir" and not os.path.isdir(absolute):
        raise OptionError(key, f"{absolute} is not a folder")
    return absolute


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."

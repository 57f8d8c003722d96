"""The check of a run's numbers (epochs, batch size, ...), done first, before any data is read or any
network is built, so a typo costs a second, not a model download."""

from __future__ import annotations

import math
import numbers

from .errors import ConfigValueError, format_problems

__all__ = ["check_settings", "flag"]

TRUE_WORDS = ("true", "yes", "1", "on")
FALSE_WORDS = ("false", "no", "0", "off")


def flag(value, key: str, allow_null: bool = False) -> bool | None:
    """A boolean config value, read strictly: the command line gives ``--amp false`` as the string 'false'.

    Accepts booleans, 0 and 1, and the words true/false, yes/no, on/off, 1/0 in any case; with ``allow_null``
    also None (and the words null/none), returned as None ("decide for me").

    Raises:
        ConfigValueError: anything else, naming ``--key`` and what it accepts.
    """
    if isinstance(value, bool):
        return value
    if value is None and allow_null:
        return None
    if isinstance(value, numbers.Integral) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        word = value.strip().lower()
        if word in TRUE_WORDS:
            return True
        if word in FALSE_WORDS:
            return False
        if allow_null and word in ("null", "none"):
            return None
    accepted = "true or false" + (" (or null: decide by the device)" if allow_null else "")
    raise ConfigValueError(f"--{key} {value!r}: must be {accepted}; also yes/no, on/off, 1/0")


def check_settings(
    epochs, batch_size, k_shot, lr, val_interval, num_workers, feature_cache_gb=0.0, flags=None
) -> None:
    """Refuse config values that cannot work, before any data is read or any network is built.

    ``flags``: ``{key: value}`` of the boolean keys (`flag`; ``amp`` may also be null).

    Raises:
        ConfigValueError: one line per bad value, naming the key (the command-line override) and what works.
    """
    problems = []

    def whole(key: str, value, low: int, meaning: str) -> None:
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
            problems.append(f"--{key} {value!r}: must be a whole number >= {low} ({meaning})")

    whole("epochs", epochs, 1, "passes over the training slices")
    whole("batch_size", batch_size, 1, "slices per training step")
    whole("k_shot", k_shot, 0, "normal images drawn for training; 0 takes them all")
    whole("val_interval", val_interval, 1, "epochs between validation rounds")
    whole("num_workers", num_workers, 0, "data loading processes; 0 loads in the main process")
    if isinstance(lr, bool) or not isinstance(lr, numbers.Real) or not math.isfinite(lr) or lr <= 0:
        problems.append(f"--lr {lr!r}: must be a number > 0 (the learning rate, e.g. 0.001)")
    if (
        isinstance(feature_cache_gb, bool)
        or not isinstance(feature_cache_gb, numbers.Real)
        or not math.isfinite(feature_cache_gb)
        or feature_cache_gb < 0
    ):
        problems.append(
            f"--feature_cache_gb {feature_cache_gb!r}: must be a number >= 0 (GiB of backbone tokens kept for "
            "images seen again; 0 turns the cache off)"
        )
    for key, value in (flags or {}).items():
        try:
            flag(value, key, allow_null=key == "amp")
        except ConfigValueError as error:
            problems.append(str(error))
    if not problems and val_interval > epochs:
        problems.append(
            f"--val_interval {val_interval} is more than --epochs {epochs}: no validation round would run, so no "
            f"model.pt would be written; use --val_interval {epochs} or less"
        )
    if problems:
        raise ConfigValueError(problems[0] if len(problems) == 1 else format_problems(problems, "config values"))

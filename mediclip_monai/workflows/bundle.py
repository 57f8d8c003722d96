"""Where the bundle is, and how its configs are layered: what a config cannot say about itself.

MONAI's config syntax gives a config no way to know its own file. ``bundle_root`` resolves from the folder
of the config being run (the folder above ``configs/``, as MONAI's ``ConfigWorkflow`` takes it), so the
bundle runs from any working directory and as a copy of ``bundle/`` anywhere; a config checks that it sits
on the configs it is layered on (`LAYERS`).
"""

from __future__ import annotations

import difflib
import inspect
import json
import os
import re
from pathlib import Path

from .. import readable_errors  # noqa: F401 (a config's layering error ends with its reason)
from ..errors import ConfigValueError

__all__ = ["LAYERS", "bundle_root", "check_overrides", "config_files", "layers", "require_layers", "use_instead"]

# How the configs are layered by name: each run's files, bottom first (MONAI merges them in this order; a
# "+key" extends the key of the files below). train.json and inference.json stand alone (the bundle's contract:
# `--config_file bundle/configs/train.json` trains), as MONAI model-zoo bundles do; evaluation is inference
# plus the truth, the metrics and the report.
LAYERS = {"evaluate.json": ("inference.json", "evaluate.json")}
# Keys the configs no longer have, and what decides instead (`check_overrides` says so).
RETIRED_KEYS = {"image_size": "the input size is the backbone's (--clip_model), from its input contract"}


def _running_workflow():
    """MONAI's ``ConfigWorkflow`` whose config is being resolved: the caller up the stack (``monai.bundle run``,
    torchrun's workers and in-process workflows all resolve their configs inside its methods); None outside one."""
    from monai.bundle import ConfigWorkflow

    frame = inspect.currentframe()
    while frame is not None:
        candidate = frame.f_locals.get("self")
        if isinstance(candidate, ConfigWorkflow):
            return candidate
        frame = frame.f_back
    return None


def bundle_root() -> str:
    """The bundle folder of the config being run (absolute): the parent of its ``configs/`` folder; outside a
    workflow, the working directory when it is a bundle folder (holds configs/metadata.json).

    Raises:
        ConfigValueError: the config is not being run by MONAI's ``ConfigWorkflow`` (e.g. read with a bare
            ``ConfigParser``) outside a bundle folder; its caller must then give ``bundle_root`` itself.
    """
    workflow = _running_workflow()
    if workflow is None:
        # MONAI's verify_net_in_out, ckpt_export, ... read a config without a workflow: the model zoo runs them
        # from inside the bundle folder.
        if Path("configs", "metadata.json").is_file():
            return str(Path.cwd().resolve())
        raise ConfigValueError(
            "--bundle_root: the bundle folder is known only when MONAI's ConfigWorkflow runs the config "
            "(python -m monai.bundle run ...) or in the working directory; give bundle_root"
        )
    folder = Path(workflow.config_root_path)
    return str((folder.parent if folder.name == "configs" else folder).resolve())


def layers(config: str) -> tuple[str, ...]:
    """The config files a run of ``config`` (``train.json``, ``inference.json``, ``evaluate.json``) is made of,
    bottom first, as ``--config_file`` lists them; a file that stands alone (``metadata.json``) is itself."""
    return LAYERS.get(config, (config,))


def config_files(config: str, bundle_dir: str | os.PathLike) -> list[str]:
    """The paths of `layers` of ``config`` in the ``configs/`` folder of ``bundle_dir``: a ``config_file`` for
    MONAI's ``ConfigWorkflow`` or ``ConfigParser.read_config``."""
    return [os.path.join(bundle_dir, "configs", name) for name in layers(config)]


def require_layers(config: str, *base_keys: str) -> None:
    """Refuse to run ``config`` without the configs it is layered on (`use_instead` names the command line).

    Args:
        config: the config's file name (``train.json``).
        base_keys: top-level keys that the configs below it define, one of each (``inference``: inference.json's).
    """
    workflow = _running_workflow()
    if workflow is not None and not all(key in workflow.parser.get() for key in base_keys):
        use_instead(*layers(config), why=f"{config} is layered on {' and '.join(layers(config)[:-1])}")


def _defined_keys(folder: Path) -> set[str]:
    """The top-level keys that the bundle's configs define (every JSON config in ``folder``), and those MONAI's
    experiment tracking adds (``--tracking mlflow``)."""
    from monai.bundle.utils import DEFAULT_EXP_MGMT_SETTINGS

    keys = {key for settings in DEFAULT_EXP_MGMT_SETTINGS.values() for key in settings.get("configs", {})}
    for path in folder.glob("*.json"):
        try:
            config = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # not a config (or not readable): MONAI reports the configs it reads itself
        if isinstance(config, dict):
            keys.update(key.lstrip("+") for key in config)
    return keys


def check_overrides() -> None:
    """Refuse a command-line key that no config of the bundle defines and nothing reads (``--epoch 5`` for
    ``--epochs``): MONAI would add it to the config and the run would go on without it. Keys of a config of
    one's own layered on the bundle's count as read when that config refers to them (``@key``).

    Raises:
        ConfigValueError: the unknown keys, each with the nearest key the configs define.
    """
    workflow = _running_workflow()
    if workflow is None:
        return
    config = workflow.parser.get()
    defined = _defined_keys(Path(workflow.config_root_path))
    text = json.dumps(config, default=str)
    unknown = [
        key
        for key in config
        if not key.startswith("_") and key not in defined and not re.search(rf"@{re.escape(key)}(?!\w)", text)
    ]
    problems = []
    for key in unknown:
        near = difflib.get_close_matches(key, sorted(defined), n=1)
        hint = f" ({RETIRED_KEYS[key]})" if key in RETIRED_KEYS else f" (did you mean --{near[0]}?)" if near else ""
        problems.append(f"--{key}: no config of {workflow.config_root_path} has this key; it would be ignored{hint}")
    if problems:
        raise ConfigValueError("; ".join(problems))


def use_instead(*names: str, why: str) -> None:
    """Refuse a layering of the configs that is no longer used, saying ``why`` and naming the config files to
    give instead.

    Raises:
        ConfigValueError: always; the files are named in the folder of the configs being run.
    """
    workflow = _running_workflow()
    folder = str(workflow.config_root_path) if workflow is not None else os.path.join("bundle", "configs")
    files = ",".join(f"'{os.path.join(folder, name)}'" for name in names)
    raise ConfigValueError(f'--config_file: {why}: use --config_file "[{files}]" with the same overrides')

"""Where the bundle is, and how its configs are layered: what a config cannot say about itself.

MONAI's config syntax gives a config no way to know its own file. ``bundle_root`` resolves from the folder
of the config being run (the folder above ``configs/``, as MONAI's ``ConfigWorkflow`` takes it), so the
bundle runs from any working directory and as a copy of ``bundle/`` anywhere; a config checks that it sits
on the configs it is layered on (`LAYERS`).
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path

from .. import readable_errors  # noqa: F401 (a config's layering error ends with its reason)
from ..errors import ConfigValueError

__all__ = ["LAYERS", "bundle_root", "config_files", "layers", "require_layers", "use_instead"]

# How the configs are layered by name: each run's files, bottom first (MONAI merges them in this order; a
# "+key" extends the key of the files below). train.json and inference.json stand alone (the bundle's contract:
# `--config_file bundle/configs/train.json` trains), as MONAI model-zoo bundles do; evaluation is inference
# plus the truth, the metrics and the report.
LAYERS = {"evaluate.json": ("inference.json", "evaluate.json")}


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

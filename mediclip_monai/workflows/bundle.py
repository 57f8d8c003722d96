"""Where the bundle is, and how its configs are layered: what a config cannot say about itself.

MONAI's config syntax gives a config no way to know its own file. ``bundle_root`` resolves from the folder
of the config being run (the folder above ``configs/``, as MONAI's ``ConfigWorkflow`` takes it), so the
bundle runs from any working directory and as a copy of ``bundle/`` anywhere; an overlay checks that it sits
on the config it extends.
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path

from ..errors import ConfigValueError

__all__ = ["bundle_root", "require_base", "use_instead"]


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


def require_base(overlay: str, base: str, base_key: str) -> None:
    """Refuse to run ``overlay`` on another config than ``base`` (`use_instead` names the command line).

    Args:
        overlay: the overlay's file name (``evaluate.json``).
        base: the file name of the config it extends (``inference.json``).
        base_key: a top-level key that ``base`` defines and the other configs do not.
    """
    workflow = _running_workflow()
    if workflow is not None and base_key not in workflow.parser.get():
        use_instead(base, overlay, why=f"{overlay} extends {base}")


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

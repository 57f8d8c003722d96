"""The MONAI Label tests: the bundle's trained tiny model, and running code in the MONAI Label environment.

MONAI Label lives in its own environment (scripts/setup_monailabel_env.sh): its interpreter is
``$MEDICLIP_LABEL_PYTHON`` (default ``<repo>/.venv-label/bin/python``); the tests that need it are skipped
only when it does not exist.
"""

import json
import os
import subprocess
from pathlib import Path

import pytest

from ..bundle.conftest import REPO, demo_dir, trained  # noqa: F401

LABEL_PYTHON = Path(os.environ.get("MEDICLIP_LABEL_PYTHON", Path(REPO) / ".venv-label" / "bin" / "python"))
needs_label_env = pytest.mark.skipif(
    not LABEL_PYTHON.exists(),
    reason=f"MONAI Label environment not found at {LABEL_PYTHON}; make it with scripts/setup_monailabel_env.sh "
    "(or set MEDICLIP_LABEL_PYTHON)",
)
RESULT = "RESULT "


def label_env(**extra) -> dict:
    """The environment of a process in the MONAI Label environment: this checkout's package first."""
    return {**os.environ, "PYTHONPATH": REPO, "PYTHONUNBUFFERED": "1", **extra}


def run_in_label_env(script: str, *args, timeout: int = 600, cwd=REPO):
    """Run ``script`` with ``args`` in the MONAI Label environment; what it printed as ``RESULT <json>``."""
    done = subprocess.run(
        [str(LABEL_PYTHON), "-c", script, *map(str, args)],
        capture_output=True,
        text=True,
        env=label_env(),
        cwd=cwd,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (line,) = [line for line in done.stdout.splitlines() if line.startswith(RESULT)]
    return json.loads(line[len(RESULT) :])

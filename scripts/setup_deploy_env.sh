#!/usr/bin/env bash
# Make the virtual environment that runs the MONAI Deploy app of this bundle (deploy/) and its tests.
#
#   scripts/setup_deploy_env.sh [VENV_DIR]        (default: <repo>/.venv-deploy, git-ignored)
#
# Why a separate environment: the MONAI Deploy App SDK 4.0 (the project's `deploy` extra) pulls in Holoscan,
# CUDA 13 Python bindings and tritonclient[all], whose protobuf<7 pin would downgrade the protobuf 7 that
# this project's environment has (tensorboard, onnx). In a fresh environment of its own, `pip install -e
# ".[deploy]"` is all a user needs; this script builds the same on top of an existing one.
#
# How: the venv sees the packages of the interpreter that runs this script (scripts/layered_venv.sh), so
# torch, monai and the project's other dependencies are not installed again. The SDK installs its modules
# inside the `monai` package folder (monai/deploy), so the venv gets its own copy of the same monai release
# (pure Python, a few MB) for monai.deploy to sit beside. Everything lands in VENV_DIR only. Re-running it is
# safe. Measured: about 15 s with a warm pip cache (the venv is about 450 MB).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${1:-$repo/.venv-deploy}"
# The interpreter that has the project installed (torch, monai, open_clip): the venv builds on it.
python="${PYTHON:-$(command -v python || command -v python3)}"

start=$SECONDS
# shellcheck source=scripts/layered_venv.sh
. "$repo/scripts/layered_venv.sh"
make_layered_venv "$venv" "$python"
pip=("$venv/bin/python" -m pip install --quiet --disable-pip-version-check)
monai_version="$("$python" -c 'import monai; print(monai.__version__)')"
echo "installing monai $monai_version and the project's deploy extra (MONAI Deploy App SDK) into $venv"
"${pip[@]}" --no-deps --ignore-installed "monai==$monai_version"
"${pip[@]}" -e "$repo[deploy]"

# Fail here, not when the app first runs, when something it needs is missing.
"$venv/bin/python" - <<'PY'
import importlib.metadata
import holoscan.core  # noqa: F401
import monai.deploy.operators  # noqa: F401
import mediclip_monai  # noqa: F401
print(f"MONAI Deploy environment ready: monai-deploy-app-sdk {importlib.metadata.version('monai-deploy-app-sdk')}, "
      f"holoscan {importlib.metadata.version('holoscan-cu13')}")
PY
echo "done in $((SECONDS - start)) s: $venv"

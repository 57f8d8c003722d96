#!/usr/bin/env bash
# Make the virtual environment that runs the MONAI Label server of this bundle (mediclip_monai/label/).
#
#   scripts/setup_monailabel_env.sh [VENV_DIR]        (default: <repo>/.venv-label, git-ignored)
#
# Why a separate environment: monailabel 0.8.5 imports pydicom_seg, which breaks on pydicom 3, so the
# server needs pydicom 2.4.4 while the rest of the project uses pydicom 3 (highdicom).
#
# How: the venv sees the packages of the interpreter that runs this script (scripts/layered_venv.sh), so
# torch, monai, open_clip and the project's other dependencies are not installed again, and the venv's own
# pydicom 2 wins for the server alone. monailabel itself is installed without
# its dependency list: that list would pull mlflow, sam2, openslide, lmdb, gdown and a numpy<2
# (pydicom-seg's pin) into the venv, none of which serving this app needs. Instead the packages the
# server imports are listed below, pinned to versions tested together with monai 1.6.1 and torch
# 2.14.1 (itk-io stays: MONAI Label's writer module imports itk; it is most of the venv's ~700 MB).
# Everything lands in VENV_DIR only; the system python is not touched. Re-running it is safe.
# Measured: about 55 s with an empty pip cache, 30 s with a warm one.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${1:-$repo/.venv-label}"
# The interpreter that has the project installed (torch, monai, open_clip): the venv builds on it.
python="${PYTHON:-$(command -v python || command -v python3)}"

# Installed without dependencies (see above). pydicom-seg's own pins (numpy<2, jsonschema<4) are only
# import-time constraints here: the app never writes DICOM SEG through it.
no_deps=(
    "monailabel==0.8.5"
    "pydicom-seg==0.4.1"
)
# What the server, its datastore and its task runner import (monailabel 0.8.5's own pins for the DICOM
# stack: pydicom 2.4.4, dicomweb-client 0.59.1, pynetdicom 2.0.2).
runtime=(
    "pydicom==2.4.4"
    "dicomweb-client==0.59.1"
    "pynetdicom==2.0.2"
    "fastapi==0.165.0"
    "pydantic-settings==2.16.3"
    "jsonschema==4.26.0"
    "starlette==1.10.0"
    "uvicorn==0.54.0"
    "python-multipart==0.0.34"
    "httpx==0.28.1"
    "requests-toolbelt==1.0.0"
    "schedule==1.2.2"
    "timeloop==1.0.2"
    "expiringdict==1.2.2"
    "expiring_dict==1.1.2"
    "cachetools==8.0.1"
    "watchdog==7.1.0"
    "psutil==7.2.2"
    "passlib==1.7.4"
    "PyJWT==2.15.1"
    "bcrypt==5.0.0"
    "google-auth==2.62.2"
    "girder-client==5.0.21"
    "einops==0.8.2"
    "itk-io==5.4.7"
)

start=$SECONDS
# shellcheck source=scripts/layered_venv.sh
. "$repo/scripts/layered_venv.sh"
make_layered_venv "$venv" "$python"
pip=("$venv/bin/python" -m pip install --quiet --disable-pip-version-check)
echo "installing monailabel 0.8.5 and the server's runtime packages into $venv"
echo "(pip may list monailabel's unused extras, pydicom-seg's numpy<2 pin and the pydicom>=3 of highdicom and"
echo " mediclip-monai as conflicts: expected, see the comments in this script; the import check at the end"
echo " is what counts)"
"${pip[@]}" --no-deps "${no_deps[@]}"
"${pip[@]}" "${runtime[@]}"
"${pip[@]}" --no-deps -e "$repo"

# Fail here, not at the first request, when something the server needs is missing.
"$venv/bin/python" - <<'EOF'
import monai, pydicom, torch
import monailabel.app  # noqa: F401  (the FastAPI app and every endpoint it mounts)
import monailabel.interfaces.utils.app  # noqa: F401  (the training/batch task runner)
import mediclip_monai.label.main  # noqa: F401
print(f"monailabel server environment ready: monai {monai.__version__}, torch {torch.__version__}, "
      f"pydicom {pydicom.__version__}")
EOF
echo "done in $((SECONDS - start)) s: $venv"

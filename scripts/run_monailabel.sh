#!/usr/bin/env bash
# Start the MONAI Label server of this bundle on this machine, for 3D Slicer's MONAI Label module.
#
#   scripts/run_monailabel.sh STUDIES_DIR [BUNDLE_DIR] [monailabel start_server options...]
#
#   STUDIES_DIR  folder of studies (NIfTI .nii/.nii.gz, NRRD, ...); MONAI Label keeps its datastore
#                (datastore_v2.json, labels/) inside it.
#   BUNDLE_DIR   the MediCLIP bundle (default: <repo>/bundle); the live model is BUNDLE_DIR/models/model.pt.
#   options      passed on, e.g. --conf device cuda --conf threshold 0.4 --conf clip_checkpoint FILE
#
# Environment: MEDICLIP_LABEL_PYTHON (default <repo>/.venv-label/bin/python, made by
# scripts/setup_monailabel_env.sh), MEDICLIP_LABEL_HOST (default 127.0.0.1; any other address needs
# MONAI Label's authentication, MONAI_LABEL_AUTH_ENABLE=true), MEDICLIP_LABEL_PORT (8000).
# Installs nothing: when the environment is missing it says which command makes it.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${MEDICLIP_LABEL_PYTHON:-$repo/.venv-label/bin/python}"
host="${MEDICLIP_LABEL_HOST:-127.0.0.1}"
port="${MEDICLIP_LABEL_PORT:-8000}"

usage() { sed -n '2,14p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

if [ $# -lt 1 ] || [ "$1" = "-h" ] || [ "$1" = "--help" ]; then
    usage
    exit 2
fi
studies="$1"
shift
bundle="$repo/bundle"
if [ $# -ge 1 ] && [ "${1#-}" = "$1" ]; then
    bundle="$1"
    shift
fi

if [ ! -d "$studies" ]; then
    echo "error: studies folder not found: $studies" >&2
    exit 2
fi
if [ ! -f "$bundle/configs/train.json" ]; then
    echo "error: $bundle is not the MediCLIP bundle (no configs/train.json)" >&2
    exit 2
fi
if [ ! -x "$python" ] || ! "$python" -c "import monailabel" >/dev/null 2>&1; then
    echo "error: no MONAI Label environment at $python" >&2
    echo "make it with:  $repo/scripts/setup_monailabel_env.sh" >&2
    echo "(or point MEDICLIP_LABEL_PYTHON at a python that has monailabel 0.8.5)" >&2
    exit 3
fi

studies="$(cd "$studies" && pwd)"
bundle="$(cd "$bundle" && pwd)"
url="http://$host:$port"
echo "MediCLIP MONAI Label server"
echo "  studies: $studies"
echo "  bundle:  $bundle (model: $bundle/models/model.pt)"
echo "  In 3D Slicer: MONAI Label module > 'MONAI Label server' = $url"
echo "  (API docs: $url/docs; stop with Ctrl-C)"

# this checkout's package, whatever the environment has installed
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
exec "$python" -m mediclip_monai.label start_server \
    --app "$repo/mediclip_monai/label" \
    --studies "$studies" \
    --host "$host" \
    --port "$port" \
    --conf bundle_dir "$bundle" \
    "$@"

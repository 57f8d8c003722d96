# A virtual environment layered on the packages of an interpreter that already has the project's
# dependencies (torch, monai, open_clip, ...): sourced by scripts/setup_monailabel_env.sh and
# scripts/setup_deploy_env.sh, whose servers/apps need a few packages that must not replace the main ones.
#
#   . scripts/layered_venv.sh; make_layered_venv VENV_DIR PYTHON
#
# The venv sees PYTHON's packages through a .pth file that adds that interpreter's site folders after the
# venv's own site-packages, so nothing big is installed again and what the venv installs itself wins. This
# works whether PYTHON is the system's or a virtual environment itself (--system-site-packages would reach
# only the base interpreter, not the packages installed in the user's venv).

make_layered_venv() {
    local venv="$1" python="$2"
    if ! "$python" -c "import torch, monai, open_clip" >/dev/null 2>&1; then
        echo "error: $python lacks torch/monai/open_clip; install the project first (pip install -e .)," >&2
        echo "or name the interpreter that has it: PYTHON=/path/to/python $0" >&2
        return 1
    fi
    if [ ! -x "$venv/bin/python" ]; then
        echo "creating $venv (on the packages of $python)"
        "$python" -m venv "$venv"
    fi
    # The venv reuses compiled packages of $python, so both must be the same Python version.
    version() { "$1" -c 'import sys; print("%d.%d" % sys.version_info[:2])'; }
    if [ "$(version "$venv/bin/python")" != "$(version "$python")" ]; then
        echo "error: $venv was made with Python $(version "$venv/bin/python"), but $python is Python" \
            "$(version "$python"); remove $venv (or give another folder) and run this again" >&2
        return 1
    fi
    # One line per site folder of $python: site.addsitedir appends it to sys.path after the venv's own
    # site-packages and also runs its .pth files (editable installs).
    "$python" - "$venv" <<'PY'
import subprocess, sys
venv = sys.argv[1]
target = subprocess.check_output(
    [f"{venv}/bin/python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True
).strip()
folders = [p for p in sys.path if p.rstrip("/").endswith(("site-packages", "dist-packages")) and p != target]
with open(f"{target}/_mediclip_base_packages.pth", "w") as f:
    f.write("".join(f"import site; site.addsitedir({folder!r})\n" for folder in folders))
PY
}

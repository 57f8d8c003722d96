"""Start the MediCLIP MONAI Label server: ``python -m mediclip_monai.label start_server --studies DIR [...]``.

MONAI Label's own ``monailabel start_server`` (same options: ``--conf KEY VALUE``, ``--port``, ...) with three
differences: ``--app`` is this app's folder and ``--host`` 127.0.0.1 unless given; it serves ``server.py``'s
app (train requests checked when they arrive); and it serves beyond this machine only with MONAI Label's
authentication: asked to bind an address other than loopback while ``MONAI_LABEL_AUTH_ENABLE`` is off, it
refuses to start and says how to turn it on. ``scripts/run_monailabel.sh`` runs it.
"""

from __future__ import annotations

import ipaddress
import os
import sys

from monailabel.config import settings
from monailabel.main import Main

APP_DIR = os.path.dirname(os.path.abspath(__file__))
SERVER_APP = "mediclip_monai.label.server:app"


def is_loopback(host: str) -> bool:
    """Whether ``host`` is an address of this machine only (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to any interface
        return False


def exposure_problem(host: str, auth_enabled: bool) -> str | None:
    """Why serving on ``host`` is refused, or None: beyond loopback, MONAI Label's authentication must be on."""
    if is_loopback(host) or auth_enabled:
        return None
    return (
        f"--host {host}: serving other machines needs MONAI Label's authentication, which is off, so anyone who "
        "can reach the port could read the studies, replace the model and start trainings. Turn it on "
        "(MONAI_LABEL_AUTH_ENABLE=true with MONAI_LABEL_AUTH_REALM_URI=<your Keycloak realm> and "
        "MONAI_LABEL_AUTH_CLIENT_ID, see the README) or keep --host 127.0.0.1 and reach the server through an SSH "
        "tunnel (ssh -L 8000:127.0.0.1:8000 SERVER)"
    )


class ServerMain(Main):
    """``monailabel``'s command line, with this app, its ASGI app and the refusal to serve unprotected."""

    def args_start_server(self, parser):
        super().args_start_server(parser)
        parser.set_defaults(app=APP_DIR, host="127.0.0.1")

    def action_start_server(self, args):
        problem = exposure_problem(args.host, settings.MONAI_LABEL_AUTH_ENABLE)
        if problem:
            sys.exit(f"error: {problem}")
        args.uvicorn_app = SERVER_APP
        super().action_start_server(args)


if __name__ == "__main__":
    ServerMain(actions="start_server").run()

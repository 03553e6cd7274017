"""Entry point: ``python -m modeldeploy [flags]`` runs the operator against the current cluster."""

from __future__ import annotations

import logging
import socket
import sys

import kopf

from modeldeploy import handlers
from modeldeploy.settings import load_settings


def main(argv: list[str] | None = None) -> int:
    settings = load_settings(sys.argv[1:] if argv is None else argv)
    handlers.configure(settings)
    kopf.configure(verbose=False, log_format=kopf.LogFormat.FULL)
    logging.getLogger("modeldeploy").setLevel(logging.INFO)
    # kopf logs every handler success at INFO (one line per child event); the operator's own
    # line per reconcile that changed something is the useful one.
    logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    kopf.run(
        standalone=True,
        # kopf's default identity asks the passwd database for the user name, and a container
        # running as an arbitrary uid (65532 here) has no entry: the pod would crash at start.
        identity=f"modeldeploy@{socket.gethostname()}",  # type: ignore[arg-type]  # a NewType of str
        clusterwide=not settings.namespaces,
        namespaces=list(settings.namespaces),
        liveness_endpoint=(
            f"http://0.0.0.0:{settings.health_port}/healthz" if settings.health_port else None
        ),
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Entry point: ``python -m modeldeploy [flags]`` runs the operator against the current cluster."""

from __future__ import annotations

import logging
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
        clusterwide=not settings.namespaces,
        namespaces=list(settings.namespaces),
        liveness_endpoint=(
            f"http://0.0.0.0:{settings.health_port}/healthz" if settings.health_port else None
        ),
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

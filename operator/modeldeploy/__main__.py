"""Entry point: ``python -m modeldeploy [flags]`` runs the operator against the current cluster.

With ``--leader-election`` (the installed manifests turn it on; two replicas run) the process
first stands by until it holds the Lease, then runs kopf. On SIGTERM the leader stops kopf and
releases the Lease, so that the standby leads at its next try (about a second); a leader that
cannot renew the Lease stops reconciling at once and exits, and its restart stands by.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import socket
import sys
import threading
import uuid

import kopf
from prometheus_client import start_http_server

from modeldeploy import handlers, health, kube
from modeldeploy.settings import Settings, load_settings

logger = logging.getLogger("modeldeploy")

EXIT_LOST_LEASE = 3


def _run_kopf(settings: Settings, identity: str) -> None:
    """kopf until SIGTERM (kopf's own handler stops it gracefully). No stop flag: kopf waits for
    any flag in an executor thread, which then blocks the shutdown of its loop."""
    kopf.run(
        standalone=True,
        # kopf's default identity asks the passwd database for the user name, and a container
        # running as an arbitrary uid (65532 here) has no entry: the pod would crash at start.
        identity=identity,  # type: ignore[arg-type]  # a NewType of str
        clusterwide=not settings.namespaces,
        namespaces=list(settings.namespaces),
    )


def main(argv: list[str] | None = None) -> int:
    settings = load_settings(sys.argv[1:] if argv is None else argv)
    # Metrics and probes are served from the start, by a standby too.
    if settings.metrics_port:
        start_http_server(settings.metrics_port)
    handlers.configure(dataclasses.replace(settings, metrics_port=0))
    kopf.configure(verbose=False, log_format=kopf.LogFormat.FULL)
    logger.setLevel(logging.INFO)
    # kopf logs every handler success at INFO (one line per child event); the operator's own
    # line per reconcile that changed something is the useful one.
    logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    # The election module logs every renewal and every poll at INFO; transitions are ours.
    logging.getLogger("leaderelection").setLevel(logging.WARNING)
    # Unique per process (the pod name alone repeats across restarts of the same pod).
    identity = f"modeldeploy@{socket.gethostname()}_{uuid.uuid4().hex[:8]}"
    state = health.Health(identity)
    handlers.use_health(state)
    if settings.health_port:
        health.serve(state, settings.health_port)
    if not settings.leader_election:
        state.lead()
        _run_kopf(settings, identity)
        return 0

    leading, lost = threading.Event(), threading.Event()

    def on_lost() -> None:
        if not lost.is_set():
            logger.error("lost the leader Lease: stopping at once")
            lost.set()
            os.kill(os.getpid(), signal.SIGTERM)  # kopf stops as on any SIGTERM

    lock = kube.LeaseLock(
        kube.Kube(settings), settings.lease_name, settings.lease_namespace, identity
    )
    kube.run_election(lock, on_leading=leading.set, on_lost=on_lost)
    logger.info(
        "standing by for Lease %s/%s as %s", settings.lease_namespace, settings.lease_name, identity
    )
    leading.wait()  # SIGTERM meanwhile ends the process: a standby holds nothing
    logger.info(
        "leading: Lease %s/%s held by %s", settings.lease_namespace, settings.lease_name, identity
    )
    state.lead()
    try:
        _run_kopf(settings, identity)  # returns on SIGTERM, ours (on_lost) or the kubelet's
    finally:
        state.stand_by()
        if not lost.is_set() and lock.release():
            logger.info("released the leader Lease")
    if lost.is_set():
        os._exit(EXIT_LOST_LEASE)  # the election thread must not take the lease back
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

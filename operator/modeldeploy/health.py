"""The operator's own probes, served from a thread so that a standby answers them too.

- ``/healthz`` (liveness): 200 while the process can work: a standby, or a leader whose event
  loop ticked recently (a wedged loop is restarted by the kubelet);
- ``/readyz`` (readiness): 200 for the leader and for a standby, with the role in the body. A
  standby that failed readiness would stop every rolling update of the operator's Deployment
  (the new pods could only become ready by leading, which the old leader prevents);
- ``/leader``: 200 only on the leader, 503 on a standby, for whatever must reach the leader only
  (a readiness gate or a Service that scrapes the leader's metrics).
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from modeldeploy import metrics

STALE_LOOP_SECONDS = 60.0


class Health:
    """The role and the liveness of the reconcile loop, shared by the election and kopf."""

    def __init__(self, identity: str = "") -> None:
        self.identity = identity
        self._lock = threading.Lock()
        self._leader = False
        self._beat: float | None = None
        metrics.LEADER.set(0)

    def lead(self) -> None:
        with self._lock:
            self._leader = True
        metrics.LEADER.set(1)

    def stand_by(self) -> None:
        with self._lock:
            self._leader = False
            self._beat = None
        metrics.LEADER.set(0)

    def beat(self) -> None:
        """Called from the operator's event loop while it leads."""
        with self._lock:
            self._beat = time.monotonic()

    @property
    def role(self) -> str:
        with self._lock:
            return "leader" if self._leader else "standby"

    def alive(self) -> bool:
        with self._lock:
            if not self._leader or self._beat is None:
                return True
            return time.monotonic() - self._beat < STALE_LOOP_SECONDS


def serve(health: Health, port: int, host: str = "0.0.0.0") -> ThreadingHTTPServer:  # noqa: S104 - probes come from the kubelet
    """Start the probe server in a daemon thread; returns it (``shutdown()`` stops it)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            role = health.role
            if self.path == "/healthz":
                code = 200 if health.alive() else 500
            elif self.path == "/readyz":
                code = 200
            elif self.path == "/leader":
                code = 200 if role == "leader" else 503
            else:
                code = 404
            body = json.dumps(
                {"role": role, "identity": health.identity, "alive": health.alive()}
            ).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            """Probes every few seconds are not worth a log line."""

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="health", daemon=True).start()
    return server

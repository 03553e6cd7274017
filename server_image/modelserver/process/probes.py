"""The probes' own listener: `/v2/health/live`, `/v2/health/ready` and `/metrics`, served by the
supervisor.

Workers can be saturated by inference (a probe waiting behind seconds of work makes the kubelet
restart a busy pod) or be restarting; the supervisor process does nothing else, so it answers at
once. It reads the workers' readiness from their shared flags. One request per connection,
`Connection: close`, non-blocking sockets polled by the supervisor's loop between its other duties.

`/metrics` here is every worker's metrics, as on the inference port: a NetworkPolicy can then let
scrapers (Prometheus, the operator's canary analysis) reach the metrics without reaching predict.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import time
from collections.abc import Callable

from modelserver.process.readiness import Readiness

LIVE = b"/v2/health/live"
READY = b"/v2/health/ready"
METRICS = b"/metrics"
_MAX_REQUEST = 8192
_CLIENT_TIMEOUT = 5.0  # a probe connection that sends no full request within this is closed


def _answer(
    status: int, reason: bytes, body: bytes, content_type: bytes = b"application/json"
) -> bytes:
    return (
        b"HTTP/1.1 %d %s\r\ncontent-type: %s\r\ncontent-length: %d\r\n"
        % (status, reason, content_type, len(body))
        + b"connection: close\r\n\r\n"
        + body
    )


_LIVE = _answer(200, b"OK", b'{"live":true}')
_READY = _answer(200, b"OK", b'{"ready":true}')
_NOT_READY = _answer(503, b"Service Unavailable", b'{"ready":false}')
_NOT_FOUND = _answer(
    404,
    b"Not Found",
    b'{"error":"this port serves /v2/health/live, /v2/health/ready and /metrics"}',
)
_BAD = _answer(400, b"Bad Request", b'{"error":"malformed request"}')


class HealthListener:
    """Accepts probe connections and answers them from the readiness flags."""

    def __init__(
        self,
        host: str,
        port: int,
        readiness: Readiness,
        metrics: Callable[[], tuple[bytes, bytes]] | None = None,
    ) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.create_server((host, port), family=family, backlog=64)  # OSError: in use
        sock.setblocking(False)
        self._sock = sock
        self._readiness = readiness
        self._metrics = metrics  # () -> (content type, Prometheus text)
        self._selector = selectors.DefaultSelector()
        self._selector.register(sock, selectors.EVENT_READ)
        self._pending: dict[socket.socket, tuple[bytearray, float]] = {}

    def close(self) -> None:
        """Closes every socket (in a forked worker, or at exit)."""
        for client in list(self._pending):
            client.close()
        self._pending.clear()
        self._selector.close()
        self._sock.close()

    def serve(self, timeout: float) -> None:
        """Waits up to `timeout` seconds for probes and answers those that arrived."""
        for key, _ in self._selector.select(timeout):
            if key.fileobj is self._sock:
                self._accept()
            else:
                self._read(key.fileobj)  # type: ignore[arg-type]
        now = time.monotonic()
        for client, (_, since) in list(self._pending.items()):
            if now - since > _CLIENT_TIMEOUT:
                self._drop(client)

    def _accept(self) -> None:
        with contextlib.suppress(BlockingIOError, InterruptedError):
            while True:
                client, _ = self._sock.accept()
                client.setblocking(False)
                self._pending[client] = (bytearray(), time.monotonic())
                self._selector.register(client, selectors.EVENT_READ)

    def _read(self, client: socket.socket) -> None:
        buffer, _ = self._pending[client]
        try:
            data = client.recv(_MAX_REQUEST)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._drop(client)
            return
        buffer += data
        if b"\r\n\r\n" not in buffer and len(buffer) < _MAX_REQUEST:
            return
        with contextlib.suppress(OSError):
            # Probe answers are a few hundred bytes and leave at once; metrics can be tens of
            # kilobytes: a bounded blocking send (the scraper reads them as they come).
            client.settimeout(_CLIENT_TIMEOUT)
            client.sendall(self._respond(bytes(buffer)))
        self._drop(client)

    def _respond(self, request: bytes) -> bytes:
        line = request.split(b"\r\n", 1)[0].split(b" ")
        if len(line) != 3 or b"\r\n\r\n" not in request:
            return _BAD
        path = line[1].split(b"?", 1)[0].rstrip(b"/")
        if path == LIVE:
            return _LIVE
        if path == READY:
            return _READY if self._readiness.ready else _NOT_READY
        if path == METRICS and self._metrics is not None:
            content_type, text = self._metrics()
            return _answer(200, b"OK", text, content_type)
        return _NOT_FOUND

    def _drop(self, client: socket.socket) -> None:
        self._selector.unregister(client)
        del self._pending[client]
        client.close()

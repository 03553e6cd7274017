"""The gate in front of the data plane: the pod's rate limit, then the bearer token's decision.

Health and metrics pass without either (probes, load balancers and Prometheus carry no token);
every other request, metadata included, is limited and authorized. Refusals are JSON (401 with
`WWW-Authenticate: Bearer`, 403, 429 with `Retry-After`, 503 when the API server cannot review a
token) and are counted with the inference requests in `modelserver_requests_total`.
"""

from __future__ import annotations

from collections.abc import Callable

from modelserver import auth, codec, ratelimit
from modelserver.dataplane import JSON, Client, DataPlane, Reply

OPEN_PATHS = frozenset((b"/", b"/v2/health/live", b"/v2/health/ready", b"/metrics"))


def is_open(path: bytes) -> bool:
    """Whether a path is served without a token or limit (health and metrics)."""
    return path in OPEN_PATHS or (path.startswith(b"/v2/models/") and path.endswith(b"/ready"))


def _refusal(status: int, message: str, headers: bytes = b"") -> Reply:
    return Reply(status, codec.dumps({"error": message}), JSON, headers)


_HEADERS = {
    auth.UNAUTHENTICATED: b"www-authenticate: Bearer\r\n",
    auth.UNAVAILABLE: b"retry-after: 1\r\n",
}


class Gate:
    """Admits a request to the data plane, answering the refused ones itself."""

    def __init__(
        self,
        plane: DataPlane,
        *,
        limiter: ratelimit.RateLimiter | None,
        authorizer: auth.Authorizer | None,
    ) -> None:
        self._plane = plane
        self._limiter = limiter
        self._authorizer = authorizer

    def enter(
        self,
        path: bytes,
        authorization: bytes | None,
        client: Client,
        proceed: Callable[[], None],
        started: float,
    ) -> None:
        """Calls `proceed` (now or once the token is reviewed) or answers the refusal."""
        if self._limiter is not None:
            wait = self._limiter.take()
            if wait:
                seconds = ratelimit.retry_after_seconds(wait)
                reply = _refusal(
                    429,
                    f"rate limit of {self._limiter.rate:g} requests per second exceeded; "
                    f"retry after {seconds} s",
                    b"retry-after: %d\r\n" % seconds,
                )
                self._refuse(path, reply, client, started)
                return
        if self._authorizer is None:
            proceed()
            return

        def decided(decision: auth.Decision) -> None:
            if decision.status == auth.ALLOWED:
                if not client.gone:
                    proceed()
                return
            reply = _refusal(decision.status, decision.message, _HEADERS.get(decision.status, b""))
            self._refuse(path, reply, client, started)

        self._authorizer.decide(authorization, decided)

    def _refuse(self, path: bytes, reply: Reply, client: Client, started: float) -> None:
        protocol = "v1" if path.startswith(b"/v1/") else "v2"
        self._plane.finish(protocol, started, reply, client.respond)

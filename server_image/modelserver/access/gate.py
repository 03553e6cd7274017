"""The gate in front of the data plane: the pod's rate limit, then the bearer token's decision.

Health and metrics pass without either (probes, load balancers and Prometheus carry no token);
every other request, metadata included, is limited and authorized. Refusals are JSON (401 with
`WWW-Authenticate: Bearer`, 403, 429 with `Retry-After`, 503 when the API server cannot review a
token) and are counted with the inference requests in `modelserver_requests_total`.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from modelserver.access import auth, ratelimit
from modelserver.protocols import codec
from modelserver.serving.dataplane import JSON, Client, DataPlane, Reply

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
    """Admits a request to the data plane or says why not; the hot path allocates nothing."""

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

    def check(self, authorization: bytes | None) -> Reply | _Pending | None:
        """None: admitted now; a Reply: refused; PENDING: the token must be reviewed first
        (then `review`)."""
        if self._limiter is not None:
            wait = self._limiter.take()
            if wait:
                seconds = ratelimit.retry_after_seconds(wait)
                return _refusal(
                    429,
                    f"rate limit of {self._limiter.rate:g} requests per second exceeded; "
                    f"retry after {seconds} s",
                    b"retry-after: %d\r\n" % seconds,
                )
        if self._authorizer is None:
            return None
        decision = self._authorizer.cached(authorization)
        if decision is None:
            return PENDING
        return None if decision.status == auth.ALLOWED else _decision_reply(decision)

    def review(
        self, path: bytes, authorization: bytes, client: Client, proceed: Callable[[], None]
    ) -> None:
        """Reviews the token, then calls `proceed` or answers the refusal."""
        assert self._authorizer is not None  # noqa: S101 - check() said PENDING

        def decided(decision: auth.Decision) -> None:
            if decision.status != auth.ALLOWED:
                self.refuse(path, _decision_reply(decision), client)
            elif not client.gone:
                proceed()

        self._authorizer.review(authorization, decided)

    def refuse(self, path: bytes, reply: Reply, client: Client) -> None:
        """Answers a refusal, counted with the inference answers."""
        protocol = "v1" if path.startswith(b"/v1/") else "v2"
        self._plane.finish(protocol, time.perf_counter(), reply, client.respond)


class _Pending:
    """The marker of a request whose token is being reviewed."""


PENDING = _Pending()


def _decision_reply(decision: auth.Decision) -> Reply:
    return _refusal(decision.status, decision.message, _HEADERS.get(decision.status, b""))

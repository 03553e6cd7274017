"""Who may call the model: bearer tokens checked by the Kubernetes API, decisions cached.

A token is authenticated with a TokenReview and its user authorized with a SubjectAccessReview
(`create` on `modeldeployments/predict` named after the resource), so RBAC decides. The answer is
cached per worker, keyed by the token: allowed for at most `allow_ttl` seconds (never past the
token's own expiry), refused for `deny_ttl` seconds, at most `max_entries` tokens (least recently
used dropped first). A cached decision costs a dictionary lookup; a miss runs the two reviews in a
thread, never on the event loop, and requests carrying the same token while it runs wait for that
one review. An API server that cannot answer is 503: no token passes unchecked.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import concurrent.futures
import json
import logging
import time
from collections.abc import Callable
from typing import NamedTuple

from modelserver.access import kubeapi

log = logging.getLogger("modelserver.auth")  # the name its log lines have always carried

ALLOWED = 200
UNAUTHENTICATED = 401
FORBIDDEN = 403
UNAVAILABLE = 503
# Outcomes of reviews, as counted in metrics.
OUTCOMES = {ALLOWED: "allowed", UNAUTHENTICATED: "unauthenticated", FORBIDDEN: "denied"}


class Decision(NamedTuple):
    """The answer for a token: ALLOWED, or the HTTP status and message of the refusal."""

    status: int
    message: str


_MISSING = Decision(
    UNAUTHENTICATED, "missing bearer token: send the header Authorization: Bearer <token>"
)
_INVALID = Decision(UNAUTHENTICATED, "the bearer token is not valid")
_ALLOW = Decision(ALLOWED, "")

# What the reviewer does with a token in a thread: a decision and the longest time it may be
# cached (the token's remaining lifetime; infinity when only the TTLs bound it).
Review = Callable[[str], tuple[Decision, float]]
Done = Callable[[Decision], None]


class Reviewer:
    """Runs the two reviews against the API server (blocking; called in a thread)."""

    def __init__(self, api: kubeapi.ApiServer, attributes: kubeapi.ResourceAttributes) -> None:
        self._api = api
        self._attributes = attributes

    def __call__(self, token: str) -> tuple[Decision, float]:
        user = self._api.review_token(token)
        if user is None:
            return _INVALID, float("inf")
        allowed, reason = self._api.may(user, self._attributes)
        if allowed:
            return _ALLOW, _seconds_left(token)
        attributes = self._attributes
        message = (
            f"{user.username} may not {attributes.verb} {attributes.resource}/"
            f"{attributes.subresource} {attributes.name!r} in namespace {attributes.namespace!r}"
        )
        return Decision(FORBIDDEN, message + (f": {reason}" if reason else "")), float("inf")


def _seconds_left(token: str) -> float:
    """Seconds until a JWT's `exp` (read, not verified: the API server did that), or infinity."""
    parts = token.split(".")
    if len(parts) != 3:
        return float("inf")
    try:
        payload = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
        return float(payload["exp"]) - time.time()
    except (ValueError, KeyError, TypeError):
        return float("inf")


class Authorizer:
    """Decides on bearer tokens for one worker, from its cache or through the reviewer."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        review: Review,
        *,
        allow_ttl: float,
        deny_ttl: float,
        max_entries: int,
        max_pending: int = 64,
        observe: Callable[[str], None] = lambda outcome: None,
    ) -> None:
        self._loop = loop
        self._review = review
        self._allow_ttl = allow_ttl
        self._deny_ttl = deny_ttl
        self._max_entries = max_entries
        self._max_pending = max_pending
        self._observe = observe
        # Authorization header -> (monotonic expiry, decision); least recently used first
        self._cache: collections.OrderedDict[bytes, tuple[float, Decision]] = (
            collections.OrderedDict()
        )
        self._pending: dict[bytes, list[Done]] = {}
        self._executor = concurrent.futures.ThreadPoolExecutor(4, thread_name_prefix="review")

    def cached(self, authorization: bytes | None) -> Decision | None:
        """The decision for an Authorization header when it needs no review (the hot path: a
        dictionary lookup keyed by the header as sent); None when `review` must decide."""
        if authorization is None:
            return _MISSING
        cached = self._cache.get(authorization)
        if cached is None:
            return None
        if cached[0] > time.monotonic():
            self._cache.move_to_end(authorization)
            return cached[1]
        del self._cache[authorization]
        return None

    def review(self, authorization: bytes, done: Done) -> None:
        """Decides on a header `cached` did not know, in a thread; calls `done` on the loop."""
        token = _bearer(authorization)
        if token is None:
            done(_MISSING)
            return
        if not all(32 < c < 127 for c in token):
            done(_INVALID)
            return
        waiting = self._pending.get(authorization)
        if waiting is not None:
            waiting.append(done)
            return
        if len(self._pending) >= self._max_pending:
            done(Decision(UNAVAILABLE, "too many token reviews in progress; retry"))
            return
        self._pending[authorization] = [done]
        text = token.decode("ascii")
        future = self._loop.run_in_executor(self._executor, self._review, text)
        future.add_done_callback(lambda finished: self._reviewed(authorization, finished))

    def _reviewed(self, token: bytes, future: asyncio.Future[tuple[Decision, float]]) -> None:
        waiting = self._pending.pop(token, [])
        try:
            decision, lifetime = future.result()
        except kubeapi.ApiUnavailableError as error:
            log.error("token review failed: %s", error)
            self._observe("error")
            decision = Decision(UNAVAILABLE, "the Kubernetes API server could not review the token")
        except Exception:
            log.exception("token review failed")
            self._observe("error")
            decision = Decision(UNAVAILABLE, "the token could not be reviewed")
        else:
            self._observe(OUTCOMES.get(decision.status, "error"))
            ttl = self._allow_ttl if decision.status == ALLOWED else self._deny_ttl
            self._remember(token, decision, min(ttl, lifetime))
        for done in waiting:
            done(decision)

    def _remember(self, token: bytes, decision: Decision, ttl: float) -> None:
        if ttl <= 0 or self._max_entries <= 0:
            return
        cache = self._cache
        cache[token] = (time.monotonic() + ttl, decision)
        cache.move_to_end(token)
        while len(cache) > self._max_entries:
            cache.popitem(last=False)

    def close(self) -> None:
        """Stops the review threads (at exit)."""
        self._executor.shutdown(wait=False, cancel_futures=True)


def _bearer(authorization: bytes | None) -> bytes | None:
    """The token of `Bearer <token>` (scheme case-insensitive), or None."""
    if authorization is None or len(authorization) < 8:
        return None
    if authorization[:7].lower() != b"bearer ":
        return None
    return authorization[7:].strip() or None

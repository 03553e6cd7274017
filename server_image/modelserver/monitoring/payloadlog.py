"""Payload logging: sampled requests and their responses sent to an HTTP sink as CloudEvents in
binary mode, in the background, never slowing a prediction.

On the hot path (`log`, on the worker's loop, once per answered request) a request is sampled,
its redacted features are replaced (by null) in a copy, and the pair is appended to a bounded queue;
when the queue is full the pair is dropped and counted. Nothing leaves the pod unredacted: redaction
happens before queueing.

A background task on the same loop takes up to `batch` pairs at a time and posts each event over one
keep-alive connection (`ce-type` io.modeldeploy.inference.request / .response, the same `ce-id` for
both, `ce-modelname` / `ce-modelversion` extensions, the body `{"instances": ...}` /
`{"predictions": ...}`). A post is retried with exponential backoff only when the sink certainly
did not take the event (see `_deliver`), so the sink never gets an event twice; when every attempt
fails the rest of the batch is counted failed without trying (the sink is down), so a dead sink
costs a connection attempt per batch and a slow one at most `timeout` per event.
`modelserver_payload_log_events_total{model,outcome}` counts sent, dropped and failed events.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import random
import ssl
import time
import urllib.parse
import uuid
from collections.abc import Callable, Sequence

import httptools
import numpy as np
from prometheus_client import CollectorRegistry, Counter

from modelserver.protocols import codec

log = logging.getLogger("modelserver.payloadlog")  # the name its log lines have always carried

REQUEST_TYPE = b"io.modeldeploy.inference.request"
RESPONSE_TYPE = b"io.modeldeploy.inference.response"
OUTCOMES = ("sent", "dropped", "failed")


class _Pair:
    """One sampled request and its response, waiting to be sent."""

    __slots__ = ("event_id", "method", "result", "time", "x")

    def __init__(self, x: np.ndarray, method: str, result: np.ndarray) -> None:
        self.event_id = uuid.uuid4().hex
        self.time = time.time()
        self.x = x
        self.method = method
        self.result = result


class _Response:
    """The sink's answer, parsed by httptools. Its verdict is the status, known once the headers
    are in; the rest is read only to tell whether the connection can be used again, which
    httptools only answers while the message completes (after that, always False)."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.headers_complete = False
        self.complete = False
        self.keep_alive = False

    def on_headers_complete(self) -> None:
        self.headers_complete = True

    def on_message_complete(self) -> None:
        self.complete = True
        self.keep_alive = self.parser.should_keep_alive()


class SinkError(Exception):
    """The sink did not take an event, or it is unknown whether it did."""


class _NotTakenError(SinkError):
    """The sink certainly did not take the event: sending it again cannot duplicate it."""


class PayloadLogger:
    """One worker's payload log (see the module docstring)."""

    def __init__(
        self,
        registry: CollectorRegistry | None,
        *,
        model: str,
        version: str | None,
        url: str,
        sample_rate: float,
        redact: Sequence[int],
        max_queue: int,
        batch: int = 64,
        attempts: int = 3,
        backoff_seconds: float = 0.1,
        timeout_seconds: float = 2.0,
        sample: Callable[[], float] = random.random,
    ) -> None:
        self._model = model
        self._version = version or ""
        parts = urllib.parse.urlsplit(url)
        self._secure = parts.scheme == "https"
        self._host = parts.hostname or "localhost"
        self._port = parts.port or (443 if self._secure else 80)
        self._path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self._host_header = parts.netloc.rsplit("@", 1)[-1].encode()
        self._sample_rate = sample_rate
        self._sample = sample
        self._redact = np.asarray(sorted(set(redact)), dtype=np.intp)
        self._max_pairs = max(1, max_queue // 2)  # two events a pair
        self._batch = batch
        self._attempts = attempts
        self._backoff = backoff_seconds
        self._timeout = timeout_seconds
        self._queue: collections.deque[_Pair] = collections.deque()
        self._wake = asyncio.Event()
        self._counts = dict.fromkeys(OUTCOMES, 0)
        self._connection: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self._task: asyncio.Task[None] | None = None
        self._events = Counter(
            "modelserver_payload_log_events",
            "Payload-log CloudEvents by outcome: sent, dropped (queue full) or failed (sink).",
            ["model", "outcome"],
            registry=registry,
        )
        self._static_headers = (
            b"ce-specversion: 1.0\r\nce-source: /modelserver/"
            + urllib.parse.quote(model).encode()
            + b"\r\nce-modelname: "
            + model.encode()
            + b"\r\nce-modelversion: "
            + self._version.encode()
            + b"\r\ncontent-type: application/json\r\n"
        )

    @property
    def queued(self) -> int:
        """Events waiting to be sent."""
        return 2 * len(self._queue)

    # -- the hot path -----------------------------------------------------------------------------

    def log(self, x: np.ndarray, method: str, result: np.ndarray) -> None:
        """Samples, redacts and queues one answered request, or drops it when the queue is full."""
        if self._sample_rate < 1 and self._sample() >= self._sample_rate:
            return
        if len(self._queue) >= self._max_pairs:
            self._counts["dropped"] += 2
            return
        if len(self._redact):
            x = x.astype(np.float64)  # a copy: the request's own rows stay as they are
            x[:, self._redact[self._redact < x.shape[1]]] = np.nan  # sent as null
        self._queue.append(_Pair(x, method, result))
        self._wake.set()

    # -- the background sender --------------------------------------------------------------------

    def start(self) -> None:
        """Starts sending (on the running loop)."""
        self._task = asyncio.ensure_future(self._run())

    async def stop(self, timeout: float) -> None:
        """Gives the queue up to `timeout` seconds to empty, then stops sending."""
        deadline = time.monotonic() + timeout
        while self._queue and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._close()
        self.flush()

    async def _run(self) -> None:
        while True:
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
            pairs = [self._queue.popleft() for _ in range(min(self._batch, len(self._queue)))]
            await self._send_batch(pairs)

    async def _send_batch(self, pairs: list[_Pair]) -> None:
        for position, pair in enumerate(pairs):
            for kind, body in (
                (
                    REQUEST_TYPE,
                    codec.dumps({"instances": codec.jsonable(pair.x), "method": pair.method}),
                ),
                (RESPONSE_TYPE, codec.dumps({"predictions": codec.jsonable(pair.result)})),
            ):
                try:
                    await self._deliver(pair, kind, body)
                except (OSError, TimeoutError, SinkError, httptools.HttpParserError) as error:
                    self._close()
                    log.warning(
                        "payload log: the sink did not take an event: %s", str(error) or "timeout"
                    )
                    # The sink is down or refuses: the rest of the batch is not tried (failed).
                    failed = 2 * (len(pairs) - position) - (1 if kind == RESPONSE_TYPE else 0)
                    self._counts["failed"] += failed
                    return
                self._counts["sent"] += 1

    async def _deliver(self, pair: _Pair, kind: bytes, body: bytes) -> None:
        """Posts one event, retrying while the sink certainly did not take it.

        An event the sink took must never be sent again (it would hold it twice), so only two
        failures are retried: no connection could be opened (refused, unreachable, a failed TLS
        handshake, or the connect timed out: not a byte of the event was sent), and a 5xx or 429
        answer (the sink says it did not take it, and may later). Once the event was written,
        anything else is final: a 2xx is sent; another answer is a refusal; and no answer (a
        timeout, a reset, a close before the status line) is not retried either, because the
        sink may have taken the event before it broke. A kept-alive connection the sink has
        already closed is not written to (`_connect` opens a new one), so only a close racing
        with the request costs an event.
        """
        delay = self._backoff
        for attempt in range(1, self._attempts + 1):
            try:
                await self._post(pair, kind, body)
                return
            except _NotTakenError:
                self._close()
                if attempt == self._attempts:
                    raise
            await asyncio.sleep(delay)
            delay *= 2

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """The kept-alive connection while the sink keeps it open, else a new one."""
        if self._connection is not None and self._connection[0].at_eof():
            self._close()  # the sink closed it while idle
        if self._connection is None:
            context = ssl.create_default_context() if self._secure else None
            try:
                self._connection = await asyncio.wait_for(
                    asyncio.open_connection(self._host, self._port, ssl=context), self._timeout
                )
            except (OSError, TimeoutError) as error:
                raise _NotTakenError(f"cannot connect: {str(error) or 'timeout'}") from error
        return self._connection

    async def _post(self, pair: _Pair, kind: bytes, body: bytes) -> None:
        reader, writer = await self._connect()
        await asyncio.wait_for(self._exchange(reader, writer, pair, kind, body), self._timeout)

    async def _exchange(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        pair: _Pair,
        kind: bytes,
        body: bytes,
    ) -> None:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(pair.time)).encode()
        writer.write(
            b"POST %s HTTP/1.1\r\nhost: %s\r\ncontent-length: %d\r\nce-id: %s\r\nce-type: %s\r\n"
            b"ce-time: %s\r\n%s\r\n"
            % (
                self._path.encode(),
                self._host_header,
                len(body),
                pair.event_id.encode(),
                kind,
                stamp,
                self._static_headers,
            )
            + body
        )
        await writer.drain()
        response = _Response()
        while not response.complete:
            data = await reader.read(65536)
            if not data:
                # An answer without a length ends when the sink closes (RFC 9112 section 6.3):
                # with its headers in, it is complete (and one cut short still has its status).
                if not response.headers_complete:
                    raise SinkError("the sink closed the connection without answering")
                break
            response.parser.feed_data(data)
        if not response.keep_alive:
            self._close()
        status = response.parser.get_status_code()
        if status >= 500 or status == 429:
            raise _NotTakenError(f"the sink answered {status}")
        if not 200 <= status < 300:
            raise SinkError(f"the sink answered {status}")

    def _close(self) -> None:
        if self._connection is not None:
            self._connection[1].close()
            self._connection = None

    def flush(self) -> None:
        """Moves the counts into prometheus_client (with the other metrics)."""
        for outcome, count in self._counts.items():
            if count:
                self._events.labels(self._model, outcome).inc(count)
                self._counts[outcome] = 0


def redacted_indices(redact: Sequence[str], feature_names: Sequence[str] | None) -> list[int]:
    """The column indices that `redact` (names or indices) names; ValueError for an unknown name."""
    indices = []
    for item in redact:
        if item.isdigit():
            indices.append(int(item))
        elif feature_names is not None and item in feature_names:
            indices.append(list(feature_names).index(item))
        else:
            known = ", ".join(feature_names) if feature_names else "none (use indices)"
            raise ValueError(
                f"--payload-log-redact names feature {item!r}, which the model does not have; "
                f"its feature names: {known}"
            )
    return indices

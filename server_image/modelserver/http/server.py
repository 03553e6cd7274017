"""HTTP/1.1 on an asyncio Protocol with the httptools parser: only translates HTTP.

A general web framework costs more per request than the model call it wraps once requests are
batched, so this layer is kept to what the server needs: keep-alive, pipelining in order, body and
header limits, `Expect: 100-continue`, X-Request-ID, idle timeouts and draining. Routing to the data
plane is a few byte-string comparisons (`Router`); everything about models lives in the data plane.

Hostile clients are bounded here: the request line and headers are counted while they arrive (431
past 64 KiB, nothing accumulated); a body is admitted against the worker's bytes in flight before
it is read (503 beyond); a connection whose answers are not read stops being read, and is aborted
when its client reads nothing for the write timeout.
"""

from __future__ import annotations

import asyncio
import collections
import email.utils
import logging
import os
import time
import typing
import urllib.parse

import httptools

from modelserver.access.gate import Gate, is_open
from modelserver.core.errors import (
    BadRequestError,
    HeadersTooLargeError,
    InternalError,
    MethodNotAllowedError,
    NotFoundError,
    PayloadTooLargeError,
    RequestError,
    UnavailableError,
)
from modelserver.serving.admission import Admission
from modelserver.serving.dataplane import Client, DataPlane, Reply, error_reply

log = logging.getLogger("modelserver.httpserver")  # the name its log lines have always carried
access_log = logging.getLogger("modelserver.access")

_REASONS = {
    100: "Continue",
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    413: "Payload Too Large",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}
_STATUS_LINES = {
    code: f"HTTP/1.1 {code} {reason}\r\n".encode() for code, reason in _REASONS.items()
}
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_MAX_HEADER_BYTES = 64 * 1024
_MAX_REQUEST_ID = 200
_PIPELINE_LIMIT = 16  # responses owed on one connection before it stops reading
_MAX_DISCARD_BYTES = 64 * 1024 * 1024  # a refused body larger than this is cut off
_REQUEST_TIMEOUT = 30.0  # a request whose headers and body take longer is dropped (slow clients)
_LINGER_SECONDS = 2.0  # after refusing a request mid-stream, input is read and dropped this long
_DRAIN_IDLE_SECONDS = 1.0  # when draining, a connection idle this long is closed


class Router:
    """Maps method and path to the data plane; the only place that knows the URLs."""

    def __init__(self, plane: DataPlane, gate: Gate | None = None) -> None:
        self._plane = plane
        self._gate = gate  # rate limit and authorization (access/gate.py), when configured
        self._static = {
            b"/": plane.root,
            b"/v1/models": plane.models_v1,
            b"/v2/health/live": plane.live,
            b"/v2/health/ready": plane.ready,
            b"/v2": plane.server_metadata,
            b"/v2/": plane.server_metadata,  # the OIP OpenAPI document's spelling
            b"/metrics": plane.metrics,
        }

    def dispatch(
        self,
        method: bytes,
        path: bytes,
        body: bytes,
        header_length: int | None,
        client: Client,
        *,
        authorization: bytes | None = None,
    ) -> None:
        """Calls the data plane for one request; it answers through `client.respond`."""
        if self._gate is None:
            self._route(method, path, body, header_length, client)
            return
        plain = urllib.parse.unquote_to_bytes(path) if b"%" in path else path
        if is_open(plain):
            self._route(method, path, body, header_length, client)
            return

        verdict = self._gate.check(authorization)
        if verdict is None:
            self._route(method, path, body, header_length, client)
        elif isinstance(verdict, Reply):
            self._gate.refuse(plain, verdict, client)
        else:  # PENDING

            def proceed() -> None:
                try:
                    self._route(method, path, body, header_length, client)
                except Exception:
                    # Run after a token review: the connection's own guard is not around it.
                    log.exception("request failed")
                    client.respond(error_reply(InternalError("internal server error")))

            self._gate.review(plain, authorization or b"", client, proceed)

    def _route(
        self,
        method: bytes,
        path: bytes,
        body: bytes,
        header_length: int | None,
        client: Client,
    ) -> None:
        plane = self._plane
        try:
            if b"%" in path:
                path = urllib.parse.unquote_to_bytes(path)
            if method == b"POST":
                if path.startswith(b"/v2/models/") and path.endswith(b"/infer"):
                    name = self._v2_model(path[11:-6])
                    plane.infer_v2(name, body, header_length, client)
                    return
                if path.startswith(b"/v1/models/") and path.endswith(b":predict"):
                    plane.predict_v1(_text(path[11:-8]), body, client)
                    return
                client.respond(self._get(path, method))
                return
            client.respond(self._get(path, method))
        except RequestError as error:
            client.respond(error_reply(error))

    def _get(self, path: bytes, method: bytes) -> Reply:
        plane = self._plane
        handler = self._static.get(path)
        if handler is not None:
            _only(method, b"GET")
            return handler()
        if path.startswith(b"/v2/models/"):
            rest = path[11:]
            if rest.endswith(b"/ready"):
                _only(method, b"GET")
                return plane.model_ready(self._v2_model(rest[:-6]))
            if rest.endswith(b"/infer"):
                _only(method, b"POST")
            _only(method, b"GET")
            return plane.model_metadata(self._v2_model(rest))
        if path.startswith(b"/v1/models/"):
            rest = path[11:]
            if rest.endswith(b":predict"):
                _only(method, b"POST")
            _only(method, b"GET")
            return plane.model_status_v1(_text(rest))
        raise NotFoundError(f"no such endpoint: {_text(path)}")

    def _v2_model(self, name_part: bytes) -> str:
        """The model name of `NAME` or `NAME/versions/VERSION`; an unknown version is 404."""
        name, marker, version = name_part.partition(b"/versions/")
        if marker and _text(version) != self._plane.model_version:
            raise NotFoundError(f"model {_text(name)!r} has no version {_text(version)!r}")
        if b"/" in name:
            raise NotFoundError(f"no such endpoint: /v2/models/{_text(name_part)}")
        return _text(name)


def _only(method: bytes, allowed: bytes) -> None:
    if method != allowed:
        raise MethodNotAllowedError(
            f"method {_text(method)} not allowed here; use {_text(allowed)}"
        )


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "replace")


class HttpServer:
    """Shared settings and the open connections of one worker (for idle timeouts and draining)."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        router: Router,
        *,
        max_body_bytes: int,
        keepalive_timeout: float,
        write_timeout: float,
        log_requests: bool,
        admission: Admission,
    ) -> None:
        self.loop = loop
        self.router = router
        self.max_body_bytes = max_body_bytes
        self.keepalive_timeout = keepalive_timeout
        self.write_timeout = write_timeout
        self.log_requests = log_requests
        self.admission = admission
        self.connections: set[Connection] = set()
        self.draining = False
        self.date = b""
        self._id_prefix = os.urandom(4).hex().encode()
        self._id_counter = 0
        self._timer: asyncio.TimerHandle | None = None
        self._tick()

    def new_connection(self) -> Connection:
        """Protocol factory for `loop.create_server`."""
        return Connection(self)

    def next_request_id(self) -> bytes:
        """An id for a request that came without X-Request-ID: unique per worker, cheap to make."""
        self._id_counter += 1
        return b"%s-%x" % (self._id_prefix, self._id_counter)

    def _tick(self) -> None:
        """Once a second: refresh the Date header and close connections idle or stuck too long."""
        self.date = email.utils.formatdate(usegmt=True).encode()
        now = time.monotonic()
        for connection in list(self.connections):
            connection.close_if_stale(now)
        self._timer = self.loop.call_later(1.0, self._tick)

    def start_draining(self) -> None:
        """Stops keep-alive: every answer from now on says `Connection: close`, and connections
        close after it. Requests arriving on open connections are still served."""
        self.draining = True

    async def wait_closed(self, timeout: float) -> bool:
        """Waits until every connection closed; True if they did within `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while self.connections and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        if self._timer is not None:
            self._timer.cancel()
        left = bool(self.connections)
        for connection in list(self.connections):
            connection.abort()
        return not left


class _Exchange:
    """One request on a connection and, once ready, its encoded response."""

    __slots__ = (
        "connection",
        "data",
        "gone",
        "held",
        "keep_alive",
        "method",
        "path",
        "request_id",
        "started",
    )

    def __init__(
        self,
        connection: Connection,
        request_id: bytes,
        keep_alive: bool,
        method: bytes,
        path: bytes,
    ) -> None:
        self.connection = connection
        self.request_id = request_id
        self.keep_alive = keep_alive
        self.method = method
        self.path = path
        self.started = time.perf_counter()
        self.data: bytes | None = None
        self.gone = False  # the connection was lost: nobody reads the answer (dataplane.Client)
        self.held = 0  # body bytes counted in flight, given back with the answer

    def release(self) -> None:
        """Gives the body bytes back to the worker's admission (once)."""
        if self.held:
            self.connection.server.admission.bytes.give(self.held)
            self.held = 0

    def respond(self, reply: Reply) -> None:
        self.release()
        connection = self.connection
        server = connection.server
        if self.gone:
            return
        if server.draining:
            self.keep_alive = False
        self.data = (
            b"%sdate: %s\r\ncontent-type: %s\r\ncontent-length: %d\r\nx-request-id: %s\r\n"
            b"%s%s\r\n%s"
            % (
                _STATUS_LINES[reply.status],
                server.date,
                reply.content_type,
                len(reply.body),
                self.request_id,
                reply.headers,
                b"" if self.keep_alive else b"connection: close\r\n",
                reply.body,
            )
        )
        if server.log_requests or reply.status >= 500:
            self._log(reply.status)
        connection.flush()

    def _log(self, status: int) -> None:
        access_log.log(
            logging.ERROR if status >= 500 else logging.INFO,
            "%s %s %d",
            _text(self.method),
            _text(self.path),
            status,
            extra={
                "request_id": _text(self.request_id),
                "status": status,
                "duration_ms": round((time.perf_counter() - self.started) * 1000, 3),
            },
        )


class Connection(asyncio.Protocol):
    """One client connection: parses requests, dispatches them, writes responses in order."""

    def __init__(self, server: HttpServer) -> None:
        self.server = server
        self._router = server.router
        self._max_body = server.max_body_bytes
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._exchanges: collections.deque[_Exchange] = collections.deque()
        self._url = b""
        self._body: list[bytes] = []
        self._body_size = 0
        self._header_bytes = 0
        self._in_head = True  # between messages or in a request line and headers
        self._head_bytes = 0  # bytes received while in the head, counted before parsing
        self._held = 0  # body bytes of the message being read, counted in the worker's admission
        self._request_id: bytes | None = None
        self._inference_header: bytes | None = None
        self._authorization: bytes | None = None
        self._expect_continue = False
        self._rejected: RequestError | None = None
        self._discarding = False
        self._in_message = False
        self._last_active = time.monotonic()
        self._write_stalled_since: float | None = None  # answers waiting, none read since
        self._write_buffered = 0
        self._message_started = 0.0
        self._paused = False
        self._write_paused = False
        self._closing = False
        self._broken = False  # the parser failed: nothing more is read from this connection
        self._content_length: int | None = None
        # (body length, method, path, keep-alive) of an upgrade request whose body is awaited
        self._upgrade_wanted: tuple[int, bytes, bytes, bool] | None = None
        self._upgrade_body = bytearray()

    # -- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # create_server gives stream transports (uvloop's do not subclass asyncio.Transport).
        self._transport = typing.cast(asyncio.Transport, transport)
        self.server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        self._forget_exchanges()
        self._release_body()
        self._closing = True

    def data_received(self, data: bytes) -> None:
        self._last_active = time.monotonic()
        if self._broken:
            return
        if self._upgrade_wanted is not None:
            data = self._take_upgrade_body(data, self._upgrade_wanted)
            if not data:
                return
        if self._in_head:
            # Counted before parsing: the parser holds an unfinished header in memory.
            self._head_bytes += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            # The request asked to switch protocols (h2c, websocket). It is served as HTTP/1.1,
            # which RFC 9110 allows; the parser stopped after its headers, so a fresh parser
            # takes the rest (its body first, then any requests after it).
            self._parser = httptools.HttpRequestParser(self)
            self.data_received(data[upgrade.args[0] :])
        except httptools.HttpParserError as error:
            self._reject_and_close(BadRequestError(f"malformed HTTP request: {error}"))
            return
        if self._in_head and self._head_bytes > _MAX_HEADER_BYTES:
            self._reject_and_close(
                HeadersTooLargeError(f"request line and headers exceed {_MAX_HEADER_BYTES} bytes")
            )

    def _take_upgrade_body(self, data: bytes, wanted: tuple[int, bytes, bytes, bool]) -> bytes:
        """Collects the body of an upgrade request; returns the bytes that follow it."""
        needed = wanted[0] - len(self._upgrade_body)
        self._upgrade_body += data[:needed]
        if len(self._upgrade_body) < wanted[0]:
            return b""
        self._upgrade_wanted = None
        method, path, keep_alive = wanted[1:]
        self._dispatch(method, path, bytes(self._upgrade_body), keep_alive)
        self._upgrade_body = bytearray()
        return data[needed:]

    def pause_writing(self) -> None:
        self._write_paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        self._update_reading()

    # -- httptools callbacks ------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._in_message = True
        self._message_started = self._last_active
        self._url = b""
        self._body = []
        self._body_size = 0
        self._header_bytes = 0
        self._request_id = None
        self._inference_header = None
        self._authorization = None
        self._expect_continue = False
        self._rejected = None
        self._discarding = False
        self._content_length = None

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._header_bytes += len(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        size = len(name)
        self._header_bytes += size + len(value)
        if size == 12 and name.lower() == b"x-request-id":
            self._request_id = value
        elif size == 14 and name.lower() == b"content-length":
            self._content_length = int(value) if value.isdigit() else None
            if value.isdigit() and int(value) > self._max_body:
                self._rejected = PayloadTooLargeError(
                    f"request body of {int(value)} bytes exceeds the limit of {self._max_body}"
                )
        elif size == 31 and name.lower() == b"inference-header-content-length":
            self._inference_header = value
        elif size == 13 and name.lower() == b"authorization":
            self._authorization = value
        elif size == 6 and name.lower() == b"expect":
            self._expect_continue = value.lower() == b"100-continue"

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._head_bytes = 0
        if self._header_bytes > _MAX_HEADER_BYTES:
            self._rejected = HeadersTooLargeError(
                f"request line and headers exceed {_MAX_HEADER_BYTES} bytes"
            )
        if self._rejected is None and self._content_length:
            self._hold(self._content_length)
        if self._rejected is not None:
            self._refuse_body(self._rejected)
        elif self._expect_continue and self._transport is not None:
            self._transport.write(_CONTINUE)

    def on_body(self, body: bytes) -> None:
        self._body_size += len(body)
        if self._discarding:
            if self._body_size > _MAX_DISCARD_BYTES and self._transport is not None:
                self._transport.close()
            return
        if self._body_size > self._max_body:
            self._refuse_body(
                PayloadTooLargeError(f"request body exceeds the limit of {self._max_body} bytes")
            )
            return
        if self._content_length is None:  # chunked: admitted as it arrives
            self._hold(len(body))
            if self._rejected is not None:
                self._refuse_body(self._rejected)
                return
        self._body.append(body)

    def _hold(self, size: int) -> None:
        """Counts body bytes into the worker's admission, or marks the request refused (503)."""
        try:
            self.server.admission.bytes.take(size)
        except UnavailableError as error:
            self._rejected = error
            return
        self._held += size

    def _release_body(self) -> None:
        if self._held:
            self.server.admission.bytes.give(self._held)
            self._held = 0

    def _refuse_body(self, error: RequestError) -> None:
        """Answers now and drops the body; the connection closes after the answer."""
        self._discarding = True
        self._body = []
        self._release_body()
        self._queue_reply(error_reply(error), keep_alive=False)

    def on_message_complete(self) -> None:
        self._in_message = False
        self._in_head = True
        if self._discarding:
            if self._transport is not None and not self._exchanges:
                self._transport.close()
            return
        parser = self._parser
        url = self._url
        query = url.find(b"?")
        path = url if query < 0 else url[:query]
        keep_alive = parser.should_keep_alive() and not self._closing
        if parser.should_upgrade() and self._content_length:
            # The parser leaves the body of an upgrade request unread: collect it first.
            self._upgrade_wanted = (self._content_length, parser.get_method(), path, keep_alive)
            return
        self._dispatch(parser.get_method(), path, self._joined_body(), keep_alive)

    def _joined_body(self) -> bytes:
        return self._body[0] if len(self._body) == 1 else b"".join(self._body)

    def _dispatch(self, method: bytes, path: bytes, body: bytes, keep_alive: bool) -> None:
        exchange = _Exchange(self, self._checked_request_id(), keep_alive, method, path)
        exchange.held = self._held
        self._held = 0
        self._exchanges.append(exchange)
        if len(self._exchanges) >= _PIPELINE_LIMIT:
            self._update_reading()
        header_length = None
        if self._inference_header is not None:
            if not self._inference_header.isdigit():
                exchange.respond(
                    error_reply(BadRequestError("Inference-Header-Content-Length must be a number"))
                )
                return
            header_length = int(self._inference_header)
        try:
            self._router.dispatch(
                method, path, body, header_length, exchange, authorization=self._authorization
            )
        except Exception:
            # A bug must cost one request, not the connection: answer 500 and go on.
            log.exception("request failed", extra={"request_id": _text(exchange.request_id)})
            if exchange.data is None:
                exchange.respond(error_reply(InternalError("internal server error")))

    # -- writing ------------------------------------------------------------------------------

    def flush(self) -> None:
        """Writes every finished response that is next in line (pipelined requests stay ordered)."""
        exchanges = self._exchanges
        transport = self._transport
        if transport is None:
            return
        while exchanges and exchanges[0].data is not None:
            exchange = exchanges.popleft()
            if transport.is_closing():
                self._forget_exchanges()
                return
            transport.write(exchange.data)  # type: ignore[arg-type]
            self._last_active = time.monotonic()
            if not exchange.keep_alive:
                self._closing = True
                self._forget_exchanges()
                if self._broken:
                    self._linger(transport)
                    return
                if self._discarding and self._in_message:
                    # A refused body is still arriving: closing now could reset the connection
                    # before the client reads the answer, so read and drop the rest first.
                    return
                transport.close()
                return
        if self._paused and len(exchanges) < _PIPELINE_LIMIT:
            self._update_reading()

    def _forget_exchanges(self) -> None:
        """Requests whose answers can no longer be sent: their work is dropped, their bytes
        given back."""
        for exchange in self._exchanges:
            exchange.gone = True
            exchange.release()
        self._exchanges.clear()

    def _linger(self, transport: asyncio.Transport) -> None:
        """After refusing a request mid-stream: the answer goes out with our end closed, and what
        the client still sends is dropped (closing at once could reset the connection before the
        client read the answer) until it closes or the linger time is over."""
        if transport.can_write_eof():
            transport.write_eof()
        self.server.loop.call_later(_LINGER_SECONDS, transport.abort)

    def _queue_reply(self, reply: Reply, *, keep_alive: bool) -> None:
        request_id = self._checked_request_id()
        exchange = _Exchange(self, request_id, keep_alive, b"-", self._url)
        self._exchanges.append(exchange)
        exchange.respond(reply)

    def _reject_and_close(self, error: RequestError) -> None:
        """Answers `error` and reads nothing more from this connection."""
        self._broken = True
        self._in_message = False
        self._release_body()
        self._queue_reply(error_reply(error), keep_alive=False)

    def _checked_request_id(self) -> bytes:
        """The client's X-Request-ID if it is short printable ASCII, else a new one."""
        given = self._request_id
        if given and len(given) <= _MAX_REQUEST_ID and all(32 < c < 127 for c in given):
            return given
        return self.server.next_request_id()

    def _update_reading(self) -> None:
        """Stops reading while the client does not read or has too many pipelined requests."""
        paused = self._write_paused or len(self._exchanges) >= _PIPELINE_LIMIT
        if paused == self._paused or self._transport is None or self._transport.is_closing():
            return
        self._paused = paused
        if paused:
            self._transport.pause_reading()
        else:
            self._transport.resume_reading()

    # -- lifecycle ----------------------------------------------------------------------------

    def close_if_stale(self, now: float) -> None:
        """Aborts a connection whose client reads nothing of its answers for the write timeout;
        closes one idle past the keep-alive timeout (or a second, when draining) or stuck in a
        slow request."""
        transport = self._transport
        if transport is None:
            return
        if self._write_stalled(transport, now):
            log.warning("aborting a connection whose client reads nothing of its answers")
            transport.abort()
            return
        if self._exchanges:
            return
        if self._in_message:
            if now - self._message_started > _REQUEST_TIMEOUT:
                transport.close()
            return
        server = self.server
        idle_limit = _DRAIN_IDLE_SECONDS if server.draining else server.keepalive_timeout
        if now - self._last_active > idle_limit:
            transport.close()

    def _write_stalled(self, transport: asyncio.Transport, now: float) -> bool:
        """Whether answers have waited in the output buffer, none of it read, too long."""
        buffered = transport.get_write_buffer_size()
        if not buffered:
            self._write_stalled_since = None
            return False
        if self._write_stalled_since is None or buffered < self._write_buffered:
            self._write_stalled_since = now  # new output, or the client read some
        self._write_buffered = buffered
        timeout = self.server.write_timeout
        return timeout > 0 and now - self._write_stalled_since > timeout

    def abort(self) -> None:
        """Drops the connection at once (grace period over)."""
        if self._transport is not None:
            self._transport.abort()

"""Downloading the model before the server starts: `python -m modelserver fetch` (init container).

The file appears at the destination whole or not at all: bytes go to a temporary file in the same
directory, are hashed on the way, fsynced, checked against the pinned digest, and only then renamed
over the destination. Transient failures (5xx, throttling, timeouts, dropped connections) are
retried with exponential backoff; answers that will not change (404, 403, digest mismatch) are not.

Bounds: a model above `max_model_bytes` is refused on its Content-Length or as soon as the stream
passes the limit (nothing beyond it is written), and the whole download, every try and wait
included, ends at `deadline_seconds`: a timer shuts the sockets of the running try down, so a
server that drips bytes (or headers) cannot hold the init container past it.

Redirects: followed over http and https only, never from https to http; credentials (the URI's
userinfo, sent as Authorization) go only to the origin they were given for. Every URI in a log
line, an error or the termination message is redacted by `modelserver.uris`.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import http.client
import logging
import os
import random
import socket
import ssl
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

from modelserver import __version__, uris
from modelserver.core import digest, termination
from modelserver.core.errors import FetchError
from modelserver.fetching.options import FetchConfig

log = logging.getLogger("modelserver.fetch")  # the name its log lines have always carried

_CHUNK = 1024 * 1024
_TRANSIENT_HTTP = {408, 425, 429, 500, 502, 503, 504}
_TRANSIENT_S3_CODES = {"SlowDown", "RequestTimeout", "InternalError", "ServiceUnavailable"}


class _Stream(Protocol):
    def read(self, size: int = ..., /) -> bytes: ...


def run(config: FetchConfig) -> int:
    """Fetches the model; on failure writes the reason to the termination log and returns 1."""
    try:
        expected = digest.parse(config.model_digest) if config.model_digest else None
        fetch(config, expected)
    except (FetchError, ValueError) as error:
        reason = f"model fetch failed: {uris.redact_text(str(error))}"
        log.error(reason, extra={"uri": uris.redact(config.model_uri), "dest": config.dest})
        termination.write_reason(reason, config.termination_log)
        return 1
    return 0


def fetch(
    config: FetchConfig, expected_hex: str | None, sleep: Callable[[float], None] = time.sleep
) -> str:
    """Downloads `config.model_uri` to `config.dest` with retries; returns the file's sha256 hex."""
    dest = Path(config.dest)
    if dest.is_dir():
        raise FetchError(f"destination {dest} is a directory; give the file path", transient=False)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if expected_hex is not None and _has_digest(dest, expected_hex):
        log.info("model already present with the pinned digest", extra={"dest": str(dest)})
        return expected_hex
    deadline = _Deadline(config.deadline_seconds)
    previous: FetchError | None = None
    for attempt in range(1, config.max_attempts + 1):
        started = time.monotonic()
        try:
            deadline.check()
            with deadline.armed():
                size, actual = _fetch_once(config, dest, expected_hex, deadline)
        except FetchError as error:
            if isinstance(error, _DeadlineError) and previous is not None:
                raise _DeadlineError(
                    f"{error}; {attempt - 1} earlier attempts failed, the last with: {previous}"
                ) from None
            previous = error
            if not error.transient or attempt == config.max_attempts:
                if error.transient:
                    raise FetchError(
                        f"{error} (gave up after {attempt} attempts)", transient=True
                    ) from None
                raise
            wait = config.backoff_seconds * 2 ** (attempt - 1) * random.uniform(0.8, 1.2)  # noqa: S311 - jitter, not crypto.
            if wait >= deadline.remaining():
                raise FetchError(
                    f"{error} (gave up after {attempt} attempts: {deadline.describe()} "
                    "leaves no time for another)",
                    transient=True,
                ) from None
            log.warning(
                "fetch failed, retrying",
                extra={
                    "error": uris.redact_text(str(error)),
                    "attempt": attempt,
                    "retry_in_seconds": round(wait, 3),
                },
            )
            sleep(wait)
            continue
        log.info(
            "model fetched",
            extra={
                "uri": uris.redact(config.model_uri),
                "dest": str(dest),
                "bytes": size,
                "sha256": actual,
                "seconds": round(time.monotonic() - started, 3),
                "attempts": attempt,
            },
        )
        return actual
    raise AssertionError("unreachable: the loop returns or raises")


def _has_digest(path: Path, expected_hex: str) -> bool:
    if not path.is_file():
        return False
    sha = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(_CHUNK):
            sha.update(chunk)
    return sha.hexdigest() == expected_hex


class _DeadlineError(FetchError):
    """The fetch deadline passed: no more attempts."""

    def __init__(self, message: str) -> None:
        super().__init__(message, transient=False)


class _Deadline:
    """The time the whole download may take; while armed, a timer shuts the try's sockets down.

    Socket timeouts bound one read, not a download: a server that sends a byte a second never
    trips them. Shutting the sockets down makes any blocked read (headers or body, plain or TLS)
    return, and `expired` tells the reader why.
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._ends = time.monotonic() + seconds
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self.expired = False

    def remaining(self) -> float:
        return self._ends - time.monotonic()

    def describe(self) -> str:
        return f"the fetch deadline of {self.seconds:g} s (--deadline, FETCH_DEADLINE_SECONDS)"

    def error(self) -> FetchError:
        return _DeadlineError(f"the download did not finish within {self.describe()}")

    def check(self) -> None:
        """Raises once the deadline has passed."""
        if self.expired or self.remaining() <= 0:
            raise self.error()

    def timeout(self, per_read: float) -> float:
        """A socket timeout that ends no later than the deadline (`per_read` 0 means none)."""
        remaining = max(self.remaining(), 0.001)
        return min(per_read, remaining) if per_read else remaining

    def watch(self, sock: socket.socket | None) -> None:
        """Registers a connected socket of the running try."""
        if sock is None:
            return
        with self._lock:
            self._sockets.append(sock)
            if self.expired:
                _shut_down(sock)

    @contextlib.contextmanager
    def armed(self) -> Iterator[None]:
        timer = threading.Timer(max(self.remaining(), 0.0), self._expire)
        timer.daemon = True
        timer.start()
        try:
            yield
        finally:
            timer.cancel()
            with self._lock:
                self._sockets.clear()

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            for sock in self._sockets:
                _shut_down(sock)


def _shut_down(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


def _fetch_once(
    config: FetchConfig, dest: Path, expected_hex: str | None, deadline: _Deadline
) -> tuple[int, str]:
    """One download attempt into a temporary file, renamed over `dest` only when it is right."""
    limit = config.max_model_bytes
    with _open(config, deadline) as (stream, expected_size):
        if expected_size is not None and expected_size > limit:
            raise FetchError(
                f"the model is {expected_size} bytes, above {_limit_text(limit)}",
                transient=False,
            )
        fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
        tmp = Path(tmp_name)
        try:
            sha = hashlib.sha256()
            size = 0
            with os.fdopen(fd, "wb") as out:
                while True:
                    try:
                        chunk = stream.read(_CHUNK)
                    except Exception as error:
                        deadline.check()
                        raise _read_error(error) from None
                    deadline.check()
                    if not chunk:
                        break
                    if size + len(chunk) > limit:
                        raise FetchError(
                            f"the download passed {_limit_text(limit)}; stopped there",
                            transient=False,
                        )
                    sha.update(chunk)
                    out.write(chunk)
                    size += len(chunk)
                out.flush()
                os.fsync(out.fileno())
            if expected_size is not None and size != expected_size:
                raise FetchError(
                    f"connection closed after {size} of {expected_size} bytes", transient=True
                )
            actual = sha.hexdigest()
            if expected_hex is not None and actual != expected_hex:
                raise FetchError(
                    digest.mismatch_message(uris.redact(config.model_uri), expected_hex, actual),
                    transient=False,
                )
            tmp.chmod(0o644)
            tmp.replace(dest)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    _fsync_dir(dest.parent)
    return size, actual


def _limit_text(limit: int) -> str:
    return f"the limit of {limit} bytes (--max-model-bytes, MAX_MODEL_BYTES)"


def _fsync_dir(folder: Path) -> None:
    """Makes the rename itself durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_error(error: Exception) -> FetchError:
    return FetchError(f"download interrupted: {type(error).__name__}: {error}", transient=True)


@contextlib.contextmanager
def _open(config: FetchConfig, deadline: _Deadline) -> Iterator[tuple[_Stream, int | None]]:
    """The source as a stream, and its size when known."""
    parsed = urllib.parse.urlparse(config.model_uri)
    if parsed.scheme in ("http", "https"):
        with _open_http(config.model_uri, config.timeout_seconds, deadline) as opened:
            yield opened
    elif parsed.scheme == "s3":
        with _open_s3(parsed, config, deadline) as opened:
            yield opened
    elif parsed.scheme in ("file", ""):
        path = Path(urllib.parse.unquote(parsed.path) if parsed.scheme else config.model_uri)
        try:
            file = path.open("rb")
        except OSError as error:
            raise FetchError(
                f"cannot read {path}: {error.strerror or error}", transient=False
            ) from None
        with file:
            yield file, path.stat().st_size
    else:
        raise FetchError(
            f"unsupported model URI scheme {parsed.scheme!r}: use http(s)://, s3:// or file://",
            transient=False,
        )


class _Watched(http.client.HTTPConnection):
    """A connection that registers its socket (for https the TLS one) with the deadline."""

    deadline: _Deadline

    def connect(self) -> None:
        super().connect()
        self.deadline.watch(self.sock)


class _WatchedHTTPS(_Watched, http.client.HTTPSConnection):
    pass


def _watched(kind: type[_Watched], deadline: _Deadline) -> Callable[..., _Watched]:
    def connection(host: str, /, **kwargs: Any) -> _Watched:
        opened = kind(host, **kwargs)
        opened.deadline = deadline
        return opened

    return connection


class _HTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, deadline: _Deadline) -> None:
        super().__init__()
        self._deadline = deadline

    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(_watched(_Watched, self._deadline), req)


class _HTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, deadline: _Deadline, context: ssl.SSLContext) -> None:
        super().__init__(context=context)
        self._deadline = deadline
        self._tls = context

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(_watched(_WatchedHTTPS, self._deadline), req, context=self._tls)


class _RedirectHandler(urllib.request.HTTPRedirectHandler):
    """Follows redirects over http(s) only, never https -> http; credentials stay with their
    origin (same scheme, host and port), as curl does."""

    def redirect_request(  # noqa: PLR0917 - urllib's signature
        self,
        req: urllib.request.Request,
        fp: Any,
        code: int,
        msg: str,
        headers: Any,
        newurl: str,
    ) -> urllib.request.Request | None:
        old = urllib.parse.urlsplit(req.full_url)
        new = urllib.parse.urlsplit(newurl)
        hop = f"{uris.redact(req.full_url)} -> {uris.redact(newurl)}"
        refusal = None
        if new.scheme not in ("http", "https"):
            refusal = f"refusing a redirect to {new.scheme or 'no'} scheme ({hop})"
        elif old.scheme == "https" and new.scheme != "https":
            refusal = f"refusing a redirect from https to http ({hop}): it would drop encryption"
        if refusal is not None:
            fp.close()
            raise FetchError(refusal, transient=False)
        if new.username is not None or new.password is not None:
            # Credentials in a Location header are not ours to send: dropped, never used.
            newurl = urllib.parse.urlunsplit(new._replace(netloc=new.netloc.rpartition("@")[2]))
        redirected = super().redirect_request(req, fp, code, msg, headers, newurl)
        if redirected is not None and not uris.same_origin(req.full_url, newurl):
            for name in ("Authorization", "Cookie"):
                redirected.remove_header(name)
            log.info("redirected to another origin; credentials not forwarded", extra={"to": hop})
        return redirected


@contextlib.contextmanager
def _open_http(
    uri: str, timeout: float, deadline: _Deadline
) -> Iterator[tuple[_Stream, int | None]]:
    parsed = urllib.parse.urlparse(uri)
    headers = {"User-Agent": f"modelserver/{__version__}"}
    if parsed.username is not None:
        # http://user:password@host/... : sent as Basic authentication, never logged.
        credentials = f"{urllib.parse.unquote(parsed.username)}:"
        credentials += urllib.parse.unquote(parsed.password or "")
        headers["Authorization"] = "Basic " + base64.b64encode(credentials.encode()).decode()
        uri = urllib.parse.urlunparse(parsed._replace(netloc=_host_and_port(parsed)))
    opener = urllib.request.build_opener(
        _HTTPHandler(deadline),
        _HTTPSHandler(deadline, ssl.create_default_context()),
        _RedirectHandler(),
    )
    # The caller checked that the scheme is http or https.
    request = urllib.request.Request(uri, headers=headers)  # noqa: S310
    shown = uris.redact(uri)
    try:
        response = opener.open(request, timeout=deadline.timeout(timeout))
    except urllib.error.HTTPError as error:
        error.close()
        deadline.check()
        raise FetchError(
            f"HTTP {error.code} {uris.redact_text(str(error.reason))} from {shown}",
            transient=error.code in _TRANSIENT_HTTP,
        ) from None
    except urllib.error.URLError as error:
        deadline.check()
        reason = uris.redact_text(str(error.reason))
        transient = not isinstance(error.reason, str) and "CERTIFICATE" not in reason.upper()
        raise FetchError(f"cannot reach {shown}: {reason}", transient=transient) from None
    except (OSError, http.client.HTTPException) as error:
        deadline.check()
        raise FetchError(
            f"cannot reach {shown}: {type(error).__name__}: {uris.redact_text(str(error))}",
            transient=True,
        ) from None
    with response:
        length = response.headers.get("Content-Length")
        yield response, int(length) if length and length.isdigit() else None


@contextlib.contextmanager
def _open_s3(
    parsed: urllib.parse.ParseResult, config: FetchConfig, deadline: _Deadline
) -> Iterator[tuple[_Stream, int | None]]:
    """The object's body; the deadline is checked between chunks and bounds each timeout."""
    import boto3  # noqa: PLC0415 - slow to import; only s3:// needs it.
    import botocore.config  # noqa: PLC0415
    import botocore.exceptions as boto_errors  # noqa: PLC0415

    bucket, key = parsed.netloc, parsed.path.lstrip("/")
    shown = uris.redact(config.model_uri)
    if not bucket or not key:
        raise FetchError(f"S3 URI {shown!r} must be s3://bucket/key", transient=False)
    timeout = deadline.timeout(config.timeout_seconds or 60)
    client_config = botocore.config.Config(
        connect_timeout=timeout,
        read_timeout=timeout,
        retries={"total_max_attempts": 1},  # the fetcher's own loop retries, with its backoff
        s3={"addressing_style": "path" if config.s3_endpoint else "auto"},
    )
    client: Any = boto3.client(
        "s3",
        endpoint_url=config.s3_endpoint,
        verify=config.s3_verify_ssl,
        config=client_config,
    )
    try:
        response = client.get_object(Bucket=bucket, Key=key)
    except boto_errors.ClientError as error:
        status = int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
        code = str(error.response.get("Error", {}).get("Code", ""))
        raise FetchError(
            f"S3 {code or status} for {shown}",
            transient=status >= 500 or status in _TRANSIENT_HTTP or code in _TRANSIENT_S3_CODES,
        ) from None
    except boto_errors.NoCredentialsError:
        raise FetchError(
            "no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or a role)",
            transient=False,
        ) from None
    except (boto_errors.BotoCoreError, OSError) as error:
        raise FetchError(
            f"cannot reach S3 for {shown}: {type(error).__name__}: {uris.redact_text(str(error))}",
            transient=True,
        ) from None
    body = response["Body"]
    try:
        yield body, response.get("ContentLength")
    finally:
        body.close()


def _host_and_port(parsed: urllib.parse.ParseResult) -> str:
    netloc = parsed.hostname or ""
    if ":" in netloc:
        netloc = f"[{netloc}]"
    if parsed.port:
        netloc += f":{parsed.port}"
    return netloc

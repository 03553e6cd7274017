"""Downloading the model before the server starts: `python -m modelserver fetch` (init container).

The file appears at the destination whole or not at all: bytes go to a temporary file in the same
directory, are hashed on the way, fsynced, checked against the pinned digest, and only then renamed
over the destination. Transient failures (5xx, throttling, timeouts, dropped connections) are
retried with exponential backoff; answers that will not change (404, 403, digest mismatch) are not.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import http.client
import logging
import os
import random
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

from modelserver import __version__, digest, termination
from modelserver.config import FetchConfig
from modelserver.errors import FetchError

log = logging.getLogger(__name__)

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
        reason = f"model fetch failed: {error}"
        log.error(reason, extra={"uri": config.model_uri, "dest": config.dest})
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
    for attempt in range(1, config.max_attempts + 1):
        started = time.monotonic()
        try:
            size, actual = _fetch_once(config, dest, expected_hex)
        except FetchError as error:
            if not error.transient or attempt == config.max_attempts:
                if error.transient:
                    raise FetchError(
                        f"{error} (gave up after {attempt} attempts)", transient=True
                    ) from None
                raise
            wait = config.backoff_seconds * 2 ** (attempt - 1) * random.uniform(0.8, 1.2)  # noqa: S311 - jitter, not crypto.
            log.warning(
                "fetch failed, retrying",
                extra={"error": str(error), "attempt": attempt, "retry_in_seconds": round(wait, 3)},
            )
            sleep(wait)
            continue
        log.info(
            "model fetched",
            extra={
                "uri": _redacted(config.model_uri),
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


def _fetch_once(config: FetchConfig, dest: Path, expected_hex: str | None) -> tuple[int, str]:
    """One download attempt into a temporary file, renamed over `dest` only when it is right."""
    with _open(config) as (stream, expected_size):
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
                        raise _read_error(error) from None
                    if not chunk:
                        break
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
                    digest.mismatch_message(_redacted(config.model_uri), expected_hex, actual),
                    transient=False,
                )
            tmp.chmod(0o644)
            tmp.replace(dest)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    _fsync_dir(dest.parent)
    return size, actual


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
def _open(config: FetchConfig) -> Iterator[tuple[_Stream, int | None]]:
    """The source as a stream, and its size when known."""
    parsed = urllib.parse.urlparse(config.model_uri)
    if parsed.scheme in ("http", "https"):
        with _open_http(config.model_uri, config.timeout_seconds) as opened:
            yield opened
    elif parsed.scheme == "s3":
        with _open_s3(parsed, config) as opened:
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


@contextlib.contextmanager
def _open_http(uri: str, timeout: float) -> Iterator[tuple[_Stream, int | None]]:
    parsed = urllib.parse.urlparse(uri)
    headers = {"User-Agent": f"modelserver/{__version__}"}
    if parsed.username is not None:
        # http://user:password@host/... : sent as Basic authentication, never logged.
        credentials = f"{urllib.parse.unquote(parsed.username)}:"
        credentials += urllib.parse.unquote(parsed.password or "")
        headers["Authorization"] = "Basic " + base64.b64encode(credentials.encode()).decode()
        uri = urllib.parse.urlunparse(parsed._replace(netloc=_host_and_port(parsed)))
    # The caller checked that the scheme is http or https.
    request = urllib.request.Request(uri, headers=headers)  # noqa: S310
    try:
        response = urllib.request.urlopen(request, timeout=timeout or None)  # noqa: S310
    except urllib.error.HTTPError as error:
        error.close()
        raise FetchError(
            f"HTTP {error.code} {error.reason} from {_redacted(uri)}",
            transient=error.code in _TRANSIENT_HTTP,
        ) from None
    except urllib.error.URLError as error:
        reason = error.reason
        transient = not isinstance(reason, str) and "CERTIFICATE" not in str(reason).upper()
        raise FetchError(f"cannot reach {_redacted(uri)}: {reason}", transient=transient) from None
    except (OSError, http.client.HTTPException) as error:
        raise FetchError(
            f"cannot reach {_redacted(uri)}: {type(error).__name__}: {error}", transient=True
        ) from None
    with response:
        length = response.headers.get("Content-Length")
        yield response, int(length) if length and length.isdigit() else None


@contextlib.contextmanager
def _open_s3(
    parsed: urllib.parse.ParseResult, config: FetchConfig
) -> Iterator[tuple[_Stream, int | None]]:
    import boto3  # noqa: PLC0415 - slow to import; only s3:// needs it.
    import botocore.config  # noqa: PLC0415
    import botocore.exceptions as boto_errors  # noqa: PLC0415

    bucket, key = parsed.netloc, parsed.path.lstrip("/")
    if not bucket or not key:
        raise FetchError(f"S3 URI {config.model_uri!r} must be s3://bucket/key", transient=False)
    client_config = botocore.config.Config(
        connect_timeout=config.timeout_seconds or 60,
        read_timeout=config.timeout_seconds or 60,
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
            f"S3 {code or status} for {config.model_uri}",
            transient=status >= 500 or status in _TRANSIENT_HTTP or code in _TRANSIENT_S3_CODES,
        ) from None
    except boto_errors.NoCredentialsError:
        raise FetchError(
            "no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or a role)",
            transient=False,
        ) from None
    except (boto_errors.BotoCoreError, OSError) as error:
        raise FetchError(
            f"cannot reach S3 for {config.model_uri}: {type(error).__name__}: {error}",
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


def _redacted(uri: str) -> str:
    """The URI without credentials or query (pre-signed URLs carry secrets there)."""
    parsed = urllib.parse.urlparse(uri)
    return urllib.parse.urlunparse((parsed.scheme, _host_and_port(parsed), parsed.path, "", "", ""))

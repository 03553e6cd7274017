"""The HTTP layer's flags: where to listen, the body limit, timeouts, the access log."""

from __future__ import annotations

import argparse
import dataclasses

from modelserver.core import options
from modelserver.core.options import Option


@dataclasses.dataclass(frozen=True)
class HttpConfig:
    """The inference listener and its connections."""

    host: str = "0.0.0.0"  # noqa: S104 - a pod serves on all its interfaces.
    port: int = 8080
    max_body_bytes: int = 8 * 1024 * 1024
    keepalive_timeout_seconds: float = 75.0
    write_timeout_seconds: float = 30.0
    access_log: bool = False


LISTEN = (
    Option("--host", "HOST", str, HttpConfig.host, "address to listen on"),
    Option("--port", "PORT", options.port, HttpConfig.port, "port to listen on"),
)
BODY = (
    Option(
        "--max-body-bytes",
        "MAX_BODY_BYTES",
        options.positive_int,
        HttpConfig.max_body_bytes,
        "413 above",
    ),
)
CONNECTIONS = (
    Option(
        "--keepalive-timeout",
        "KEEPALIVE_TIMEOUT_SECONDS",
        options.non_negative_float,
        HttpConfig.keepalive_timeout_seconds,
        "idle connections are closed after this long",
    ),
    Option(
        "--write-timeout",
        "WRITE_TIMEOUT_SECONDS",
        options.non_negative_float,
        HttpConfig.write_timeout_seconds,
        "a connection whose client reads nothing of its answer for this long is aborted",
    ),
    Option("--access-log", "ACCESS_LOG", options.boolean, False, "log every request"),
)


def http_config(args: argparse.Namespace) -> HttpConfig:
    return HttpConfig(
        host=args.host,
        port=args.port,
        max_body_bytes=args.max_body_bytes,
        keepalive_timeout_seconds=args.keepalive_timeout,
        write_timeout_seconds=args.write_timeout,
        access_log=args.access_log,
    )

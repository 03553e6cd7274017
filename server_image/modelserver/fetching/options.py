"""The fetcher's flags (the operator renders these) and its S3 settings from the environment."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Mapping

from modelserver.core import options
from modelserver.core.options import ConfigError, Option


@dataclasses.dataclass(frozen=True)
class FetchConfig:
    """What `python -m modelserver fetch` (the init container) runs with."""

    model_uri: str
    dest: str
    model_digest: str | None = None
    max_attempts: int = 5
    backoff_seconds: float = 1.0
    timeout_seconds: float = 60.0
    # The largest model accepted (checked on Content-Length and while streaming) and the time the
    # whole download may take, every attempt and backoff included.
    max_model_bytes: int = 4 * 1024**3
    deadline_seconds: float = 900.0
    termination_log: str = options.DEFAULT_TERMINATION_LOG
    log_level: str = "INFO"
    # S3-compatible endpoint (MinIO, Ceph...): AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL or S3_ENDPOINT.
    s3_endpoint: str | None = None
    s3_verify_ssl: bool = True


OPTIONS = (
    Option("--dest", "MODEL_DEST", str, None, "file to write the model to"),
    Option(
        "--max-attempts",
        "FETCH_MAX_ATTEMPTS",
        options.positive_int,
        FetchConfig.max_attempts,
        "tries on transient errors",
    ),
    Option(
        "--backoff",
        "FETCH_BACKOFF_SECONDS",
        options.non_negative_float,
        FetchConfig.backoff_seconds,
        "first wait between tries; doubles each time",
    ),
    Option(
        "--timeout",
        "FETCH_TIMEOUT_SECONDS",
        options.non_negative_float,
        FetchConfig.timeout_seconds,
        "network timeout of one try",
    ),
    Option(
        "--max-model-bytes",
        "MAX_MODEL_BYTES",
        options.positive_int,
        FetchConfig.max_model_bytes,
        "largest model accepted, in bytes; a bigger one fails the download",
    ),
    Option(
        "--deadline",
        "FETCH_DEADLINE_SECONDS",
        options.positive_float,
        FetchConfig.deadline_seconds,
        "longest time for the whole download, every try and wait included",
    ),
)


def fetch_config(args: argparse.Namespace, environ: Mapping[str, str]) -> FetchConfig:
    if not args.model_uri:
        raise ConfigError("no model: set --model-uri or MODEL_URI")
    if not args.dest:
        raise ConfigError("no destination: set --dest or MODEL_DEST")
    return FetchConfig(
        model_uri=args.model_uri,
        dest=args.dest,
        model_digest=args.model_digest or None,
        max_attempts=args.max_attempts,
        backoff_seconds=args.backoff,
        timeout_seconds=args.timeout,
        max_model_bytes=args.max_model_bytes,
        deadline_seconds=args.deadline,
        termination_log=args.termination_log,
        log_level=args.log_level,
        s3_endpoint=_s3_endpoint(environ),
        s3_verify_ssl=options.env_boolean(environ, "S3_VERIFY_SSL", default=True),
    )


def _s3_endpoint(environ: Mapping[str, str]) -> str | None:
    """The S3 endpoint from the AWS variables, or KServe's S3_ENDPOINT (host:port, S3_USE_HTTPS)."""
    for name in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"):
        if environ.get(name):
            return environ[name]
    endpoint = environ.get("S3_ENDPOINT")
    if not endpoint:
        return None
    if "://" in endpoint:
        return endpoint
    secure = options.env_boolean(environ, "S3_USE_HTTPS", default=True)
    return f"{'https' if secure else 'http'}://{endpoint}"

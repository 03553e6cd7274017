"""Command-line and environment configuration of the server and of the fetcher.

Every flag has an environment variable of the same meaning, because the operator renders a pod spec
and either is convenient there. A flag given on the command line wins over the environment. The
environment is read once, in `parse_serve` / `parse_fetch`, never later and never at import time.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

MODEL_FORMATS = ("joblib", "skops")
AUTH_MODES = ("none", "kubernetes")
DEFAULT_TERMINATION_LOG = "/dev/termination-log"


class ConfigError(Exception):
    """A flag or environment variable has an unusable value."""


@dataclasses.dataclass(frozen=True)
class AccessConfig:
    """Who may call the model and how often (issue 13): auth, TLS and the pod's rate limit."""

    auth: str = "none"
    # The ModelDeployment that SubjectAccessReviews name (default: the model name, and the
    # namespace of the pod's ServiceAccount).
    auth_name: str | None = None
    auth_namespace: str | None = None
    auth_allow_ttl_seconds: float = 60.0
    auth_deny_ttl_seconds: float = 5.0
    auth_cache_size: int = 4096
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    rate_limit_rps: float = 0.0  # 0: no limit
    rate_limit_burst: int = 0  # 0: one second's worth of requests


@dataclasses.dataclass(frozen=True)
class ServeConfig:
    """What `python -m modelserver` (serve) runs with."""

    model_uri: str
    model_name: str = "model"
    model_format: str = "joblib"
    model_digest: str | None = None
    model_version: str | None = None
    trusted_types: tuple[str, ...] = ()
    host: str = "0.0.0.0"  # noqa: S104 - a pod serves on all its interfaces.
    port: int = 8080
    health_port: int = 8081  # 0: no listener of their own for the probes
    workers: int = 1
    max_body_bytes: int = 8 * 1024 * 1024
    max_batch_size: int = 256
    max_batch_wait_ms: float = 2.0
    max_queue_depth: int = 512
    # Request-body bytes and rows one worker works on at once; beyond them 503 (0: derived from
    # the container's memory limit, see default_inflight_bytes).
    max_inflight_bytes: int = 0
    max_inflight_rows: int = 0
    drain_delay_seconds: float = 2.0
    graceful_timeout_seconds: float = 20.0
    keepalive_timeout_seconds: float = 75.0
    write_timeout_seconds: float = 30.0
    termination_log: str = DEFAULT_TERMINATION_LOG
    access_log: bool = False
    log_level: str = "INFO"
    metrics_dir: str = "/tmp/modelserver-metrics"  # noqa: S108 - /tmp is the pod's only writable path.
    access: AccessConfig = dataclasses.field(default_factory=AccessConfig)
    # -- monitoring (drift.py, payloadlog.py) --
    reference_uri: str | None = None
    reference_digest: str | None = None
    drift_window_seconds: float = 300.0
    drift_min_rows: int = 200
    drift_max_features: int = 32
    payload_log_url: str | None = None
    payload_log_sample_rate: float = 1.0
    payload_log_redact: tuple[str, ...] = ()
    payload_log_max_queue: int = 1000


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
    termination_log: str = DEFAULT_TERMINATION_LOG
    log_level: str = "INFO"
    # S3-compatible endpoint (MinIO, Ceph...): AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL or S3_ENDPOINT.
    s3_endpoint: str | None = None
    s3_verify_ssl: bool = True


class _Parser(argparse.ArgumentParser):
    """An argument parser that raises instead of exiting, so errors reach the termination log."""

    def error(self, message: str) -> NoReturn:
        raise ConfigError(message)


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None


def _positive_int(text: str) -> int:
    value = _integer(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    value = _non_negative_float(text)
    if value == 0:
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text!r}")
    return value


def _port(text: str) -> int:
    value = _integer(text)
    if not 0 < value < 65536:
        raise argparse.ArgumentTypeError(f"must be a port number in 1..65535, got {value}")
    return value


def _port_or_zero(text: str) -> int:
    return 0 if _integer(text) == 0 else _port(text)


def _non_negative_int(text: str) -> int:
    value = _integer(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {value}")
    return value


def _boolean(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise argparse.ArgumentTypeError(f"must be true or false, got {text!r}")


def _env_boolean(environ: Mapping[str, str], name: str, *, default: bool) -> bool:
    raw = environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return _boolean(raw)
    except argparse.ArgumentTypeError as error:
        raise ConfigError(f"{name}={raw!r}: {error}") from None


def _model_format(text: str) -> str:
    lowered = text.strip().lower()
    if lowered not in MODEL_FORMATS:
        raise argparse.ArgumentTypeError(f"must be one of {', '.join(MODEL_FORMATS)}, got {text!r}")
    return lowered


def _names(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


class _Options:
    """Declares flags whose default comes from an environment variable, converted like the flag."""

    def __init__(self, parser: argparse.ArgumentParser, environ: Mapping[str, str]) -> None:
        self._parser = parser
        self._environ = environ

    def add(
        self,
        flag: str,
        env: str,
        convert: Callable[[str], object],
        default: object,
        help_text: str,
    ) -> None:
        raw = self._environ.get(env)
        value = default
        if raw is not None and raw != "":
            try:
                value = convert(raw)
            except (argparse.ArgumentTypeError, ValueError) as error:
                raise ConfigError(f"{env}={raw!r}: {error}") from None
        self._parser.add_argument(
            flag, type=convert, default=value, help=f"{help_text} (env {env})", metavar=env
        )


def _common(options: _Options) -> None:
    options.add("--model-uri", "MODEL_URI", str, None, "where the model is")
    options.add("--model-digest", "MODEL_DIGEST", str, None, "expected sha256:<64 hex> of the file")
    options.add(
        "--termination-log",
        "TERMINATION_LOG",
        str,
        DEFAULT_TERMINATION_LOG,
        "file that receives a one-line reason when the process fails",
    )
    options.add("--log-level", "LOG_LEVEL", str.upper, "INFO", "DEBUG, INFO, WARNING or ERROR")


def _auth_mode(text: str) -> str:
    lowered = text.strip().lower()
    if lowered not in AUTH_MODES:
        raise argparse.ArgumentTypeError(f"must be one of {', '.join(AUTH_MODES)}, got {text!r}")
    return lowered


def _allow_ttl(text: str) -> float:
    value = _non_negative_float(text)
    if value > 60:  # the documented bound: a revoked binding bites within a minute
        raise argparse.ArgumentTypeError(f"must be at most 60 seconds, got {text!r}")
    return value


def _access_options(options: _Options) -> None:
    defaults = AccessConfig()
    options.add("--auth", "AUTH", _auth_mode, "none", "none, or kubernetes (bearer tokens, RBAC)")
    options.add("--auth-name", "AUTH_NAME", str, None, "resource name reviewed (default: model)")
    options.add("--auth-namespace", "AUTH_NAMESPACE", str, None, "namespace reviewed")
    options.add(
        "--auth-allow-ttl",
        "AUTH_ALLOW_TTL_SECONDS",
        _allow_ttl,
        defaults.auth_allow_ttl_seconds,
        "seconds an allowed token is trusted without asking again (at most 60)",
    )
    options.add(
        "--auth-deny-ttl",
        "AUTH_DENY_TTL_SECONDS",
        _non_negative_float,
        defaults.auth_deny_ttl_seconds,
        "seconds a refused token is refused without asking again",
    )
    options.add(
        "--auth-cache-size",
        "AUTH_CACHE_SIZE",
        _non_negative_int,
        defaults.auth_cache_size,
        "tokens whose decision each worker remembers",
    )
    options.add("--tls-cert-file", "TLS_CERT_FILE", str, None, "PEM certificate: serve HTTPS")
    options.add("--tls-key-file", "TLS_KEY_FILE", str, None, "PEM private key of the certificate")
    options.add(
        "--rate-limit-rps",
        "RATE_LIMIT_RPS",
        _non_negative_float,
        0.0,
        "requests per second the pod admits (health and metrics aside), 429 beyond; 0: no limit",
    )
    options.add(
        "--rate-limit-burst",
        "RATE_LIMIT_BURST",
        _non_negative_int,
        0,
        "requests admitted at once above the rate; 0: one second's worth",
    )


def _access_config(args: argparse.Namespace) -> AccessConfig:
    if bool(args.tls_cert_file) != bool(args.tls_key_file):
        raise ConfigError("TLS needs both --tls-cert-file and --tls-key-file")
    burst = args.rate_limit_burst or max(1, math.ceil(args.rate_limit_rps))
    return AccessConfig(
        auth=args.auth,
        auth_name=args.auth_name or None,
        auth_namespace=args.auth_namespace or None,
        auth_allow_ttl_seconds=args.auth_allow_ttl,
        auth_deny_ttl_seconds=args.auth_deny_ttl,
        auth_cache_size=args.auth_cache_size,
        tls_cert_file=args.tls_cert_file or None,
        tls_key_file=args.tls_key_file or None,
        rate_limit_rps=args.rate_limit_rps,
        rate_limit_burst=burst,
    )


def parse_serve(argv: Sequence[str], environ: Mapping[str, str]) -> ServeConfig:
    """Parses the serve flags; an unusable value raises ConfigError."""
    defaults = ServeConfig(model_uri="")
    parser = _Parser(
        prog="python -m modelserver",
        description="Serve one scikit-learn model (KServe V1 and Open Inference Protocol V2).",
        epilog="`python -m modelserver fetch --help`: download a model first (init container).",
    )
    options = _Options(parser, environ)
    _common(options)
    options.add("--model-name", "MODEL_NAME", str, defaults.model_name, "name in the URLs")
    options.add("--model-format", "MODEL_FORMAT", _model_format, "joblib", "joblib or skops")
    options.add("--model-version", "MODEL_VERSION", str, None, "version shown in metadata")
    options.add(
        "--trusted-types",
        "MODEL_TRUSTED_TYPES",
        _names,
        (),
        "comma-separated extra types a skops file may contain",
    )
    options.add("--host", "HOST", str, defaults.host, "address to listen on")
    options.add("--port", "PORT", _port, defaults.port, "port to listen on")
    options.add(
        "--health-port",
        "HEALTH_PORT",
        _port_or_zero,
        defaults.health_port,
        "port of the probes' own listener (/v2/health/live and /ready), 0 for none",
    )
    options.add("--workers", "WORKERS", _positive_int, None, "server processes")
    options.add(
        "--max-body-bytes", "MAX_BODY_BYTES", _positive_int, defaults.max_body_bytes, "413 above"
    )
    options.add(
        "--max-batch-size",
        "MAX_BATCH_SIZE",
        _positive_int,
        defaults.max_batch_size,
        "most rows in one predict call",
    )
    options.add(
        "--max-batch-wait-ms",
        "MAX_BATCH_WAIT_MS",
        _non_negative_float,
        defaults.max_batch_wait_ms,
        "longest wait for a batch to fill when requests arrive concurrently",
    )
    options.add(
        "--max-queue-depth",
        "MAX_QUEUE_DEPTH",
        _positive_int,
        defaults.max_queue_depth,
        "requests waiting per worker before 503",
    )
    options.add(
        "--max-inflight-bytes",
        "MAX_INFLIGHT_BYTES",
        _non_negative_int,
        0,
        "request-body bytes one worker works on at once before 503; 0: from the memory limit",
    )
    options.add(
        "--max-inflight-rows",
        "MAX_INFLIGHT_ROWS",
        _non_negative_int,
        0,
        "rows one worker works on at once before 503; 0: from the in-flight bytes",
    )
    options.add(
        "--drain-delay",
        "DRAIN_DELAY_SECONDS",
        _non_negative_float,
        defaults.drain_delay_seconds,
        "after SIGTERM, keep accepting this long while readiness is 503",
    )
    options.add(
        "--graceful-timeout",
        "GRACEFUL_TIMEOUT_SECONDS",
        _non_negative_float,
        defaults.graceful_timeout_seconds,
        "after the drain delay, longest wait for in-flight requests",
    )
    options.add(
        "--keepalive-timeout",
        "KEEPALIVE_TIMEOUT_SECONDS",
        _non_negative_float,
        defaults.keepalive_timeout_seconds,
        "idle connections are closed after this long",
    )
    options.add(
        "--write-timeout",
        "WRITE_TIMEOUT_SECONDS",
        _non_negative_float,
        defaults.write_timeout_seconds,
        "a connection whose client reads nothing of its answer for this long is aborted",
    )
    options.add("--access-log", "ACCESS_LOG", _boolean, False, "log every request")
    options.add(
        "--metrics-dir",
        "METRICS_DIR",
        str,
        defaults.metrics_dir,
        "scratch directory for the metrics of all worker processes",
    )
    _access_options(options)
    _monitoring_options(options)
    args = parser.parse_args(list(argv))
    if not args.model_uri:
        raise ConfigError("no model: set --model-uri or MODEL_URI")
    workers = args.workers if args.workers is not None else default_workers()
    inflight_bytes = args.max_inflight_bytes or default_inflight_bytes(workers)
    return ServeConfig(
        model_uri=args.model_uri,
        model_name=args.model_name,
        model_format=args.model_format,
        model_digest=args.model_digest or None,
        model_version=args.model_version or None,
        trusted_types=args.trusted_types,
        host=args.host,
        port=args.port,
        health_port=args.health_port,
        workers=workers,
        max_body_bytes=args.max_body_bytes,
        max_batch_size=args.max_batch_size,
        max_batch_wait_ms=args.max_batch_wait_ms,
        max_queue_depth=args.max_queue_depth,
        max_inflight_bytes=inflight_bytes,
        max_inflight_rows=args.max_inflight_rows or default_inflight_rows(inflight_bytes),
        drain_delay_seconds=args.drain_delay,
        graceful_timeout_seconds=args.graceful_timeout,
        keepalive_timeout_seconds=args.keepalive_timeout,
        write_timeout_seconds=args.write_timeout,
        termination_log=args.termination_log,
        access_log=args.access_log,
        log_level=args.log_level,
        metrics_dir=args.metrics_dir,
        access=_access_config(args),
        **_monitoring_values(args),
    )


# -- monitoring ---------------------------------------------------------------------------------


def _share(text: str) -> float:
    value = _non_negative_float(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"must be a share between 0 and 1, got {text!r}")
    return value


def _http_url(text: str) -> str:
    if not text.startswith(("http://", "https://")):
        raise argparse.ArgumentTypeError(f"must be an http:// or https:// URL, got {text!r}")
    return text


def _monitoring_options(options: _Options) -> None:
    defaults = ServeConfig(model_uri="")
    options.add(
        "--reference-uri",
        "REFERENCE_URI",
        str,
        None,
        "reference profile (local path or file://) for drift metrics; written by `profile`",
    )
    options.add(
        "--reference-digest", "REFERENCE_DIGEST", str, None, "expected sha256:<64 hex> of it"
    )
    options.add(
        "--drift-window",
        "DRIFT_WINDOW_SECONDS",
        _positive_float,
        defaults.drift_window_seconds,
        "seconds of recent traffic the PSI figures describe",
    )
    options.add(
        "--drift-min-rows",
        "DRIFT_MIN_ROWS",
        _positive_int,
        defaults.drift_min_rows,
        "rows a worker's window needs before it reports PSI",
    )
    options.add(
        "--drift-max-features",
        "DRIFT_MAX_FEATURES",
        _non_negative_int,
        defaults.drift_max_features,
        "features with a PSI figure (the first ones); the rest are only range-checked together",
    )
    options.add("--payload-log-url", "PAYLOAD_LOG_URL", _http_url, None, "HTTP sink of CloudEvents")
    options.add(
        "--payload-log-sample-rate",
        "PAYLOAD_LOG_SAMPLE_RATE",
        _share,
        defaults.payload_log_sample_rate,
        "share of requests logged (0-1)",
    )
    options.add(
        "--payload-log-redact",
        "PAYLOAD_LOG_REDACT",
        _names,
        (),
        "comma-separated feature names or indices replaced before logging",
    )
    options.add(
        "--payload-log-max-queue",
        "PAYLOAD_LOG_MAX_QUEUE",
        _positive_int,
        defaults.payload_log_max_queue,
        "events held per worker; beyond it they are dropped and counted",
    )


def _monitoring_values(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "reference_uri": args.reference_uri or None,
        "reference_digest": args.reference_digest or None,
        "drift_window_seconds": args.drift_window,
        "drift_min_rows": args.drift_min_rows,
        "drift_max_features": args.drift_max_features,
        "payload_log_url": args.payload_log_url or None,
        "payload_log_sample_rate": args.payload_log_sample_rate,
        "payload_log_redact": args.payload_log_redact,
        "payload_log_max_queue": args.payload_log_max_queue,
    }


@dataclasses.dataclass(frozen=True)
class ProfileConfig:
    """What `python -m modelserver profile` runs with."""

    model_uri: str
    data: str
    out: str
    model_format: str = "joblib"
    model_digest: str | None = None
    bins: int = 10
    log_level: str = "INFO"


def parse_profile(argv: Sequence[str], environ: Mapping[str, str]) -> ProfileConfig:
    """Parses the profile flags; an unusable value raises ConfigError."""
    parser = _Parser(
        prog="python -m modelserver profile",
        description="Write the reference profile (JSON) of a model's training data.",
    )
    options = _Options(parser, environ)
    options.add("--model", "MODEL_URI", str, None, "the model file (path or file://)")
    options.add("--model-format", "MODEL_FORMAT", _model_format, "joblib", "joblib or skops")
    options.add("--model-digest", "MODEL_DIGEST", str, None, "expected sha256:<64 hex>")
    options.add("--data", "PROFILE_DATA", str, None, "training data: CSV or .npy")
    options.add("--out", "PROFILE_OUT", str, None, "the profile file to write")
    options.add("--bins", "PROFILE_BINS", _positive_int, 10, "quantile bins per feature")
    options.add("--log-level", "LOG_LEVEL", str.upper, "INFO", "DEBUG, INFO, WARNING or ERROR")
    args = parser.parse_args(list(argv))
    for flag, value in (("--model", args.model), ("--data", args.data), ("--out", args.out)):
        if not value:
            raise ConfigError(f"{flag} is required")
    return ProfileConfig(
        model_uri=args.model,
        data=args.data,
        out=args.out,
        model_format=args.model_format,
        model_digest=args.model_digest or None,
        bins=args.bins,
        log_level=args.log_level,
    )


def parse_fetch(argv: Sequence[str], environ: Mapping[str, str]) -> FetchConfig:
    """Parses the fetch flags (the operator renders these); an unusable value raises ConfigError."""
    defaults = FetchConfig(model_uri="", dest="")
    parser = _Parser(
        prog="python -m modelserver fetch",
        description="Download a model to a local file (the init container).",
    )
    options = _Options(parser, environ)
    _common(options)
    options.add("--dest", "MODEL_DEST", str, None, "file to write the model to")
    options.add(
        "--max-attempts",
        "FETCH_MAX_ATTEMPTS",
        _positive_int,
        defaults.max_attempts,
        "tries on transient errors",
    )
    options.add(
        "--backoff",
        "FETCH_BACKOFF_SECONDS",
        _non_negative_float,
        defaults.backoff_seconds,
        "first wait between tries; doubles each time",
    )
    options.add(
        "--timeout",
        "FETCH_TIMEOUT_SECONDS",
        _non_negative_float,
        defaults.timeout_seconds,
        "network timeout of one try",
    )
    options.add(
        "--max-model-bytes",
        "MAX_MODEL_BYTES",
        _positive_int,
        defaults.max_model_bytes,
        "largest model accepted, in bytes; a bigger one fails the download",
    )
    options.add(
        "--deadline",
        "FETCH_DEADLINE_SECONDS",
        _positive_float,
        defaults.deadline_seconds,
        "longest time for the whole download, every try and wait included",
    )
    args = parser.parse_args(list(argv))
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
        s3_verify_ssl=_env_boolean(environ, "S3_VERIFY_SSL", default=True),
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
    secure = _env_boolean(environ, "S3_USE_HTTPS", default=True)
    return f"{'https' if secure else 'http'}://{endpoint}"


def cgroup_cpu_limit(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """The container's CPU limit in cores (cgroup v2 `cpu.max`, else v1 CFS quota), or None."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        if quota != "max" and int(period) > 0:
            return int(quota) / int(period)
        return None
    except (OSError, ValueError):
        pass
    for folder in ("cpu", "cpu,cpuacct", "cpuacct,cpu"):
        try:
            quota_us = int((root / folder / "cpu.cfs_quota_us").read_text())
            period_us = int((root / folder / "cpu.cfs_period_us").read_text())
        except (OSError, ValueError):
            continue
        if quota_us > 0 and period_us > 0:
            return quota_us / period_us
        return None
    return None


def default_workers(root: Path = Path("/sys/fs/cgroup")) -> int:
    """One process per core the container may use: the CPU limit rounded up, at most the CPUs."""
    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cores = available or 1
    limit = cgroup_cpu_limit(root)
    if limit is not None:
        cores = min(cores, math.ceil(limit))
    return max(1, cores)


# Without a readable limit, assume the operator's default container limit.
FALLBACK_MEMORY_LIMIT = 1024 * 1024 * 1024
# Parsing a JSON body takes about ten times its size (a Python float per value) while it runs; a
# 32nd of a worker's share of the memory limit in bodies leaves room for that, the model, numpy's
# copies and the encoded answers.
_INFLIGHT_SHARE = 32
_MIN_INFLIGHT_BYTES = 1024 * 1024
# A row costs its float64 features, its output and its encoded answer: budget 32 body bytes each.
_BYTES_PER_ROW = 32


def cgroup_memory_limit(root: Path = Path("/sys/fs/cgroup")) -> int | None:
    """The container's memory limit in bytes (cgroup v2 `memory.max`, else v1), or None."""
    for name in ("memory.max", "memory/memory.limit_in_bytes"):
        try:
            text = (root / name).read_text().strip()
        except OSError:
            continue
        # cgroup v1 writes "no limit" as a number near 2**63.
        if text == "max" or not text.isdigit() or int(text) >= 2**62:
            return None
        return int(text)
    return None


def default_inflight_bytes(workers: int, root: Path = Path("/sys/fs/cgroup")) -> int:
    """Request-body bytes one worker admits at once: its share of the memory limit / 32."""
    limit = cgroup_memory_limit(root) or FALLBACK_MEMORY_LIMIT
    return max(_MIN_INFLIGHT_BYTES, limit // max(1, workers) // _INFLIGHT_SHARE)


def default_inflight_rows(inflight_bytes: int) -> int:
    """Rows one worker admits at once, for requests whose bodies are compact (binary tensors)."""
    return max(1024, inflight_bytes // _BYTES_PER_ROW)

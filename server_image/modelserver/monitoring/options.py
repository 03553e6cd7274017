"""Monitoring flags: drift against a reference profile, payload logging, and `profile`'s own."""

from __future__ import annotations

import argparse
import dataclasses

from modelserver.core import options
from modelserver.core.options import ConfigError, Option
from modelserver.runtimes import options as runtime_options


@dataclasses.dataclass(frozen=True)
class MonitoringConfig:
    """Drift (drift.py) and payload logging (payloadlog.py) of a serving process."""

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
class ProfileConfig:
    """What `python -m modelserver profile` runs with."""

    model_uri: str
    data: str
    out: str
    model_format: str = "joblib"
    model_digest: str | None = None
    bins: int = 10
    log_level: str = "INFO"


def _share(text: str) -> float:
    value = options.non_negative_float(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"must be a share between 0 and 1, got {text!r}")
    return value


def _http_url(text: str) -> str:
    if not text.startswith(("http://", "https://")):
        raise argparse.ArgumentTypeError(f"must be an http:// or https:// URL, got {text!r}")
    return text


OPTIONS = (
    Option(
        "--reference-uri",
        "REFERENCE_URI",
        str,
        None,
        "reference profile (local path or file://) for drift metrics; written by `profile`",
    ),
    Option("--reference-digest", "REFERENCE_DIGEST", str, None, "expected sha256:<64 hex> of it"),
    Option(
        "--drift-window",
        "DRIFT_WINDOW_SECONDS",
        options.positive_float,
        MonitoringConfig.drift_window_seconds,
        "seconds of recent traffic the PSI figures describe",
    ),
    Option(
        "--drift-min-rows",
        "DRIFT_MIN_ROWS",
        options.positive_int,
        MonitoringConfig.drift_min_rows,
        "rows a worker's window needs before it reports PSI",
    ),
    Option(
        "--drift-max-features",
        "DRIFT_MAX_FEATURES",
        options.non_negative_int,
        MonitoringConfig.drift_max_features,
        "features with a PSI figure (the first ones); the rest are only range-checked together",
    ),
    Option("--payload-log-url", "PAYLOAD_LOG_URL", _http_url, None, "HTTP sink of CloudEvents"),
    Option(
        "--payload-log-sample-rate",
        "PAYLOAD_LOG_SAMPLE_RATE",
        _share,
        MonitoringConfig.payload_log_sample_rate,
        "share of requests logged (0-1)",
    ),
    Option(
        "--payload-log-redact",
        "PAYLOAD_LOG_REDACT",
        options.names,
        (),
        "comma-separated feature names or indices replaced before logging",
    ),
    Option(
        "--payload-log-max-queue",
        "PAYLOAD_LOG_MAX_QUEUE",
        options.positive_int,
        MonitoringConfig.payload_log_max_queue,
        "events held per worker; beyond it they are dropped and counted",
    ),
)

PROFILE_OPTIONS = (
    Option("--model", "MODEL_URI", str, None, "the model file (path or file://)"),
    runtime_options.MODEL_FORMAT,
    Option("--model-digest", "MODEL_DIGEST", str, None, "expected sha256:<64 hex>"),
    Option("--data", "PROFILE_DATA", str, None, "training data: CSV or .npy"),
    Option("--out", "PROFILE_OUT", str, None, "the profile file to write"),
    Option("--bins", "PROFILE_BINS", options.positive_int, 10, "quantile bins per feature"),
    options.LOG_LEVEL,
)


def monitoring_config(args: argparse.Namespace) -> MonitoringConfig:
    return MonitoringConfig(
        reference_uri=args.reference_uri or None,
        reference_digest=args.reference_digest or None,
        drift_window_seconds=args.drift_window,
        drift_min_rows=args.drift_min_rows,
        drift_max_features=args.drift_max_features,
        payload_log_url=args.payload_log_url or None,
        payload_log_sample_rate=args.payload_log_sample_rate,
        payload_log_redact=args.payload_log_redact,
        payload_log_max_queue=args.payload_log_max_queue,
    )


def profile_config(args: argparse.Namespace) -> ProfileConfig:
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

"""Access flags (issue 13): bearer-token authorization, TLS and the pod's rate limit."""

from __future__ import annotations

import argparse
import dataclasses
import math

from modelserver.core import options
from modelserver.core.options import ConfigError, Option

AUTH_MODES = ("none", "kubernetes")


@dataclasses.dataclass(frozen=True)
class AccessConfig:
    """Who may call the model and how often: auth, TLS and the pod's rate limit."""

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


def _auth_mode(text: str) -> str:
    lowered = text.strip().lower()
    if lowered not in AUTH_MODES:
        raise argparse.ArgumentTypeError(f"must be one of {', '.join(AUTH_MODES)}, got {text!r}")
    return lowered


def _allow_ttl(text: str) -> float:
    value = options.non_negative_float(text)
    if value > 60:  # the documented bound: a revoked binding bites within a minute
        raise argparse.ArgumentTypeError(f"must be at most 60 seconds, got {text!r}")
    return value


OPTIONS = (
    Option("--auth", "AUTH", _auth_mode, "none", "none, or kubernetes (bearer tokens, RBAC)"),
    Option("--auth-name", "AUTH_NAME", str, None, "resource name reviewed (default: model)"),
    Option("--auth-namespace", "AUTH_NAMESPACE", str, None, "namespace reviewed"),
    Option(
        "--auth-allow-ttl",
        "AUTH_ALLOW_TTL_SECONDS",
        _allow_ttl,
        AccessConfig.auth_allow_ttl_seconds,
        "seconds an allowed token is trusted without asking again (at most 60)",
    ),
    Option(
        "--auth-deny-ttl",
        "AUTH_DENY_TTL_SECONDS",
        options.non_negative_float,
        AccessConfig.auth_deny_ttl_seconds,
        "seconds a refused token is refused without asking again",
    ),
    Option(
        "--auth-cache-size",
        "AUTH_CACHE_SIZE",
        options.non_negative_int,
        AccessConfig.auth_cache_size,
        "tokens whose decision each worker remembers",
    ),
    Option("--tls-cert-file", "TLS_CERT_FILE", str, None, "PEM certificate: serve HTTPS"),
    Option("--tls-key-file", "TLS_KEY_FILE", str, None, "PEM private key of the certificate"),
    Option(
        "--rate-limit-rps",
        "RATE_LIMIT_RPS",
        options.non_negative_float,
        0.0,
        "requests per second the pod admits (health and metrics aside), 429 beyond; 0: no limit",
    ),
    Option(
        "--rate-limit-burst",
        "RATE_LIMIT_BURST",
        options.non_negative_int,
        0,
        "requests admitted at once above the rate; 0: one second's worth",
    ),
)


def access_config(args: argparse.Namespace) -> AccessConfig:
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

"""Command line: `python -m modelserver [serve]` serves, `python -m modelserver fetch` downloads.

Configuration errors end the process with exit code 2 and a one-line reason in the termination log,
like load and fetch failures, so that a typo in the pod spec is visible in `kubectl describe pod`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence

from modelserver import config
from modelserver.core import logs, options, termination
from modelserver.process import supervisor


def main(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> int:
    """Runs the subcommand named by `argv[0]` (serve when absent); returns the exit code."""
    env = os.environ if environ is None else environ
    args = list(argv)
    command = "serve"
    if args and args[0] in ("serve", "fetch", "profile"):
        command = args.pop(0)
    try:
        if command == "profile":
            profile_config = config.parse_profile(args, env)
        elif command == "fetch":
            fetch_config = config.parse_fetch(args, env)
        else:
            serve_config = config.parse_serve(args, env)
    except options.ConfigError as error:
        reason = f"invalid configuration: {error}"
        print(reason, file=sys.stderr)
        termination.write_reason(
            reason, env.get("TERMINATION_LOG") or options.DEFAULT_TERMINATION_LOG
        )
        return 2
    if command == "profile":
        logs.configure(profile_config.log_level)
        from modelserver.monitoring import profile  # noqa: PLC0415 - scikit-learn only when profiling.

        return profile.run(profile_config)
    if command == "fetch":
        logs.configure(fetch_config.log_level)
        from modelserver.fetching import fetch  # noqa: PLC0415 - boto3 is imported only by the fetcher.

        return fetch.run(fetch_config)
    logs.configure(serve_config.process.log_level)
    problem = preflight(serve_config, env)
    if problem is not None:
        reason = f"invalid configuration: {problem}"
        print(reason, file=sys.stderr)
        termination.write_reason(reason, serve_config.process.termination_log)
        return 2
    return supervisor.serve(serve_config)


def preflight(serve_config: config.ServeConfig, env: Mapping[str, str]) -> str | None:
    """Why the access settings cannot work (unreadable certificate, no API server), if so: found
    before any worker starts, reported like a bad flag."""
    from modelserver.access import kubeapi, tls  # noqa: PLC0415 - only servers that use them.

    settings = serve_config.access
    if settings.tls_cert_file and settings.tls_key_file:
        try:
            tls.load_context(settings.tls_cert_file, settings.tls_key_file)
        except tls.TlsConfigError as error:
            return str(error)
    if settings.auth == "kubernetes":
        try:
            kubeapi.discover(env)
        except kubeapi.DiscoveryError as error:
            return str(error)
        if not (settings.auth_namespace or kubeapi.in_cluster_namespace()):
            return "--auth kubernetes needs --auth-namespace (AUTH_NAMESPACE) outside a pod"
    return None

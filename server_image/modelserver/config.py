"""The one parser of each command, assembled from the flags every part declares next to its code.

Every flag has an environment variable of the same meaning, because the operator renders a pod spec
and either is convenient there (see core/options.py). The flags are listed in the order `--help` has
always shown them, which interleaves the parts; each part's typed piece of the configuration is
built by that part.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from modelserver.access import options as access
from modelserver.core import options
from modelserver.core.options import ConfigError, Option
from modelserver.fetching import options as fetching
from modelserver.fetching.options import FetchConfig
from modelserver.http import options as http
from modelserver.monitoring import options as monitoring
from modelserver.monitoring.options import ProfileConfig
from modelserver.process import options as process
from modelserver.process.options import ServeConfig
from modelserver.runtimes import options as runtimes
from modelserver.serving import options as serving

__all__ = ["ConfigError", "FetchConfig", "ProfileConfig", "ServeConfig"]

SERVE: tuple[Option, ...] = (
    *options.COMMON,
    *runtimes.MODEL,
    *http.LISTEN,
    *process.WORKERS,
    *http.BODY,
    *runtimes.BATCHING,
    *serving.OPTIONS,
    *process.SHUTDOWN,
    *http.CONNECTIONS,
    *process.SCRATCH,
    *access.OPTIONS,
    *monitoring.OPTIONS,
)
FETCH: tuple[Option, ...] = (*options.COMMON, *fetching.OPTIONS)


def parse_serve(argv: Sequence[str], environ: Mapping[str, str]) -> ServeConfig:
    """Parses the serve flags; an unusable value raises ConfigError."""
    parser = options.Parser(
        prog="python -m modelserver",
        description="Serve one scikit-learn model (KServe V1 and Open Inference Protocol V2).",
        epilog="`python -m modelserver fetch --help`: download a model first (init container).",
    )
    options.declare(parser, SERVE, environ)
    args = parser.parse_args(list(argv))
    model = runtimes.model_config(args)
    process_config = process.process_config(args)
    return ServeConfig(
        model=model,
        http=http.http_config(args),
        batching=runtimes.batching_config(args),
        admission=serving.admission_config(args, process_config.workers),
        access=access.access_config(args),
        monitoring=monitoring.monitoring_config(args),
        process=process_config,
    )


def parse_profile(argv: Sequence[str], environ: Mapping[str, str]) -> ProfileConfig:
    """Parses the profile flags; an unusable value raises ConfigError."""
    parser = options.Parser(
        prog="python -m modelserver profile",
        description="Write the reference profile (JSON) of a model's training data.",
    )
    options.declare(parser, monitoring.PROFILE_OPTIONS, environ)
    return monitoring.profile_config(parser.parse_args(list(argv)))


def parse_fetch(argv: Sequence[str], environ: Mapping[str, str]) -> FetchConfig:
    """Parses the fetch flags (the operator renders these); an unusable value raises ConfigError."""
    parser = options.Parser(
        prog="python -m modelserver fetch",
        description="Download a model to a local file (the init container).",
    )
    options.declare(parser, FETCH, environ)
    return fetching.fetch_config(parser.parse_args(list(argv)), environ)

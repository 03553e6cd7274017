"""The runtime's flags: which model, in which format, and how requests are batched into calls."""

from __future__ import annotations

import argparse
import dataclasses

from modelserver.core import options
from modelserver.core.options import Option

MODEL_FORMATS = ("joblib", "skops")


def model_format(text: str) -> str:
    lowered = text.strip().lower()
    if lowered not in MODEL_FORMATS:
        raise argparse.ArgumentTypeError(f"must be one of {', '.join(MODEL_FORMATS)}, got {text!r}")
    return lowered


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The model served: where it is, what it is called, how to read it."""

    uri: str
    name: str = "model"
    format: str = "joblib"
    digest: str | None = None
    version: str | None = None
    trusted_types: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class BatchingConfig:
    """How requests that arrive together share one predict call (batching.py)."""

    max_batch_size: int = 256
    max_batch_wait_ms: float = 2.0
    max_queue_depth: int = 512


MODEL_FORMAT = Option("--model-format", "MODEL_FORMAT", model_format, "joblib", "joblib or skops")
MODEL = (
    Option("--model-name", "MODEL_NAME", str, ModelConfig.name, "name in the URLs"),
    MODEL_FORMAT,
    Option("--model-version", "MODEL_VERSION", str, None, "version shown in metadata"),
    Option(
        "--trusted-types",
        "MODEL_TRUSTED_TYPES",
        options.names,
        (),
        "comma-separated extra types a skops file may contain",
    ),
)
BATCHING = (
    Option(
        "--max-batch-size",
        "MAX_BATCH_SIZE",
        options.positive_int,
        BatchingConfig.max_batch_size,
        "most rows in one predict call",
    ),
    Option(
        "--max-batch-wait-ms",
        "MAX_BATCH_WAIT_MS",
        options.non_negative_float,
        BatchingConfig.max_batch_wait_ms,
        "longest wait for a batch to fill when requests arrive concurrently",
    ),
    Option(
        "--max-queue-depth",
        "MAX_QUEUE_DEPTH",
        options.positive_int,
        BatchingConfig.max_queue_depth,
        "requests waiting per worker before 503",
    ),
)


def model_config(args: argparse.Namespace) -> ModelConfig:
    if not args.model_uri:
        raise options.ConfigError("no model: set --model-uri or MODEL_URI")
    return ModelConfig(
        uri=args.model_uri,
        name=args.model_name,
        format=args.model_format,
        digest=args.model_digest or None,
        version=args.model_version or None,
        trusted_types=args.trusted_types,
    )


def batching_config(args: argparse.Namespace) -> BatchingConfig:
    return BatchingConfig(
        max_batch_size=args.max_batch_size,
        max_batch_wait_ms=args.max_batch_wait_ms,
        max_queue_depth=args.max_queue_depth,
    )

"""The data plane's flags: how much work in flight (body bytes, rows) one worker admits."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from modelserver.core import options
from modelserver.core.options import Option

# Without a readable limit, assume the operator's default container limit.
FALLBACK_MEMORY_LIMIT = 1024 * 1024 * 1024
# Parsing a JSON body takes about ten times its size (a Python float per value) while it runs; a
# 32nd of a worker's share of the memory limit in bodies leaves room for that, the model, numpy's
# copies and the encoded answers.
_INFLIGHT_SHARE = 32
_MIN_INFLIGHT_BYTES = 1024 * 1024
# A row costs its float64 features, its output and its encoded answer: budget 32 body bytes each.
_BYTES_PER_ROW = 32


@dataclasses.dataclass(frozen=True)
class AdmissionConfig:
    """Request-body bytes and rows one worker works on at once; beyond them 503 (admission.py)."""

    max_inflight_bytes: int = 0
    max_inflight_rows: int = 0


OPTIONS = (
    Option(
        "--max-inflight-bytes",
        "MAX_INFLIGHT_BYTES",
        options.non_negative_int,
        0,
        "request-body bytes one worker works on at once before 503; 0: from the memory limit",
    ),
    Option(
        "--max-inflight-rows",
        "MAX_INFLIGHT_ROWS",
        options.non_negative_int,
        0,
        "rows one worker works on at once before 503; 0: from the in-flight bytes",
    ),
)


def admission_config(args: argparse.Namespace, workers: int) -> AdmissionConfig:
    """The caps given, or derived from the container's memory limit shared by `workers`."""
    inflight_bytes = args.max_inflight_bytes or default_inflight_bytes(workers)
    return AdmissionConfig(
        max_inflight_bytes=inflight_bytes,
        max_inflight_rows=args.max_inflight_rows or default_inflight_rows(inflight_bytes),
    )


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

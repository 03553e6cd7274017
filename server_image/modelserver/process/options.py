"""The process flags (workers, the probes' port, shutdown timing, scratch space) and `ServeConfig`,
what `python -m modelserver` (serve) runs with: one typed piece per part."""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
from pathlib import Path

from modelserver.access.options import AccessConfig
from modelserver.core import options
from modelserver.core.options import Option
from modelserver.http.options import HttpConfig
from modelserver.monitoring.options import MonitoringConfig
from modelserver.runtimes.options import BatchingConfig, ModelConfig
from modelserver.serving.options import AdmissionConfig


@dataclasses.dataclass(frozen=True)
class ProcessConfig:
    """The supervisor and its workers."""

    health_port: int = 8081  # 0: no listener of their own for the probes
    workers: int = 1
    drain_delay_seconds: float = 2.0
    graceful_timeout_seconds: float = 20.0
    termination_log: str = options.DEFAULT_TERMINATION_LOG
    log_level: str = "INFO"
    metrics_dir: str = "/tmp/modelserver-metrics"  # noqa: S108 - /tmp is the pod's only writable path.


@dataclasses.dataclass(frozen=True)
class ServeConfig:
    """What `python -m modelserver` (serve) runs with."""

    model: ModelConfig
    http: HttpConfig = dataclasses.field(default_factory=HttpConfig)
    batching: BatchingConfig = dataclasses.field(default_factory=BatchingConfig)
    admission: AdmissionConfig = dataclasses.field(default_factory=AdmissionConfig)
    access: AccessConfig = dataclasses.field(default_factory=AccessConfig)
    monitoring: MonitoringConfig = dataclasses.field(default_factory=MonitoringConfig)
    process: ProcessConfig = dataclasses.field(default_factory=ProcessConfig)


WORKERS = (
    Option(
        "--health-port",
        "HEALTH_PORT",
        options.port_or_zero,
        ProcessConfig.health_port,
        "port of the probes' own listener (/v2/health/live and /ready), 0 for none",
    ),
    Option("--workers", "WORKERS", options.positive_int, None, "server processes"),
)
SHUTDOWN = (
    Option(
        "--drain-delay",
        "DRAIN_DELAY_SECONDS",
        options.non_negative_float,
        ProcessConfig.drain_delay_seconds,
        "after SIGTERM, keep accepting this long while readiness is 503",
    ),
    Option(
        "--graceful-timeout",
        "GRACEFUL_TIMEOUT_SECONDS",
        options.non_negative_float,
        ProcessConfig.graceful_timeout_seconds,
        "after the drain delay, longest wait for in-flight requests",
    ),
)
SCRATCH = (
    Option(
        "--metrics-dir",
        "METRICS_DIR",
        str,
        ProcessConfig.metrics_dir,
        "scratch directory for the metrics of all worker processes",
    ),
)


def process_config(args: argparse.Namespace) -> ProcessConfig:
    return ProcessConfig(
        health_port=args.health_port,
        workers=args.workers if args.workers is not None else default_workers(),
        drain_delay_seconds=args.drain_delay,
        graceful_timeout_seconds=args.graceful_timeout,
        termination_log=args.termination_log,
        log_level=args.log_level,
        metrics_dir=args.metrics_dir,
    )


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

"""Operator settings, read once at start-up from flags or the environment (never at import)."""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

DEFAULT_SERVER_IMAGE = "modeldeploy/modelserver:0.1.0"
DEFAULT_FIELD_MANAGER = "modeldeploy"


@dataclass(frozen=True)
class Settings:
    """What an operator deployment can configure."""

    server_image: str = DEFAULT_SERVER_IMAGE
    """Model server image used unless a ModelDeployment sets spec.server.image."""

    namespaces: tuple[str, ...] = ()
    """Namespaces to watch; empty means the whole cluster."""

    field_manager: str = DEFAULT_FIELD_MANAGER
    """Server-side apply field manager of every object the operator writes."""

    metrics_port: int = 8000
    """Port of the operator's Prometheus /metrics endpoint (0 disables it)."""

    health_port: int = 8081
    """Port of the liveness endpoint /healthz (0 disables it)."""

    cluster_domain: str = "cluster.local"
    """DNS suffix used in status.url."""

    api_timeout_seconds: float = 30.0
    """Upper bound of one Kubernetes API call, so a reconcile thread never hangs."""

    workers: int = 4
    """Reconciles running at once (each in its own thread; one per resource at a time)."""

    leader_election: bool = False
    """Stand by until this process holds the Lease (two replicas, one reconciling)."""

    lease_name: str = "modeldeploy-operator"
    """Name of the coordination.k8s.io/v1 Lease of the leader election."""

    lease_namespace: str = "modeldeploy-system"
    """Namespace of that Lease: the operator's own (POD_NAMESPACE in a pod)."""

    resync_seconds: float = 600.0
    """Period of the full resync of each resource (jittered by 10 %): repairs what a missed
    watch event hid; writes nothing when nothing differs."""


def _csv(value: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in value.split(",") if item.strip())


def load_settings(
    argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None
) -> Settings:
    """Flags win over environment variables (MODELDEPLOY_*), which win over defaults."""
    env = os.environ if env is None else env
    parser = argparse.ArgumentParser(
        prog="python -m modeldeploy", description="The ModelDeployment operator."
    )
    parser.add_argument(
        "--server-image",
        default=env.get("MODELDEPLOY_SERVER_IMAGE", DEFAULT_SERVER_IMAGE),
        help="default model server image (env MODELDEPLOY_SERVER_IMAGE)",
    )
    parser.add_argument(
        "--namespace",
        action="append",
        dest="namespaces",
        default=None,
        help="namespace to watch, repeatable (env MODELDEPLOY_NAMESPACES, comma-separated); "
        "default: all",
    )
    parser.add_argument(
        "--field-manager",
        default=env.get("MODELDEPLOY_FIELD_MANAGER", DEFAULT_FIELD_MANAGER),
        help="server-side apply field manager (env MODELDEPLOY_FIELD_MANAGER)",
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=int(env.get("MODELDEPLOY_METRICS_PORT", "8000")),
        help="Prometheus metrics port, 0 to disable (env MODELDEPLOY_METRICS_PORT)",
    )
    parser.add_argument(
        "--health-port",
        type=int,
        default=int(env.get("MODELDEPLOY_HEALTH_PORT", "8081")),
        help="liveness port for /healthz, 0 to disable (env MODELDEPLOY_HEALTH_PORT)",
    )
    parser.add_argument(
        "--cluster-domain",
        default=env.get("MODELDEPLOY_CLUSTER_DOMAIN", "cluster.local"),
        help="cluster DNS domain for status.url (env MODELDEPLOY_CLUSTER_DOMAIN)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=int(env.get("MODELDEPLOY_WORKERS", "4")),
        help="reconciles running at once (env MODELDEPLOY_WORKERS)",
    )
    parser.add_argument(
        "--resync-seconds",
        type=float,
        default=float(env.get("MODELDEPLOY_RESYNC_SECONDS", "600")),
        help="period of the full resync of each resource (env MODELDEPLOY_RESYNC_SECONDS)",
    )
    parser.add_argument(
        "--leader-election",
        action=argparse.BooleanOptionalAction,
        default=env.get("MODELDEPLOY_LEADER_ELECTION", "false").lower() in ("1", "true", "yes"),
        help="reconcile only while holding the Lease (env MODELDEPLOY_LEADER_ELECTION)",
    )
    parser.add_argument(
        "--lease-namespace",
        default=env.get("POD_NAMESPACE", "modeldeploy-system"),
        help="namespace of the leader Lease (env POD_NAMESPACE)",
    )
    args = parser.parse_args(argv)
    if args.workers < 1 or args.resync_seconds <= 0:
        parser.error("--workers must be at least 1 and --resync-seconds above 0")
    namespaces = (
        tuple(args.namespaces) if args.namespaces else _csv(env.get("MODELDEPLOY_NAMESPACES", ""))
    )
    return Settings(
        server_image=args.server_image,
        namespaces=namespaces,
        field_manager=args.field_manager,
        metrics_port=args.metrics_port,
        health_port=args.health_port,
        cluster_domain=args.cluster_domain,
        workers=args.workers,
        leader_election=args.leader_election,
        lease_namespace=args.lease_namespace,
        resync_seconds=args.resync_seconds,
    )

"""The operator's own Prometheus metrics (a leaf module: anything may import it)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

RECONCILES = Counter(
    "modeldeploy_reconciles_total",
    "Reconciles of ModelDeployments, by trigger and result.",
    ["trigger", "result"],
)
RECONCILE_SECONDS = Histogram(
    "modeldeploy_reconcile_duration_seconds",
    "Time one reconcile took, including its API calls.",
    ["trigger"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
API_ERRORS = Counter(
    "modeldeploy_api_errors_total",
    "Kubernetes API calls that failed (404 on purpose-tolerant reads excluded).",
    ["verb", "kind", "code"],
)
WRITES = Counter(
    "modeldeploy_api_writes_total",
    "Kubernetes API writes the operator made, by kind and verb.",
    ["kind", "verb"],
)
RESOURCES = Gauge(
    "modeldeploy_resources",
    "ModelDeployments known to this operator, by phase.",
    ["phase"],
)
API_REQUESTS = Counter(
    "modeldeploy_api_requests_total",
    "Kubernetes API requests the operator made (reads and writes), by verb and kind.",
    ["verb", "kind"],
)
QUEUE_DEPTH = Gauge(
    "modeldeploy_workqueue_depth",
    "ModelDeployments waiting for a reconcile worker now.",
)
RETRIES = Counter(
    "modeldeploy_workqueue_retries_total",
    "Reconciles scheduled again with backoff after a failure.",
)
REMEMBERED = Gauge(
    "modeldeploy_remembered_objects",
    "Entries the operator holds in memory, by store (parents, children, per-resource state); "
    "flat when resources come and go.",
    ["store"],
)
LEADER = Gauge(
    "modeldeploy_leader",
    "1 while this replica holds the leader Lease and reconciles, 0 on a standby.",
)
WATCH_EVENTS = Counter(
    "modeldeploy_watch_events_total",
    "Watch events the operator received, by kind (ModelDeployment or a child kind).",
    ["kind"],
)

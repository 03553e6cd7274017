"""Prometheus metrics of the server, summed over all worker processes.

Each worker writes its values to memory-mapped files in a shared directory (prometheus_client's
multiprocess mode), and `/metrics`, whichever worker answers it, adds up every worker's files. The
directory must be named in PROMETHEUS_MULTIPROC_DIR before prometheus_client is first imported; the
supervisor does that before any worker starts.
"""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import multiprocess as prom_multiprocess
from prometheus_client.exposition import CONTENT_TYPE_LATEST

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = CONTENT_TYPE_LATEST

_LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class Metrics:
    """The server's metrics for one model; the hot-path methods use pre-resolved label children."""

    def __init__(self, model_name: str) -> None:
        self._model = model_name
        self._multiprocess = bool(os.environ.get(MULTIPROC_ENV))
        self._registry = CollectorRegistry(auto_describe=True)
        registry = None if self._multiprocess else self._registry
        self.requests = Counter(
            "modelserver_requests",
            "Inference requests answered, by model, protocol and HTTP status.",
            ["model", "protocol", "status"],
            registry=registry,
        )
        self.latency = Histogram(
            "modelserver_request_duration_seconds",
            "Time from a parsed inference request to its response, by model and protocol.",
            ["model", "protocol"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.batch_size = Histogram(
            "modelserver_batch_size",
            "Rows in each predict call (requests combined by the batcher).",
            ["model"],
            buckets=_BATCH_BUCKETS,
            registry=registry,
        )
        self.predict_seconds = Histogram(
            "modelserver_predict_duration_seconds",
            "Time of each predict call of the model.",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.queue_depth = Gauge(
            "modelserver_queue_depth",
            "Requests waiting for a predict call, summed over workers.",
            ["model"],
            multiprocess_mode="livesum",
            registry=registry,
        )
        self.load_seconds = Gauge(
            "modelserver_model_load_seconds",
            "Seconds it took to read, verify and deserialize the model (slowest worker).",
            ["model"],
            multiprocess_mode="max",
            registry=registry,
        )
        self._batch_size = self.batch_size.labels(model_name)
        self._predict_seconds = self.predict_seconds.labels(model_name)
        self._queue_depth = self.queue_depth.labels(model_name)
        self._by_outcome: dict[tuple[str, int], tuple[Counter, Histogram]] = {}

    def observe_request(self, protocol: str, status: int, seconds: float) -> None:
        """Counts one answered inference request and its latency."""
        children = self._by_outcome.get((protocol, status))
        if children is None:
            children = (
                self.requests.labels(self._model, protocol, str(status)),
                self.latency.labels(self._model, protocol),
            )
            self._by_outcome[(protocol, status)] = children
        children[0].inc()
        children[1].observe(seconds)

    def observe_batch(self, rows: int, seconds: float) -> None:
        """Records one predict call."""
        self._batch_size.observe(rows)
        self._predict_seconds.observe(seconds)

    def observe_queue(self, depth: int) -> None:
        """Records how many requests wait for the model in this worker."""
        self._queue_depth.set(depth)

    def observe_load(self, seconds: float) -> None:
        """Records how long loading the model took."""
        self.load_seconds.labels(self._model).set(seconds)

    def render(self) -> bytes:
        """The Prometheus text exposition of all workers' metrics."""
        if self._multiprocess:
            registry = CollectorRegistry()
            prom_multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            return generate_latest(registry)
        return generate_latest(self._registry)

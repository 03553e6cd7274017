"""Prometheus metrics of the server, summed over all worker processes.

Each worker writes its values to memory-mapped files in a shared directory (prometheus_client's
multiprocess mode), and `/metrics`, whichever worker answers it, adds up every worker's files. The
directory must be named in PROMETHEUS_MULTIPROC_DIR before prometheus_client is first imported; the
supervisor does that before any worker starts.

A multiprocess update takes a lock, a getpid() system call and a write to the file: about 3 us per
request for a counter and a histogram, as much as parsing the request. So the hot path only adds to
plain Python numbers, and `flush()` (every half second, and before answering /metrics) moves them
into prometheus_client. Histograms are flushed into their bucket values directly, the same updates
`Histogram.observe` makes one observation at a time.
"""

from __future__ import annotations

import bisect
import os
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import multiprocess as prom_multiprocess
from prometheus_client.exposition import CONTENT_TYPE_LATEST

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = CONTENT_TYPE_LATEST
FLUSH_INTERVAL_SECONDS = 0.5

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


class _Pending:
    """Observations of one histogram child not yet flushed: per-bucket counts and their sum."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.total = 0.0

    def add(self, value: float) -> None:
        # The first bucket whose upper bound is >= value (Prometheus buckets are "le").
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value

    def flush_into(self, child: Histogram) -> None:
        if not any(self.counts):
            return
        # Histogram.observe increments one bucket value and the sum; these are the same values.
        buckets = child._buckets  # private: see the module docstring
        for index, count in enumerate(self.counts):
            if count:
                buckets[index].inc(count)
        child._sum.inc(self.total)
        self.counts = [0] * len(self.counts)
        self.total = 0.0


class Metrics:
    """The server's metrics for one model; the hot-path methods only update local numbers."""

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
        # Access (issue 13): the token reviews a worker asked the API server for (cache misses).
        self.reviews = Counter(
            "modelserver_auth_reviews",
            "Token reviews sent to the Kubernetes API server, by outcome "
            "(allowed, denied, unauthenticated, error).",
            ["model", "outcome"],
            registry=registry,
        )
        self._requests: dict[tuple[str, int], int] = {}
        self._latency: dict[str, _Pending] = {}
        self._batch_size = _Pending(_BATCH_BUCKETS)
        self._predict_seconds = _Pending(_LATENCY_BUCKETS)
        self._queue_depth = 0
        self._queue_depth_flushed = -1
        self._also_flush: list[Callable[[], None]] = []

    @property
    def registry(self) -> CollectorRegistry | None:
        """Where further metrics register: nowhere in multiprocess mode (they write files)."""
        return None if self._multiprocess else self._registry

    def also_flush(self, flush: Callable[[], None]) -> None:
        """Has `flush()` call `flush` too (metrics kept by other modules, e.g. predictions.py)."""
        self._also_flush.append(flush)

    def observe_request(self, protocol: str, status: int, seconds: float) -> None:
        """Counts one answered inference request and its latency."""
        key = (protocol, status)
        self._requests[key] = self._requests.get(key, 0) + 1
        pending = self._latency.get(protocol)
        if pending is None:
            pending = self._latency[protocol] = _Pending(_LATENCY_BUCKETS)
        pending.add(seconds)

    def observe_review(self, outcome: str) -> None:
        """Counts one token review (rare: only cache misses reach the API server)."""
        self.reviews.labels(self._model, outcome).inc()

    def observe_batch(self, rows: int, seconds: float) -> None:
        """Records one predict call."""
        self._batch_size.add(rows)
        self._predict_seconds.add(seconds)

    def observe_queue(self, depth: int) -> None:
        """Records how many requests wait for the model in this worker."""
        self._queue_depth = depth

    def observe_load(self, seconds: float) -> None:
        """Records how long loading the model took."""
        self.load_seconds.labels(self._model).set(seconds)

    def flush(self) -> None:
        """Moves what the hot path counted into prometheus_client (visible to every worker)."""
        model = self._model
        if self._requests:
            for (protocol, status), count in self._requests.items():
                self.requests.labels(model, protocol, str(status)).inc(count)
            self._requests = {}
        for protocol, pending in self._latency.items():
            pending.flush_into(self.latency.labels(model, protocol))
        self._batch_size.flush_into(self.batch_size.labels(model))
        self._predict_seconds.flush_into(self.predict_seconds.labels(model))
        if self._queue_depth != self._queue_depth_flushed:
            self.queue_depth.labels(model).set(self._queue_depth)
            self._queue_depth_flushed = self._queue_depth
        for flush in self._also_flush:
            flush()

    def render(self) -> bytes:
        """The Prometheus text exposition of all workers' metrics."""
        self.flush()
        if self._multiprocess:
            return render_directory()[1]
        return generate_latest(self._registry)


def render_directory() -> tuple[bytes, bytes]:
    """Content type and text of every worker's metrics, from the multiprocess directory (what
    the workers flushed, at most FLUSH_INTERVAL_SECONDS ago)."""
    registry = CollectorRegistry()
    prom_multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return CONTENT_TYPE.encode(), generate_latest(registry)

"""What the model answered: predictions per class (classifiers) or a histogram of predicted values
(regressors), per model version, counted in every worker and summed over workers like the other
metrics (see metrics.py).

The runner that the batcher calls is wrapped, so that every predict call is counted once, whichever
protocol (V1 or V2) its requests came from and whether it ran on the loop or, for a request larger
than a batch, in a thread. Counting is vectorised over the call's rows (one searchsorted and one
bincount per batch, no Python loop per row) into a preallocated array; `flush()` moves the counts
into prometheus_client with the other metrics.
"""

from __future__ import annotations

import bisect
import logging
import math
import threading
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Histogram

from modelserver.runtimes import runtime

log = logging.getLogger("modelserver.monitoring")  # the name its log lines have always carried

# Runs `method` on a 2-D array (batching.Runner).
Runner = Callable[[str, np.ndarray], np.ndarray]
# Called after each predict call with the method, its input rows and its output.
Observer = Callable[[str, np.ndarray, np.ndarray], None]


def _one_two_five(low_exponent: int, high_exponent: int) -> tuple[float, ...]:
    return tuple(
        float(f"{mantissa}e{exponent}")
        for exponent in range(low_exponent, high_exponent + 1)
        for mantissa in (1, 2, 5)
    )


# Up to this many rows a Python loop costs less than numpy's per-call overhead (about 7 us for the
# calls of a one-row batch against 1 us).
_SMALL = 8

# Without a reference profile regressors' predictions fall in buckets of a 1-2-5 series from
# -50000 to 50000 (0.01 the finest step); with one, in the profile's prediction bins instead.
_POSITIVE = _one_two_five(-2, 4)
DEFAULT_VALUE_BUCKETS = (*(-bound for bound in reversed(_POSITIVE)), 0.0, *_POSITIVE)


class PredictionCounter:
    """Counts one worker's predictions (see the module docstring); thread-safe."""

    def __init__(
        self,
        registry: CollectorRegistry | None,
        *,
        model: str,
        version: str | None,
        classes: Sequence[Any] | None,
        value_buckets: Sequence[float] = DEFAULT_VALUE_BUCKETS,
    ) -> None:
        self._labels = (model, version or "")
        self._lock = threading.Lock()
        self._classes: np.ndarray | None = None
        self._buckets = np.asarray(sorted(value_buckets), dtype=np.float64)
        if classes is not None and len(classes) > 0:
            self._classes = np.asarray(classes)
            self._class_names = [str(name) for name in classes]
            self._class_index = {label: index for index, label in enumerate(classes)}
            self._counter = Counter(
                "modelserver_predictions",
                "Predictions made, by model, version and predicted class (classifiers).",
                ["model", "version", "class"],
                registry=registry,
            )
            self._counts = np.zeros(len(classes), dtype=np.int64)
        else:
            self._histogram = Histogram(
                "modelserver_prediction_value",
                "Predicted values, by model and version (regressors).",
                ["model", "version"],
                buckets=tuple(float(bound) for bound in self._buckets),
                registry=registry,
            )
            self._counts = np.zeros(len(self._buckets) + 1, dtype=np.int64)  # the last: +Inf
        self._bounds = self._buckets.tolist()
        self._sum = 0.0

    def observe(self, method: str, x: np.ndarray, result: np.ndarray) -> None:
        """Counts the predictions of one predict call (`x` is unused here: see drift.py)."""
        del x
        classes = self._classes
        if classes is None:
            if method == runtime.PREDICT:
                self._observe_values(result)
        elif method == runtime.PREDICT_PROBA:
            if result.ndim == 2 and result.shape[1] == len(classes):
                self._add(np.bincount(result.argmax(axis=1), minlength=len(classes)), 0.0)
        elif result.ndim == 1:
            self._observe_labels(classes, result)

    def _observe_labels(self, classes: np.ndarray, labels: np.ndarray) -> None:
        if len(labels) <= _SMALL:
            index_of = self._class_index
            with self._lock:
                for label in labels.tolist():
                    position = index_of.get(label)
                    if position is not None:
                        self._counts[position] += 1
            return
        # classes_ of a fitted classifier are sorted (np.unique): a label's index is its position.
        index = np.minimum(np.searchsorted(classes, labels), len(classes) - 1)
        known = classes[index] == labels
        if not known.all():
            index = index[known]
        self._add(np.bincount(index, minlength=len(classes)), 0.0)

    def _observe_values(self, values: np.ndarray) -> None:
        values = values.ravel()
        if values.dtype.kind not in "fiub":
            return
        if len(values) <= _SMALL:
            bounds = self._bounds
            with self._lock:
                for value in values.tolist():
                    self._counts[bisect.bisect_left(bounds, value)] += 1
                    if math.isfinite(value):
                        self._sum += value
            return
        # The first bucket whose upper bound is >= the value (Prometheus buckets are "le").
        index = np.searchsorted(self._buckets, values, side="left")
        total = float(values.sum())
        self._add(np.bincount(index, minlength=len(self._counts)), total)

    def _add(self, counts: np.ndarray, total: float) -> None:
        with self._lock:
            self._counts += counts
            if math.isfinite(total):
                self._sum += total

    def flush(self) -> None:
        """Moves the counts into prometheus_client (visible to every worker)."""
        with self._lock:
            if not self._counts.any():
                return
            counts = self._counts.tolist()
            total = self._sum
            self._counts[:] = 0
            self._sum = 0.0
        model, version = self._labels
        if self._classes is not None:
            for name, count in zip(self._class_names, counts, strict=True):
                if count:
                    self._counter.labels(model, version, name).inc(count)
            return
        child = self._histogram.labels(model, version)
        buckets = child._buckets  # private: the same values Histogram.observe updates (metrics.py)
        for index, count in enumerate(counts):
            if count:
                buckets[index].inc(count)
        child._sum.inc(total)


def observed(run: Runner, observers: Sequence[Observer]) -> Runner:
    """`run`, calling every observer with the method, input and output of each successful call."""
    if not observers:
        return run

    def run_observed(method: str, x: np.ndarray) -> np.ndarray:
        result = run(method, x)
        for observe in observers:
            try:
                observe(method, x, result)
            except Exception:  # monitoring must never fail a prediction
                log.exception("observing a predict call failed")
        return result

    return run_observed

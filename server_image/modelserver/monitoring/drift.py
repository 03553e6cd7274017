"""Drift against a reference profile: per-feature and prediction population stability index (PSI)
over a sliding window, and out-of-range and missing-value counts.

The reference profile (JSON, written by `python -m modelserver profile`, see profile.py) holds each
feature's bin edges (quantiles of the training data), the share of training rows in each bin, the
training range and the share of missing values, and the model's prediction distribution on it.

A value falls in bin i when i of the feature's edges are below it (Prometheus' "le" buckets: the
regressors' prediction histogram uses the same edges). PSI = sum((a - e) * ln(a / e)) over the bins,
the shares floored at 1e-4 so that an empty bin counts without being infinite.

Cost on the hot path: `observe` only keeps a reference to the call's input and output; every flush
(half a second) or every `_CHUNK_ROWS` rows, the kept rows are binned at once, one comparison per
column of a padded (features x edges) array and one bincount, into a ring of preallocated
count arrays (the window's time slots). At most `max_features` features are binned; the others only
add to the out-of-range and missing counts of feature "_other". Nothing grows with the requests.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge

from modelserver.core.errors import ModelLoadError
from modelserver.runtimes import loader, runtime

PROFILE_FORMAT = "modelserver-profile/v1"
PSI_FLOOR = 1e-4
OTHER_FEATURES = "_other"
# Rows kept before they are binned (besides every flush).
_CHUNK_ROWS = 512


class ProfileError(Exception):
    """A reference profile is unreadable or does not fit the model."""


@dataclasses.dataclass(frozen=True)
class FeatureProfile:
    """One feature of the training data."""

    name: str
    edges: tuple[float, ...]  # increasing; len(edges) + 1 bins
    fractions: tuple[float, ...]  # share of the non-missing training rows in each bin
    low: float  # training range (non-missing values)
    high: float
    missing: float  # share of training rows with a missing value (NaN)


@dataclasses.dataclass(frozen=True)
class Profile:
    """A reference profile: the features and the prediction distribution of the training data."""

    rows: int
    features: tuple[FeatureProfile, ...]
    # Classifiers: the classes and their shares; regressors: value edges and their bins' shares.
    classes: tuple[str, ...] | None
    prediction_edges: tuple[float, ...]
    prediction_fractions: tuple[float, ...]

    def to_json(self) -> dict[str, Any]:
        """The profile file's content."""
        prediction: dict[str, Any] = {"fractions": list(self.prediction_fractions)}
        if self.classes is None:
            prediction["edges"] = list(self.prediction_edges)
        else:
            prediction["classes"] = list(self.classes)
        return {
            "format": PROFILE_FORMAT,
            "rows": self.rows,
            "features": [dataclasses.asdict(feature) for feature in self.features],
            "prediction": prediction,
        }

    @classmethod
    def from_json(cls, data: Any) -> Profile:
        """Parses a profile file's content; ProfileError names what is wrong."""
        if not isinstance(data, dict) or data.get("format") != PROFILE_FORMAT:
            raise ProfileError(f"not a reference profile: expected format {PROFILE_FORMAT!r}")
        try:
            features = tuple(
                FeatureProfile(
                    name=str(item["name"]),
                    edges=_floats(item["edges"]),
                    fractions=_floats(item["fractions"]),
                    low=float(item["low"]),
                    high=float(item["high"]),
                    missing=float(item["missing"]),
                )
                for item in data["features"]
            )
            prediction = data["prediction"]
            classes = prediction.get("classes")
            profile = cls(
                rows=int(data["rows"]),
                features=features,
                classes=None if classes is None else tuple(str(name) for name in classes),
                prediction_edges=_floats(prediction.get("edges", [])),
                prediction_fractions=_floats(prediction["fractions"]),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise ProfileError(
                f"malformed reference profile: {type(error).__name__}: {error}"
            ) from None
        for feature in features:
            if len(feature.fractions) != len(feature.edges) + 1 or list(feature.edges) != sorted(
                feature.edges
            ):
                raise ProfileError(f"feature {feature.name!r}: edges must increase, one bin more")
        bins = (
            len(profile.classes)
            if profile.classes is not None
            else len(profile.prediction_edges) + 1
        )
        if len(profile.prediction_fractions) != bins:
            raise ProfileError("prediction: one fraction per class or per bin is needed")
        return profile


def check_fits(profile: Profile, n_features: int | None, classes: Sequence[Any] | None) -> None:
    """ProfileError unless the profile describes this model's inputs and outputs."""
    if n_features is not None and len(profile.features) != n_features:
        raise ProfileError(
            f"the reference profile has {len(profile.features)} features, "
            f"the model takes {n_features}"
        )
    names = None if classes is None else tuple(str(label) for label in classes)
    if names != profile.classes:
        raise ProfileError(
            f"the reference profile's classes {profile.classes} are not the model's {names}"
        )


def _floats(values: Any) -> tuple[float, ...]:
    if not isinstance(values, list):
        raise TypeError(f"expected a list, got {type(values).__name__}")
    return tuple(float(value) for value in values)


def read_profile(path: str, expected_digest: str | None = None) -> Profile:
    """Reads a profile from a local path or file:// URI, checking its bytes' digest if given."""
    local = path.removeprefix("file://")
    try:
        data, _ = loader.read_verified(Path(local), expected_digest)
    except ModelLoadError as error:
        raise ProfileError(f"reference profile: {error}") from None
    try:
        document = json.loads(data)
    except ValueError as error:
        raise ProfileError(f"the reference profile {local} is not JSON: {error}") from None
    return Profile.from_json(document)


# -- the computations shared by the profile command and the server ------------------------------


def quantile_edges(values: np.ndarray, bins: int) -> tuple[float, ...]:
    """The distinct inner quantiles that cut `values` (no NaN) into `bins` bins of equal shares."""
    if len(values) == 0:
        return ()
    inner = np.quantile(values, np.linspace(0, 1, bins + 1)[1:-1])
    return tuple(float(edge) for edge in np.unique(inner))


def padded_edges(edge_lists: Sequence[Sequence[float]]) -> np.ndarray:
    """A (features x most edges) array, short rows padded with +inf (which no value exceeds)."""
    width = max((len(edges) for edges in edge_lists), default=0)
    padded = np.full((len(edge_lists), width), np.inf)
    for row, edges in enumerate(edge_lists):
        padded[row, : len(edges)] = edges
    return padded


def bin_indices(x: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """For each value of x (rows x features), how many of its feature's edges are below it.

    One comparison of the whole block per edge column (about ten), counted in bytes when the
    counts (and the missing-value bin after them) fit: 4x faster than a broadcast
    (rows x features x edges) comparison summed over its short last axis."""
    counts = np.zeros(x.shape, dtype=np.uint8 if edges.shape[1] < 254 else np.intp)
    for column in edges.T:
        counts += x > column
    return counts


def fractions(counts: np.ndarray) -> np.ndarray:
    """Counts (..., bins) as shares of their row; all zeros where a row has no counts."""
    totals = counts.sum(axis=-1, keepdims=True)
    return np.asarray(np.divide(counts, totals, out=np.zeros(counts.shape), where=totals > 0))


def psi(expected: np.ndarray, actual: np.ndarray) -> np.ndarray:
    """PSI between shares (..., bins), floored at PSI_FLOOR; one figure per row."""
    e = np.maximum(expected, PSI_FLOOR)
    a = np.maximum(actual, PSI_FLOOR)
    return np.asarray(((a - e) * np.log(a / e)).sum(axis=-1))


def class_indices(classes: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Positions of labels in the sorted classes; -1 for a label that is not a class."""
    index = np.minimum(np.searchsorted(classes, labels), len(classes) - 1)
    return np.asarray(np.where(classes[index] == labels, index, -1))


# -- the server's window ----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class WindowSettings:
    """How much recent traffic the PSI figures describe."""

    seconds: float = 300.0
    slots: int = 10  # the window moves by seconds / slots
    min_rows: int = 200  # fewer rows in the window: no PSI figure yet (noise would dominate it)
    max_features: int = 32


class DriftMonitor:
    """One worker's window and drift metrics for one model version (see the module docstring)."""

    def __init__(
        self,
        registry: CollectorRegistry | None,
        profile: Profile,
        *,
        model: str,
        version: str | None,
        classes: Sequence[Any] | None,
        settings: WindowSettings,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._labels = (model, version or "")
        self._settings = settings
        self._clock = clock
        self._lock = threading.Lock()
        self._kept_x: list[np.ndarray] = []  # each predict call's input, and its output by method
        self._kept_results: dict[str, list[np.ndarray]] = {}
        self._kept_rows = 0
        monitored = profile.features[: settings.max_features]
        rest = profile.features[settings.max_features :]
        self._names = [feature.name for feature in monitored]
        self._n = len(monitored)
        self._edges = padded_edges([feature.edges for feature in monitored])
        width = self._edges.shape[1] + 2  # the bins, then the missing values
        self._width = width
        self._offsets = np.arange(self._n) * width
        expected = np.zeros((self._n, width - 1))
        for row, feature in enumerate(monitored):
            expected[row, : len(feature.fractions)] = feature.fractions
        self._expected = expected
        self._low = np.array([feature.low for feature in monitored])
        self._high = np.array([feature.high for feature in monitored])
        self._rest_low = np.array([feature.low for feature in rest])
        self._rest_high = np.array([feature.high for feature in rest])
        self._classes = None if classes is None else np.asarray(classes)
        self._prediction_edges = np.asarray(profile.prediction_edges)
        self._expected_prediction = np.asarray(profile.prediction_fractions)
        slots = settings.slots
        self._features = np.zeros((slots, self._n * width), dtype=np.int64)
        self._predictions = np.zeros((slots, len(self._expected_prediction)), dtype=np.int64)
        self._slot = 0
        self._slot_started = clock()
        self._out_of_range = np.zeros(self._n + 1, dtype=np.int64)  # the last: "_other"
        self._missing = np.zeros(self._n + 1, dtype=np.int64)
        self._feature_psi = Gauge(
            "modelserver_feature_psi",
            "PSI of each feature's recent values against the reference profile (worst worker).",
            ["model", "version", "feature"],
            multiprocess_mode="livemax",
            registry=registry,
        )
        self._prediction_psi = Gauge(
            "modelserver_prediction_psi",
            "PSI of the recent predictions against the reference profile (worst worker).",
            ["model", "version"],
            multiprocess_mode="livemax",
            registry=registry,
        )
        self._window_rows = Gauge(
            "modelserver_drift_window_rows",
            "Rows in the drift window, summed over workers.",
            ["model", "version"],
            multiprocess_mode="livesum",
            registry=registry,
        )
        self._out_of_range_total = Counter(
            "modelserver_feature_out_of_range",
            "Values outside the reference profile's training range, by feature.",
            ["model", "version", "feature"],
            registry=registry,
        )
        self._missing_total = Counter(
            "modelserver_feature_missing",
            "Missing values (NaN), by feature.",
            ["model", "version", "feature"],
            registry=registry,
        )

    def observe(self, method: str, x: np.ndarray, result: np.ndarray) -> None:
        """Keeps one predict call's rows for the next binning (cheap: see the module docstring)."""
        with self._lock:
            self._kept_x.append(x)
            results = self._kept_results.get(method)
            if results is None:
                self._kept_results[method] = [result]
            else:
                results.append(result)
            self._kept_rows += len(x)
            if self._kept_rows >= _CHUNK_ROWS:
                self._bin()

    def _bin(self) -> None:
        """Adds the kept calls to the current slot and forgets them (called with the lock held)."""
        kept_x, kept_results = self._kept_x, self._kept_results
        self._kept_x, self._kept_results, self._kept_rows = [], {}, 0
        x = np.concatenate(kept_x) if len(kept_x) > 1 else kept_x[0]
        n = self._n
        monitored = x[:, :n]
        bins = bin_indices(monitored, self._edges)
        missing = np.isnan(monitored)
        if missing.any():
            bins[missing] = self._width - 1
            self._missing[:n] += missing.sum(axis=0)
        self._features[self._slot] += np.bincount(
            (bins + self._offsets).ravel(), minlength=n * self._width
        )
        self._out_of_range[:n] += ((monitored < self._low) | (monitored > self._high)).sum(axis=0)
        if x.shape[1] > n:
            rest = x[:, n:]
            self._out_of_range[n] += int(((rest < self._rest_low) | (rest > self._rest_high)).sum())
            self._missing[n] += int(np.isnan(rest).sum())
        for method, results in kept_results.items():  # one binning per method, not per call
            self._bin_predictions(
                method, np.concatenate(results) if len(results) > 1 else results[0]
            )

    def _bin_predictions(self, method: str, result: np.ndarray) -> None:
        classes = self._classes
        if classes is None:
            if method != runtime.PREDICT or result.dtype.kind not in "fiub":
                return
            index = np.searchsorted(self._prediction_edges, result.ravel(), side="left")
        elif method == runtime.PREDICT_PROBA and result.ndim == 2:
            index = result.argmax(axis=1)
        elif method == runtime.PREDICT and result.ndim == 1:
            index = class_indices(classes, result)
            index = index[index >= 0]
        else:
            return
        self._predictions[self._slot] += np.bincount(
            index, minlength=len(self._expected_prediction)
        )[: len(self._expected_prediction)]

    def flush(self) -> None:
        """Bins what was kept, moves the window on when a slot has passed, publishes the figures."""
        model, version = self._labels
        with self._lock:
            if self._kept_x:
                self._bin()
            window = self._features.sum(axis=0).reshape(self._n, self._width)
            predictions = self._predictions.sum(axis=0)
            out_of_range, missing = self._out_of_range.tolist(), self._missing.tolist()
            self._out_of_range[:] = 0
            self._missing[:] = 0
            self._advance()
        names = [*self._names, OTHER_FEATURES]
        for name, count in zip(names, out_of_range, strict=True):
            if count:
                self._out_of_range_total.labels(model, version, name).inc(count)
        for name, count in zip(names, missing, strict=True):
            if count:
                self._missing_total.labels(model, version, name).inc(count)
        rows = int(predictions.sum()) if self._n == 0 else int(window[0].sum())
        self._window_rows.labels(model, version).set(rows)
        if rows < self._settings.min_rows:
            return
        feature_psi = psi(self._expected, fractions(window[:, :-1]))
        for name, value in zip(self._names, feature_psi.tolist(), strict=True):
            self._feature_psi.labels(model, version, name).set(round(value, 6))
        if predictions.sum() >= self._settings.min_rows:
            value = float(psi(self._expected_prediction, fractions(predictions)))
            self._prediction_psi.labels(model, version).set(round(value, 6))

    def _advance(self) -> None:
        """Starts the next slot (clearing it) for each slot length since the current one began."""
        slot_seconds = self._settings.seconds / self._settings.slots
        now = self._clock()
        passed = int((now - self._slot_started) // slot_seconds)
        for _ in range(min(passed, self._settings.slots)):
            self._slot = (self._slot + 1) % self._settings.slots
            self._features[self._slot] = 0
            self._predictions[self._slot] = 0
        if passed:
            self._slot_started += passed * slot_seconds

"""Reading the model pods' Prometheus metrics: one GET per pod, summed into counters.

The canary analysis (and anything else that judges the model from its traffic) needs the same few
numbers from every pod of one version: requests, 5xx answers, the latency histogram and the
prediction distribution. ``counters`` turns one exposition text into a flat dict of those sums, so
that two readings subtract key by key and the result fits in the resource's status.

Pods are read directly (``http://<pod IP>:<health port>/metrics``), not through the API server's
proxy: the NetworkPolicy admits the operator's namespace to that port and nothing else.
"""

from __future__ import annotations

import math
import re
import urllib.request
from collections.abc import Iterable, Iterator, Mapping

Counters = dict[str, float]

REQUESTS = "requests"
ERRORS = "errors"
LATENCY = "latency:"  # + the bucket's upper bound: cumulative count, as Prometheus exposes it
CLASS = "class:"  # + the predicted class: count (classifiers)
VALUE = "value:"  # + the bucket's upper bound: cumulative count of predicted values (regressors)

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')
MAX_BYTES = 4 * 2**20  # a scrape larger than this is cut (and its tail ignored)


def _unescape(value: str) -> str:
    return value.replace(r"\"", '"').replace(r"\n", "\n").replace("\\\\", "\\")


def _samples(
    text: str, prefix: str | tuple[str, ...]
) -> Iterator[tuple[str, dict[str, str], float]]:
    """(name, labels, value) of each finite sample whose name starts with ``prefix``."""
    for line in text.splitlines():
        if not line.startswith(prefix):
            continue
        match = _SAMPLE.match(line)
        if match is None:
            continue
        name, raw_labels, raw_value = match.groups()
        try:
            value = float(raw_value)
        except ValueError:
            continue
        if math.isfinite(value):
            yield name, {k: _unescape(v) for k, v in _LABEL.findall(raw_labels or "")}, value


def counters(text: str) -> Counters:
    """The analysis' counters from one Prometheus text exposition (unknown series ignored)."""
    out: Counters = {}

    def add(key: str, value: float) -> None:
        out[key] = out.get(key, 0.0) + value

    for name, labels, value in _samples(text, "modelserver_"):
        if name == "modelserver_requests_total":
            add(REQUESTS, value)
            if labels.get("status", "").startswith("5"):
                add(ERRORS, value)
        elif name == "modelserver_request_duration_seconds_bucket":
            add(LATENCY + labels.get("le", "+Inf"), value)
        elif name == "modelserver_predictions_total":
            add(CLASS + labels.get("class", ""), value)
        elif name == "modelserver_prediction_value_bucket":
            add(VALUE + labels.get("le", "+Inf"), value)
    return out


def drift_figures(text: str) -> dict[str, float]:
    """The PSI figures of one pod: ``feature <name>`` and ``predictions`` (see drift.py)."""
    out: dict[str, float] = {}
    for name, labels, value in _samples(
        text, ("modelserver_feature_psi", "modelserver_prediction_psi")
    ):
        if name == "modelserver_feature_psi":
            out["feature " + labels.get("feature", "")] = value
        elif name == "modelserver_prediction_psi":
            out["predictions"] = value
    return out


def worst(readings: Iterable[Mapping[str, float]]) -> dict[str, float]:
    """Several pods' figures, the highest of each."""
    out: dict[str, float] = {}
    for reading in readings:
        for key, value in reading.items():
            out[key] = max(out.get(key, value), value)
    return out


def total(readings: Iterable[Mapping[str, float]]) -> Counters:
    """Several pods' counters added up."""
    out: Counters = {}
    for reading in readings:
        for key, value in reading.items():
            out[key] = out.get(key, 0.0) + value
    return out


def since(now: Mapping[str, float], before: Mapping[str, float] | None) -> Counters:
    """What was counted between two readings. A counter that went down (a pod restarted or
    left) counts from zero again, as Prometheus' ``increase`` does."""
    before = before or {}
    out: Counters = {}
    for key, value in now.items():
        old = before.get(key, 0.0)
        out[key] = value - old if value >= old else value
    return out


def fetch(url: str, timeout: float = 2.0) -> str:
    """One pod's metrics text; raises OSError (urllib's errors are OSErrors) when unreachable."""
    if not url.startswith("http://"):
        raise ValueError(f"not a pod metrics URL: {url}")
    with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - http only, checked above
        body: bytes = response.read(MAX_BYTES)
    return body.decode("utf-8", errors="replace")

"""The scikit-learn runtime: one loaded estimator and the facts the protocols need about it.

Kept apart from loading (where the bytes come from) and from the protocols (how requests look), so
that it only knows how to call the estimator.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Protocol

import numpy as np
from sklearn.base import is_classifier

log = logging.getLogger("modelserver.runtime")  # the name its log lines have always carried

PREDICT = "predict"
PREDICT_PROBA = "predict_proba"


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """What was loaded, for the metadata endpoints and the logs."""

    model_class: str
    n_features: int | None
    classes: list[Any] | None
    is_classifier: bool
    methods: tuple[str, ...]
    path: str
    format: str
    sha256: str
    load_seconds: float
    versions: dict[str, str]
    # numpy dtype kinds and trailing shapes of each method's output, learnt from a warm-up call.
    output_dtypes: dict[str, str]
    output_shapes: dict[str, tuple[int, ...]]
    # Whether a verified faster path than the estimator's own method answers (see forest.py).
    fast_path: bool = False


class FastPath(Protocol):
    """Answers like the estimator, faster, or returns None for input it leaves to the estimator."""

    def run(self, method: str, x: np.ndarray) -> np.ndarray | None:
        """The output of `method` on `x`, or None."""


class SklearnRuntime:
    """Calls one fitted estimator (or pipeline) on 2-D float arrays."""

    def __init__(self, estimator: Any, info: ModelInfo, fast: FastPath | None = None) -> None:
        self.estimator = estimator
        self.info = info
        self._fast = fast
        self._predict = estimator.predict
        self._predict_proba = getattr(estimator, PREDICT_PROBA, None)

    def supports(self, method: str) -> bool:
        """Whether the estimator has this method (regressors have no predict_proba)."""
        return method in self.info.methods

    def run(self, method: str, x: np.ndarray) -> np.ndarray:
        """One call of `method` on all rows of `x`."""
        if self._fast is not None:
            result = self._fast.run(method, x)
            if result is not None:
                return result
        if method == PREDICT_PROBA and self._predict_proba is not None:
            return np.asarray(self._predict_proba(x))
        return np.asarray(self._predict(x))


def describe(estimator: Any) -> tuple[str, int | None, list[Any] | None, bool, tuple[str, ...]]:
    """Class name, feature count, classes, classifier or not, and methods of an estimator."""
    cls = type(estimator)
    model_class = f"{cls.__module__}.{cls.__qualname__}"
    n_features_raw = getattr(estimator, "n_features_in_", None)
    n_features = int(n_features_raw) if isinstance(n_features_raw, int | np.integer) else None
    classes_raw = getattr(estimator, "classes_", None)
    classes = classes_raw.tolist() if isinstance(classes_raw, np.ndarray) else None
    classifier = bool(is_classifier(estimator))
    methods: tuple[str, ...] = (PREDICT,)
    # Multi-output classifiers return a list of arrays from predict_proba: only 1-D classes_ do.
    if (
        isinstance(classes_raw, np.ndarray)
        and classes_raw.ndim == 1
        and hasattr(estimator, PREDICT_PROBA)
    ):
        methods = (PREDICT, PREDICT_PROBA)
    return model_class, n_features, classes, classifier, methods


def warm_up(
    estimator: Any, n_features: int | None, methods: tuple[str, ...]
) -> tuple[dict[str, str], dict[str, tuple[int, ...]]]:
    """Calls each method once on a row of zeros: the first request is then not the slow one, and the
    output types are known for the metadata. A model that rejects zeros is still served."""
    dtypes: dict[str, str] = {}
    shapes: dict[str, tuple[int, ...]] = {}
    if n_features is None:
        return dtypes, shapes
    row = np.zeros((1, n_features))
    for method in methods:
        try:
            out = np.asarray(getattr(estimator, method)(row))
        except Exception as error:  # any failure only means "unknown output type"
            log.warning("warm-up %s failed: %s: %s", method, type(error).__name__, error)
            continue
        dtypes[method] = out.dtype.str
        shapes[method] = tuple(int(d) for d in out.shape[1:])
    return dtypes, shapes

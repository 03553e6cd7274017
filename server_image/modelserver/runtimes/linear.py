"""Logistic regression (alone or after standard scalers) without scikit-learn's per-call overhead.

For a linear model the arithmetic is a few microseconds; scikit-learn's input validation around it
(`validate_data`, namespace and fitted checks, once per pipeline step) costs about half a
millisecond per call, whatever the number of rows. This module does the same arithmetic with the
same numpy operations in the same order: `X -= mean_; X /= scale_` for each StandardScaler,
`X @ coef_.T + intercept_` for the decision function, then the class choice (`scores > 0` or the
argmax) and the probabilities (the logistic function, or the softmax for several classes).
`verified` checks on the model itself, method by method, that the answers are scikit-learn's to the
last bit before they are used; anything not covered (non-finite or non-float64 input, another
shape, a method that did not verify) is left to scikit-learn.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from scipy.special import expit  # type: ignore[import-untyped]
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

log = logging.getLogger("modelserver.linear")  # the name its log lines have always carried


class LinearPath:
    """A fitted LogisticRegression, after zero or more fitted StandardScalers."""

    def __init__(self, scalers: list[Any], model: Any) -> None:
        self._scalers = [
            (
                None if not scaler.with_mean else np.asarray(scaler.mean_, dtype=np.float64),
                None
                if not scaler.with_std or scaler.scale_ is None
                else np.asarray(scaler.scale_, dtype=np.float64),
            )
            for scaler in scalers
        ]
        self._coef_t = model.coef_.T
        self._intercept = model.intercept_
        self._classes = model.classes_
        self._binary = self._classes.size <= 2
        self._n_features = int(model.coef_.shape[1])
        # Methods whose answers were checked against scikit-learn (see `verified`).
        self.methods: frozenset[str] = frozenset(("predict", "predict_proba"))

    def run(self, method: str, x: np.ndarray) -> np.ndarray | None:
        """The model's `method` on `x`, or None when scikit-learn must handle this input."""
        if (
            method not in self.methods
            or x.ndim != 2
            or x.shape[1] != self._n_features
            or x.shape[0] == 0
            or x.dtype != np.float64
            or not np.isfinite(x).all()
        ):
            return None
        scores = self._decision(x)
        if method == "predict":
            if scores.ndim == 1:
                indices = (scores > 0).astype(np.intp)
            else:
                indices = np.argmax(scores, axis=1)
            return self._classes.take(indices, axis=0)  # type: ignore[no-any-return]
        if self._binary:
            prob = expit(scores, out=scores)
            return np.stack([1 - prob, prob], axis=1)
        scores -= np.reshape(np.max(scores, axis=1), (-1, 1))
        np.exp(scores, out=scores)
        scores /= np.reshape(np.sum(scores, axis=1), (-1, 1))
        return scores

    def _decision(self, x: np.ndarray) -> np.ndarray:
        if self._scalers:
            x = np.array(x, dtype=np.float64, order="C", copy=True)
            for mean, scale in self._scalers:
                if mean is not None:
                    x -= mean
                if scale is not None:
                    x /= scale
        scores: np.ndarray = x @ self._coef_t + self._intercept
        if scores.ndim > 1 and scores.shape[1] == 1:
            return np.reshape(scores, (-1,))
        return scores


def for_estimator(estimator: Any) -> LinearPath | None:
    """A fast path for exactly LogisticRegression, alone or after StandardScaler steps (dense
    coefficients, fitted on float input); None for anything else."""
    steps = [estimator]
    if type(estimator) is Pipeline:
        steps = [step for _, step in estimator.steps if step is not None and step != "passthrough"]
    *scalers, final = steps
    if type(final) is not LogisticRegression or not all(
        type(scaler) is StandardScaler for scaler in scalers
    ):
        return None
    coef = getattr(final, "coef_", None)
    if not isinstance(coef, np.ndarray) or coef.ndim != 2 or coef.dtype != np.float64:
        return None
    for scaler in scalers:
        for name in ("mean_", "scale_"):
            value = getattr(scaler, name, None)
            if value is not None and (
                not isinstance(value, np.ndarray) or value.dtype != np.float64
            ):
                return None
    return LinearPath(scalers, final)


def probe_rows(n_features: int, rows: int = 256, seed: int = 0) -> np.ndarray:
    """Rows of many magnitudes and both signs."""
    rng = np.random.default_rng(seed)
    magnitudes = 10.0 ** rng.uniform(-3, 3, size=(rows, n_features))
    return rng.normal(size=(rows, n_features)) * magnitudes


def verified(path: LinearPath, estimator: Any, extra: np.ndarray | None = None) -> bool:
    """Keeps the methods for which the fast path gives exactly scikit-learn's answers on this
    model (probe rows, one row and many, plus `extra` rows if given); False if none is left."""
    probe = probe_rows(path._n_features)
    batches = [probe[:1], probe[:7], probe]
    if extra is not None and extra.ndim == 2 and extra.shape[1] == path._n_features:
        batches.append(np.asarray(extra, dtype=np.float64))
    kept = set()
    for method in path.methods:
        if not hasattr(estimator, method):
            continue
        same = True
        for rows in batches:
            expected = np.asarray(getattr(estimator, method)(rows))
            got = path.run(method, rows)
            if got is None or got.dtype != expected.dtype or not np.array_equal(got, expected):
                same = False
                break
        if same:
            kept.add(method)
        else:
            log.warning("linear fast path differs from scikit-learn for %s; not used", method)
    path.methods = frozenset(kept)
    return bool(kept)

"""Random-forest and extra-trees inference without scikit-learn's per-call overhead.

A forest's `predict` spends most of its time around the trees, not in them: joblib dispatches one
task per tree and each tree validates its input again, tens of microseconds per tree, so a 100-tree
forest takes milliseconds even for a single row. This module calls each fitted tree's compiled
`tree_.predict` directly and combines the results with the operations scikit-learn uses, in the same
order (sum over trees in order, divide by their number, argmax into `classes_`), so the answers are
the same to the last bit. A Pipeline ending in such a forest runs its transformers as scikit-learn
does, then the trees. `verified` checks exactly that on the model itself before it is used, and
the runtime falls back to scikit-learn for anything not covered here (several outputs, missing
values, input it would reject).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from sklearn.ensemble import (
    ExtraTreesClassifier,
    ExtraTreesRegressor,
    RandomForestClassifier,
    RandomForestRegressor,
)
from sklearn.pipeline import Pipeline

log = logging.getLogger("modelserver.forest")  # the name its log lines have always carried

_CLASSIFIERS = (RandomForestClassifier, ExtraTreesClassifier)
_REGRESSORS = (RandomForestRegressor, ExtraTreesRegressor)


class ForestPath:
    """Calls the trees of a fitted single-output forest directly."""

    def __init__(self, forest: Any) -> None:
        self._trees = tuple(estimator.tree_ for estimator in forest.estimators_)
        self._n_features = int(forest.n_features_in_)
        self._classifier = isinstance(forest, _CLASSIFIERS)
        self._n_classes = int(forest.n_classes_) if self._classifier else 1
        self._classes = forest.classes_ if self._classifier else None

    def run(self, method: str, x: np.ndarray) -> np.ndarray | None:
        """The forest's `method` on `x`, or None when scikit-learn must handle this input."""
        if x.ndim != 2 or x.shape[1] != self._n_features:
            return None
        # scikit-learn converts to float32 and rejects (or routes) non-finite values after that.
        x32 = np.asarray(x, dtype=np.float32, order="C")
        if not np.isfinite(x32).all():
            return None
        if not self._classifier:
            return self._mean_prediction(x32) if method == "predict" else None
        proba = self._mean_proba(x32)
        if method == "predict_proba":
            return proba
        if method == "predict" and self._classes is not None:
            return self._classes.take(np.argmax(proba, axis=1), axis=0)  # type: ignore[no-any-return]
        return None

    def _mean_proba(self, x32: np.ndarray) -> np.ndarray:
        n_classes = self._n_classes
        total = np.zeros((x32.shape[0], n_classes), dtype=np.float64)
        for tree in self._trees:
            total += tree.predict(x32)[:, :n_classes]
        total /= len(self._trees)
        return total

    def _mean_prediction(self, x32: np.ndarray) -> np.ndarray:
        total = np.zeros(x32.shape[0], dtype=np.float64)
        for tree in self._trees:
            total += tree.predict(x32)[:, 0]
        total /= len(self._trees)
        return total


class PipelinePath:
    """A pipeline ending in a forest: its transformers as scikit-learn runs them, then the trees."""

    def __init__(self, transformers: list[Any], forest: ForestPath) -> None:
        self._transformers = transformers
        self._forest = forest

    def run(self, method: str, x: np.ndarray) -> np.ndarray | None:
        """As `ForestPath.run`, after the pipeline's transform steps."""
        for transformer in self._transformers:
            x = transformer.transform(x)
        return self._forest.run(method, np.asarray(x))


def for_estimator(estimator: Any) -> ForestPath | PipelinePath | None:
    """A fast path for a single-output forest of exactly these classes, alone or as the last step
    of a Pipeline; None for anything else."""
    if type(estimator) is Pipeline:
        *steps, (_, final) = estimator.steps
        transformers = [step for _, step in steps if step is not None and step != "passthrough"]
        forest = _forest_path(final)
        if forest is None or not all(hasattr(step, "transform") for step in transformers):
            return None
        return PipelinePath(transformers, forest)
    return _forest_path(estimator)


def _forest_path(estimator: Any) -> ForestPath | None:
    if type(estimator) not in (*_CLASSIFIERS, *_REGRESSORS):
        return None
    if getattr(estimator, "n_outputs_", None) != 1 or not getattr(estimator, "estimators_", None):
        return None
    return ForestPath(estimator)


def probe_rows(estimator: Any, rows: int = 256, seed: int = 0) -> np.ndarray:
    """Rows that reach many leaves. For a bare forest each value sits on, just below or just above
    a split threshold its trees use for that feature (zero when none does); in front of a pipeline,
    whose thresholds are in transformed units, values of many magnitudes and both signs."""
    rng = np.random.default_rng(seed)
    n_features = int(estimator.n_features_in_)
    if type(estimator) is Pipeline:
        magnitudes = 10.0 ** rng.uniform(-2, 3, size=(rows, n_features))
        return rng.normal(size=(rows, n_features)) * magnitudes
    thresholds: list[list[float]] = [[] for _ in range(n_features)]
    for member in estimator.estimators_[:20]:
        tree = member.tree_
        for feature, threshold in zip(tree.feature, tree.threshold, strict=True):
            if feature >= 0:
                thresholds[feature].append(float(threshold))
    probe = np.zeros((rows, n_features))
    for feature, values in enumerate(thresholds):
        if values:
            chosen = rng.choice(np.asarray(values), size=rows)
            probe[:, feature] = chosen + rng.choice([-1e-3, 0.0, 1e-3], size=rows) * (
                1 + np.abs(chosen)
            )
    return probe


def verified(path: ForestPath | PipelinePath, estimator: Any) -> bool:
    """Whether the fast path gives exactly scikit-learn's answers for this model."""
    probe = probe_rows(estimator)
    methods = ["predict"] + (["predict_proba"] if hasattr(estimator, "predict_proba") else [])
    forest = estimator.steps[-1][1] if type(estimator) is Pipeline else estimator
    saved_jobs = forest.n_jobs
    forest.n_jobs = None  # the reference sums trees in order, as the fast path does
    try:
        for method in methods:
            for rows in (probe[:1], probe):
                expected = getattr(estimator, method)(rows)
                got = path.run(method, rows)
                if got is None or got.dtype != expected.dtype or not np.array_equal(got, expected):
                    log.warning("forest fast path differs from scikit-learn; not used")
                    return False
    finally:
        forest.n_jobs = saved_jobs
    return True

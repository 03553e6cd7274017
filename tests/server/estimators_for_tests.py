"""Estimators whose timing the server tests control: slow to predict or slow to unpickle.

They are pickled by the tests and unpickled by the server process, which finds this module through
PYTHONPATH (see conftest.start_server).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler


class SlowClassifier(ClassifierMixin, BaseEstimator):
    """A scaler + logistic regression that sleeps `predict_delay` per call and `load_delay` when
    unpickled, so that tests can hold requests in flight or the model in loading."""

    def __init__(self, predict_delay: float = 0.0, load_delay: float = 0.0) -> None:
        self.predict_delay = predict_delay
        self.load_delay = load_delay

    def fit(self, x: np.ndarray, y: np.ndarray) -> SlowClassifier:
        self.model_ = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(x, y)
        self.classes_ = self.model_.classes_
        self.n_features_in_ = x.shape[1]
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        time.sleep(self.predict_delay)
        return self.model_.predict(x)

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        time.sleep(self.predict_delay)
        return self.model_.predict_proba(x)

    def __setstate__(self, state: dict[str, Any]) -> None:
        time.sleep(state.get("load_delay", 0.0))
        super().__setstate__(state)

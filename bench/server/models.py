"""The two benchmark models, their payloads and the answers every server must give.

Both are trained on scikit-learn's bundled breast-cancer data set (569 rows, 30
numeric features, two classes) and saved with joblib, the one format that all
three servers load. The models and payloads are deterministic (fixed seeds).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import joblib
import numpy as np
from sklearn.datasets import load_breast_cancer
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

DATASET = "sklearn.datasets.load_breast_cancer"
BATCH_ROWS = 64
SEED = 0


@dataclass(frozen=True)
class BenchModel:
    name: str  # the name it is served under
    description: str
    directory: Path  # holds exactly one file, model.joblib (KServe wants a directory)
    single_expected: list[int]  # predict() of the single-row payload
    batch_expected: list[int]  # predict() of the 64-row payload

    @property
    def path(self) -> Path:
        return self.directory / "model.joblib"


@dataclass(frozen=True)
class Payloads:
    """Request bodies on disk, one per protocol and shape, shared by both models."""

    files: dict[tuple[str, str], Path]  # (protocol, shape) -> JSON body file
    single: list[list[float]]
    batch: list[list[float]]

    def body(self, protocol: str, shape: str) -> Path:
        return self.files[(protocol, shape)]


def _estimators() -> dict[str, tuple[str, Any]]:
    return {
        "pipeline": (
            "StandardScaler + LogisticRegression",
            make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000, random_state=SEED)),
        ),
        "forest": (
            "RandomForestClassifier, 100 trees",
            RandomForestClassifier(n_estimators=100, random_state=SEED),
        ),
    }


def v1_body(rows: list[list[float]]) -> dict[str, Any]:
    return {"instances": rows}


def v2_body(rows: list[list[float]]) -> dict[str, Any]:
    flat = [value for row in rows for value in row]
    return {
        "inputs": [
            {
                "name": "input-0",
                "shape": [len(rows), len(rows[0])],
                "datatype": "FP64",
                "data": flat,
            }
        ]
    }


def prepare(workdir: Path) -> tuple[list[BenchModel], Payloads]:
    """Train and save both models and write the request bodies under `workdir`."""
    features, labels = load_breast_cancer(return_X_y=True)
    x_train, x_test, y_train, _ = train_test_split(
        features, labels, test_size=0.25, random_state=SEED, stratify=labels
    )
    single = x_test[:1]
    batch = x_test[:BATCH_ROWS]

    models = []
    for name, (description, estimator) in _estimators().items():
        estimator.fit(x_train, y_train)
        directory = workdir / "models" / name
        directory.mkdir(parents=True, exist_ok=True)
        for stale in directory.iterdir():
            stale.unlink()
        joblib.dump(estimator, directory / "model.joblib")
        batch_expected = [int(v) for v in estimator.predict(batch)]
        if len(set(batch_expected)) < 2:
            raise RuntimeError(f"{name}: the batch should hold both classes to be a useful check")
        models.append(
            BenchModel(
                name=name,
                description=description,
                directory=directory,
                single_expected=[int(v) for v in estimator.predict(single)],
                batch_expected=batch_expected,
            )
        )

    rows_single: list[list[float]] = np.asarray(single, dtype=float).tolist()
    rows_batch: list[list[float]] = np.asarray(batch, dtype=float).tolist()
    payload_dir = workdir / "payloads"
    payload_dir.mkdir(parents=True, exist_ok=True)
    files: dict[tuple[str, str], Path] = {}
    for protocol, make in (("v1", v1_body), ("v2", v2_body)):
        for shape, rows in (("single", rows_single), ("batch64", rows_batch)):
            path = payload_dir / f"{protocol}-{shape}.json"
            # json writes floats with repr(), which reads back to the same doubles.
            path.write_text(json.dumps(make(rows)))
            files[(protocol, shape)] = path
    return models, Payloads(files=files, single=rows_single, batch=rows_batch)

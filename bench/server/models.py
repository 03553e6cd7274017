"""The two benchmark models, their payloads and the answers every server must give.

Both are trained on scikit-learn's bundled breast-cancer data set (569 rows, 30
numeric features, two classes) and saved with joblib, the one format that all
three servers load. The models and payloads are deterministic (fixed seeds).

Request bodies are files with one JSON body per line. The single-row file holds
64 bodies, one per held-out row, which the wrk scripts send in turn; the 64-row
file holds one body with those same 64 rows. So the answer to every request the
load sends is known, and no server gains from seeing one row over and over. The
attack file holds one body of 4096 rows (the 64 repeated), which the non-reading
attackers of the "under attack" scenario send.
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
ATTACK_ROWS = 4096  # rows of each request the non-reading attackers send (bench.server.attack)
SEED = 0


@dataclass(frozen=True)
class BenchModel:
    name: str  # the name it is served under
    description: str
    directory: Path  # holds exactly one file, model.joblib (KServe wants a directory)
    expected: list[int]  # predict() of the 64 held-out rows the payloads carry

    def expected_answers(self, shape: str) -> list[list[int]]:
        """The labels each line of a payload file must get back, in line order."""
        if shape == "single":
            return [[label] for label in self.expected]
        return [self.expected]

    @property
    def path(self) -> Path:
        return self.directory / "model.joblib"


@dataclass(frozen=True)
class Payloads:
    """Request bodies on disk, one per protocol and shape, shared by both models."""

    files: dict[tuple[str, str], Path]  # (protocol, shape) -> file of JSON bodies, one a line
    rows: list[list[float]]  # the 64 held-out rows, in order

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
    rows_array = x_test[:BATCH_ROWS]

    models = []
    for name, (description, estimator) in _estimators().items():
        estimator.fit(x_train, y_train)
        directory = workdir / "models" / name
        directory.mkdir(parents=True, exist_ok=True)
        for stale in directory.iterdir():
            stale.unlink()
        joblib.dump(estimator, directory / "model.joblib")
        expected = [int(v) for v in estimator.predict(rows_array)]
        if len(set(expected)) < 2:
            raise RuntimeError(f"{name}: the rows should get both classes to be a useful check")
        models.append(
            BenchModel(name=name, description=description, directory=directory, expected=expected)
        )

    rows: list[list[float]] = np.asarray(rows_array, dtype=float).tolist()
    payload_dir = workdir / "payloads"
    payload_dir.mkdir(parents=True, exist_ok=True)
    files: dict[tuple[str, str], Path] = {}
    for protocol, make in (("v1", v1_body), ("v2", v2_body)):
        # json writes floats with repr(), which reads back to the same doubles, and
        # puts no newline inside a body.
        many = (rows * (ATTACK_ROWS // len(rows) + 1))[:ATTACK_ROWS]
        bodies = {
            "single": [json.dumps(make([row])) for row in rows],
            "batch64": [json.dumps(make(rows))],
            "attack": [json.dumps(make(many))],
        }
        for shape, lines in bodies.items():
            path = payload_dir / f"{protocol}-{shape}.jsonl"
            path.write_text("\n".join(lines) + "\n")
            files[(protocol, shape)] = path
    return models, Payloads(files=files, rows=rows)

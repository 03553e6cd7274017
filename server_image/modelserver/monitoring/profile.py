"""`python -m modelserver profile`: the reference profile of a model's training data (see drift.py).

Reads the data (CSV, with or without a header row, empty fields missing; or a .npy array), runs the
model on it, and writes per-feature quantile bins, ranges and missing shares, and the prediction
distribution, as JSON. The server compares recent traffic against this file.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np

from modelserver.core.errors import ModelLoadError
from modelserver.monitoring import drift
from modelserver.monitoring.options import ProfileConfig
from modelserver.runtimes import loader, runtime

log = logging.getLogger("modelserver.profile")  # the name its log lines have always carried


class DataError(Exception):
    """The training data cannot be read or does not fit the model."""


def read_data(path: Path) -> tuple[np.ndarray, list[str] | None]:
    """The rows of a .npy or CSV file as floats, and the CSV's column names when it has a header."""
    try:
        if path.suffix == ".npy":
            x = np.load(path, allow_pickle=False)
            names = None
        else:
            with path.open() as file:
                first = file.readline().strip().split(",")
            names = None if all(_is_number(field) for field in first) else first
            x = np.genfromtxt(path, delimiter=",", skip_header=1 if names else 0, ndmin=2)
    except (OSError, ValueError) as error:
        raise DataError(f"cannot read {path}: {error}") from None
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or len(x) == 0:
        raise DataError(f"{path}: expected rows of features (a 2-D table), got shape {x.shape}")
    return x, names


def _is_number(field: str) -> bool:
    try:
        float(field or "nan")
    except ValueError:
        return False
    return True


def build(
    model: runtime.SklearnRuntime, x: np.ndarray, names: list[str] | None, bins: int
) -> drift.Profile:
    """The profile of `x` and of the model's predictions on it."""
    info = model.info
    if info.n_features is not None and x.shape[1] != info.n_features:
        raise DataError(f"the data has {x.shape[1]} columns, the model takes {info.n_features}")
    if names is None:
        feature_names = getattr(model.estimator, "feature_names_in_", None)
        names = (
            [str(name) for name in feature_names]
            if feature_names is not None
            else [str(index) for index in range(x.shape[1])]
        )
    features = []
    for column, name in enumerate(names):
        values = x[:, column]
        present = values[~np.isnan(values)]
        edges = drift.quantile_edges(present, bins)
        counts = np.bincount(
            drift.bin_indices(present[:, None], drift.padded_edges([edges]))[:, 0],
            minlength=len(edges) + 1,
        )
        features.append(
            drift.FeatureProfile(
                name=name,
                edges=edges,
                fractions=_rounded(drift.fractions(counts)),
                low=float(present.min()) if len(present) else 0.0,
                high=float(present.max()) if len(present) else 0.0,
                missing=round(1 - len(present) / len(x), 6),
            )
        )
    complete = x[~np.isnan(x).any(axis=1)]
    predictions = model.run(runtime.PREDICT, complete)
    if info.is_classifier and info.classes is not None:
        classes = np.asarray(info.classes)
        index = drift.class_indices(classes, predictions)
        counts = np.bincount(index[index >= 0], minlength=len(classes))
        return drift.Profile(
            rows=len(x),
            features=tuple(features),
            classes=tuple(str(label) for label in info.classes),
            prediction_edges=(),
            prediction_fractions=_rounded(drift.fractions(counts)),
        )
    values = np.asarray(predictions, dtype=np.float64).ravel()
    edges = drift.quantile_edges(values, bins)
    counts = np.bincount(np.searchsorted(edges, values, side="left"), minlength=len(edges) + 1)
    return drift.Profile(
        rows=len(x),
        features=tuple(features),
        classes=None,
        prediction_edges=edges,
        prediction_fractions=_rounded(drift.fractions(counts)),
    )


def _rounded(shares: np.ndarray) -> tuple[float, ...]:
    return tuple(round(float(share), 6) for share in shares)


def run(config: ProfileConfig) -> int:
    """Writes the profile; returns the exit code (1 with a one-line reason on failure)."""
    try:
        model = loader.load(config.model_uri, config.model_format, config.model_digest)
        x, names = read_data(Path(config.data))
        profile = build(model, x, names, config.bins)
    except (ModelLoadError, DataError) as error:
        print(f"profile failed: {error}", file=sys.stderr)
        return 1
    document: dict[str, Any] = profile.to_json()
    document["model"] = {"sha256": "sha256:" + model.info.sha256, "class": model.info.model_class}
    Path(config.out).write_text(json.dumps(document, indent=1) + "\n")
    log.info(
        "profile written",
        extra={"out": config.out, "rows": profile.rows, "features": len(profile.features)},
    )
    return 0

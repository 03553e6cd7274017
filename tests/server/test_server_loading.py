"""Loading models: formats, digests before deserializing, trusted skops types, clear failures."""

from __future__ import annotations

import pickle
import shutil
import socket
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest
import sklearn
from sklearn.base import is_classifier
from sklearn.datasets import load_diabetes, load_iris
from sklearn.ensemble import (
    ExtraTreesClassifier,
    ExtraTreesRegressor,
    RandomForestClassifier,
    RandomForestRegressor,
)
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from modelserver.core.errors import ModelLoadError
from modelserver.runtimes import loader

from .support import IRIS_X, Models, ServerProcess, digest_of

ZEROS = "sha256:" + "0" * 64


def test_loads_joblib_from_a_path_and_a_file_uri(models: Models) -> None:
    path = models.path("iris.joblib")
    for uri in (str(path), f"file://{path}"):
        model = loader.load(uri, "joblib", None)
        assert model.info.model_class == "sklearn.pipeline.Pipeline"
        assert model.info.n_features == 4
        assert model.info.classes == [0, 1, 2]
        assert model.info.is_classifier
        assert model.info.versions["scikit-learn"] == sklearn.__version__
        assert model.info.load_seconds > 0
        np.testing.assert_array_equal(model.run("predict", IRIS_X), models.iris.predict(IRIS_X))


def test_loads_the_model_file_of_a_directory(models: Models, tmp_path: Path) -> None:
    shutil.copy(models.path("iris.skops"), tmp_path / "model.skops")
    shutil.copy(models.path("iris.joblib"), tmp_path / "model.joblib")
    assert loader.load(str(tmp_path), "skops", None).info.format == "skops"
    assert loader.load(str(tmp_path), "joblib", None).info.format == "joblib"


def test_matching_digest_loads(models: Models) -> None:
    path = models.path("iris.joblib")
    model = loader.load(str(path), "joblib", digest_of(path))
    assert "sha256:" + model.info.sha256 == digest_of(path)


def test_digest_mismatch_is_refused_before_deserializing(tmp_path: Path) -> None:
    class Exploding:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (Path.touch, (str(tmp_path / "deserialized"),))

    path = tmp_path / "model.joblib"
    path.write_bytes(pickle.dumps(Exploding()))
    with pytest.raises(
        ModelLoadError, match=r"digest mismatch.*expected sha256:0{64}, got sha256:"
    ):
        loader.load(str(path), "joblib", ZEROS)
    assert not (tmp_path / "deserialized").exists()


def test_malformed_digest_is_refused(models: Models) -> None:
    with pytest.raises(ModelLoadError, match="not of the form sha256:<64 hex"):
        loader.load(str(models.path("iris.joblib")), "joblib", "md5:1234")


def test_skops_refuses_untrusted_types_and_names_them(models: Models) -> None:
    with pytest.raises(ModelLoadError, match=r"not trusted: sklearn\.tree\._tree\.Tree;"):
        loader.load(str(models.path("forest.skops")), "skops", None)


def test_skops_loads_types_the_user_trusts(models: Models) -> None:
    model = loader.load(
        str(models.path("forest.skops")), "skops", None, trusted=["sklearn.tree._tree.Tree"]
    )
    np.testing.assert_array_equal(model.run("predict", IRIS_X), models.forest.predict(IRIS_X))


def test_skops_file_given_as_joblib_says_so(models: Models) -> None:
    with pytest.raises(ModelLoadError, match="looks like a skops file"):
        loader.load(str(models.path("iris.skops")), "joblib", None)


def test_joblib_file_given_as_skops_says_so(models: Models) -> None:
    with pytest.raises(ModelLoadError, match="not a skops file"):
        loader.load(str(models.path("iris.joblib")), "skops", None)


def test_garbage_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "model.joblib"
    path.write_bytes(b"this is not a model")
    with pytest.raises(ModelLoadError, match="could not be loaded as joblib"):
        loader.load(str(path), "joblib", None)


def test_object_without_predict_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "model.joblib"
    joblib.dump({"weights": [1, 2, 3]}, path)
    with pytest.raises(ModelLoadError, match="holds a dict, which has no predict method"):
        loader.load(str(path), "joblib", None)


def test_remote_uri_is_sent_to_fetch() -> None:
    with pytest.raises(ModelLoadError, match="python -m modelserver fetch"):
        loader.load("s3://bucket/model.joblib", "joblib", None)


def _with_other_sklearn_version(source: Path, target: Path) -> None:
    """The same pickle, as if saved by another scikit-learn release (the version is a string)."""
    data = source.read_bytes()
    current = sklearn.__version__.encode()
    other = b"0" * len(current)
    assert current in data
    target.write_bytes(data.replace(current, other))


def test_sklearn_version_skew_is_refused(models: Models, tmp_path: Path) -> None:
    path = tmp_path / "skewed.joblib"
    _with_other_sklearn_version(models.path("iris.joblib"), path)
    with pytest.raises(ModelLoadError, match=r"saved with scikit-learn 0+ but this server runs"):
        loader.load(str(path), "joblib", None)


def test_load_failures_end_the_process_with_a_termination_message(
    models: Models, tmp_path: Path
) -> None:
    """Four servers that cannot start, run at once: each exits non-zero, fast, with one line."""
    skewed = tmp_path / "skewed.joblib"
    _with_other_sklearn_version(models.path("iris.joblib"), skewed)
    cases = {
        "digest mismatch for": ServerProcess(
            models.path("iris.joblib"), tmp_path, args=("--model-digest", ZEROS)
        ),
        "does not exist": ServerProcess(tmp_path / "missing.joblib", tmp_path),
        "saved with scikit-learn": ServerProcess(skewed, tmp_path, workers=2),
        "looks like a skops file": ServerProcess(models.path("iris.skops"), tmp_path),
    }
    for server in cases.values():
        server.start()
    for words, server in cases.items():
        assert server.wait_exit(timeout=60) != 0, server.log_text()
        reason = server.termination_log.read_text()
        assert reason.startswith("model load failed: ")
        assert words in reason
        assert reason.count("\n") == 1


def test_port_in_use_is_reported(models: Models, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = ServerProcess(models.path("iris.joblib"), tmp_path, workers=2)
        server.argv[server.argv.index("--port") + 1] = str(port)
        server.start()
        assert server.wait_exit(timeout=60) == 1
    assert "cannot listen on 127.0.0.1" in server.termination_log.read_text()


def _steps(model: Any) -> list[Any]:
    return [step for _, step in model.steps] if hasattr(model, "steps") else [model]


@pytest.mark.parametrize(
    "forest",
    [
        RandomForestClassifier(n_estimators=30, random_state=0),
        ExtraTreesClassifier(n_estimators=20, random_state=0, n_jobs=2),
        RandomForestRegressor(n_estimators=20, random_state=0),
        ExtraTreesRegressor(n_estimators=10, random_state=0),
        make_pipeline(StandardScaler(), RandomForestClassifier(n_estimators=20, random_state=0)),
        make_pipeline(StandardScaler(), "passthrough", RandomForestRegressor(n_estimators=10)),
    ],
    ids=lambda model: "+".join(type(step).__name__ for step in _steps(model)),
)
def test_forests_get_a_fast_path_with_exactly_sklearns_answers(forest: Any, tmp_path: Path) -> None:
    if is_classifier(forest):
        features, target = IRIS_X, load_iris().target_names[load_iris().target]
    else:
        features, target = load_diabetes(return_X_y=True)
    forest.fit(features, target)
    rng = np.random.default_rng(0)
    rows = features[rng.integers(0, len(features), 300)] + rng.normal(
        0, 0.05, (300, features.shape[1])
    )
    _assert_fast_path_answers_as_sklearn(forest, tmp_path / "forest.joblib", rows)


def _assert_fast_path_answers_as_sklearn(model: Any, path: Path, rows: np.ndarray) -> None:
    """Saved and loaded, `model` gets a fast path whose answers are scikit-learn's to the last
    bit, for one row, a few and many."""
    joblib.dump(model, path)
    served = loader.load(str(path), "joblib", None)
    assert served.info.fast_path
    for method in served.info.methods:
        for batch in (rows[:1], rows[:7], rows):
            got = served.run(method, batch)
            expected = getattr(model, method)(batch)
            assert got.dtype == expected.dtype
            np.testing.assert_array_equal(got, expected)


def test_forest_fast_path_leaves_non_finite_input_to_sklearn(models: Models) -> None:
    """scikit-learn routes NaN down the trees and rejects infinity; the fast path does neither."""
    model = loader.load(str(models.path("forest.joblib")), "joblib", None)
    assert model.info.fast_path
    rows = IRIS_X[:2].copy()
    rows[1, 2] = np.nan
    np.testing.assert_array_equal(model.run("predict", rows), models.forest.predict(rows))
    rows[1, 2] = np.inf
    with pytest.raises(ValueError, match="infinity"):
        model.run("predict", rows)


def test_models_without_a_forest_or_logistic_regression_have_no_fast_path(
    models: Models,
) -> None:
    assert not loader.load(str(models.path("regressor.joblib")), "joblib", None).info.fast_path


@pytest.mark.parametrize(
    ("model", "labels"),
    [
        (make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)), "multiclass"),
        (make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)), "names"),
        (make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)), "binary"),
        (LogisticRegression(max_iter=2000), "binary"),
        (
            make_pipeline(StandardScaler(), StandardScaler(with_mean=False), LogisticRegression()),
            "multiclass",
        ),
    ],
    ids=lambda value: (
        value if isinstance(value, str) else "+".join(type(step).__name__ for step in _steps(value))
    ),
)
def test_logistic_regressions_get_a_fast_path_with_exactly_sklearns_answers(
    model: Any, labels: str, tmp_path: Path
) -> None:
    """Scalers and the regression computed without scikit-learn's per-call checks."""
    target = {
        "multiclass": load_iris().target,
        "names": load_iris().target_names[load_iris().target],
        "binary": load_iris().target == 1,
    }[labels]
    model.fit(IRIS_X, target)
    rng = np.random.default_rng(1)
    rows = IRIS_X[rng.integers(0, len(IRIS_X), 300)] * rng.normal(1, 0.3, (300, 4))
    _assert_fast_path_answers_as_sklearn(model, tmp_path / "linear.joblib", rows)


def test_linear_fast_path_leaves_non_finite_input_to_sklearn(models: Models) -> None:
    model = loader.load(str(models.path("iris.joblib")), "joblib", None)
    assert model.info.fast_path
    rows = IRIS_X[:2].copy()
    rows[1, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        model.run("predict", rows)

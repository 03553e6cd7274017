"""Fixtures of the model server tests: small models trained here and the servers most tests use.

Servers are started concurrently (importing scikit-learn takes a while) and shared per session.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import joblib
import pytest
import skops.io
from sklearn.datasets import load_diabetes, load_iris
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from .estimators_for_tests import SlowClassifier
from .support import IRIS_X, IRIS_Y, Models, ServerProcess, digest_of, running


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> Models:
    folder = tmp_path_factory.mktemp("models")
    iris = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(IRIS_X, IRIS_Y)
    names = load_iris().target_names[IRIS_Y]
    forest = RandomForestClassifier(n_estimators=20, random_state=0).fit(IRIS_X, names)
    diabetes_x, diabetes_y = load_diabetes(return_X_y=True)
    regressor = make_pipeline(StandardScaler(), Ridge()).fit(diabetes_x, diabetes_y)
    slow = SlowClassifier().fit(IRIS_X, IRIS_Y)
    joblib.dump(iris, folder / "iris.joblib")
    skops.io.dump(iris, folder / "iris.skops")
    joblib.dump(forest, folder / "forest.joblib")
    skops.io.dump(forest, folder / "forest.skops")
    joblib.dump(regressor, folder / "regressor.joblib")
    for name, predict_delay, load_delay in (
        ("slow-predict", 0.25, 0.0),
        ("batching", 0.01, 0.0),
        ("drain", 0.02, 0.0),
        ("slow-load", 0.0, 2.0),
    ):
        joblib.dump(
            slow.set_params(predict_delay=predict_delay, load_delay=load_delay),
            folder / f"{name}.joblib",
        )
    slow.set_params(predict_delay=0.0, load_delay=0.0)
    return Models(folder, iris, forest, regressor, slow)


@pytest.fixture(scope="session")
def servers(
    models: Models, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, ServerProcess]]:
    """The long-lived servers most tests talk to, started together."""
    tmp = tmp_path_factory.mktemp("servers")
    started = {
        "iris": ServerProcess(
            models.path("iris.joblib"),
            tmp,
            workers=2,
            args=("--access-log", "true", "--max-body-bytes", "65536"),
        ),
        "skops": ServerProcess(
            models.path("iris.skops"),
            tmp,
            model_format="skops",
            args=("--model-digest", digest_of(models.path("iris.skops"))),
        ),
        "forest": ServerProcess(models.path("forest.joblib"), tmp, name="flowers"),
        "regressor": ServerProcess(models.path("regressor.joblib"), tmp, name="diabetes"),
        "slow": ServerProcess(
            models.path("slow-predict.joblib"),
            tmp,
            args=("--max-queue-depth", "1", "--max-batch-size", "1"),
        ),
        "batching": ServerProcess(
            models.path("batching.joblib"),
            tmp,
            workers=2,
            args=("--max-batch-wait-ms", "100"),
        ),
    }
    with running(started):
        yield started


@pytest.fixture
def iris_server(servers: dict[str, ServerProcess]) -> ServerProcess:
    return servers["iris"]


@pytest.fixture
def termination_log(tmp_path: Path) -> Path:
    """An existing termination log file, as Kubernetes provides one in a pod."""
    path = tmp_path / "termination-log"
    path.touch()
    return path

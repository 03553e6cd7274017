"""Monitoring: predictions per class and predicted values, counted over both protocols and summed
over the worker processes, read back from /metrics over real HTTP."""

from __future__ import annotations

import collections
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sklearn.datasets import load_diabetes

from .support import (
    IRIS_X,
    Models,
    ServerProcess,
    post_json,
    request,
    running,
    v1_body,
    v2_body,
)

DIABETES_X, _ = load_diabetes(return_X_y=True)


@pytest.fixture(scope="module")
def monitored(
    models: Models, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, ServerProcess]]:
    """Servers of their own, so that no other test's predictions are counted."""
    tmp = tmp_path_factory.mktemp("monitoring")
    started = {
        "iris": ServerProcess(
            models.path("iris.joblib"), tmp, workers=2, args=("--model-version", "v3")
        ),
        "forest": ServerProcess(models.path("forest.joblib"), tmp, name="flowers"),
        "regressor": ServerProcess(
            models.path("regressor.joblib"), tmp, name="diabetes", workers=2
        ),
    }
    with running(started):
        yield started


def samples(port: int, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """The samples of one metric family (after every worker has published its counts)."""
    time.sleep(0.6)
    text = request(port, "GET", "/metrics").body.decode()
    found: dict[tuple[tuple[str, str], ...], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                found[tuple(sorted(sample.labels.items()))] = sample.value
    return found


def send_in_parallel(port: int, path: str, bodies: list[object]) -> None:
    """Each body on its own connection, eight at a time, so that every worker gets some."""
    with ThreadPoolExecutor(8) as pool:
        for response in pool.map(lambda body: post_json(port, path, body), bodies):
            assert response.status == 200, response.body


def test_classifier_predictions_are_counted_per_class_over_v1_v2_and_workers(
    monitored: dict[str, ServerProcess], models: Models
) -> None:
    server = monitored["iris"]
    rows = IRIS_X[::3]  # 50 rows of the three classes
    send_in_parallel(
        server.port, "/v1/models/iris:predict", [v1_body(rows[i : i + 5]) for i in range(0, 50, 5)]
    )
    send_in_parallel(
        server.port, "/v2/models/iris/infer", [v2_body(rows[i : i + 5]) for i in range(0, 50, 5)]
    )
    # predict_proba answers count the class they give the highest probability.
    send_in_parallel(server.port, "/v2/models/iris/infer", [v2_body(rows[:10], proba=True)] * 4)
    expected = collections.Counter(models.iris.predict(rows).tolist() * 2)
    expected.update(models.iris.predict(rows[:10]).tolist() * 4)

    counts = samples(server.port, "modelserver_predictions_total")

    assert counts == {
        (("class", str(label)), ("model", "iris"), ("version", "v3")): float(count)
        for label, count in expected.items()
    }
    assert len(expected) == 3


def test_string_class_labels_are_counted_by_name(
    monitored: dict[str, ServerProcess], models: Models
) -> None:
    server = monitored["forest"]
    post_json(server.port, "/v1/models/flowers:predict", v1_body(IRIS_X))
    expected = collections.Counter(models.forest.predict(IRIS_X).tolist())

    counts = samples(server.port, "modelserver_predictions_total")

    assert {dict(labels)["class"]: value for labels, value in counts.items()} == {
        name: float(count) for name, count in expected.items()
    }
    assert set(expected) == {"setosa", "versicolor", "virginica"}
    assert all(dict(labels)["version"] == "" for labels in counts)


def test_regressor_predictions_fill_the_value_histogram(
    monitored: dict[str, ServerProcess], models: Models
) -> None:
    server = monitored["regressor"]
    chunks = [DIABETES_X[i : i + 40] for i in range(0, len(DIABETES_X), 40)]
    send_in_parallel(server.port, "/v1/models/diabetes:predict", [v1_body(c) for c in chunks[:6]])
    send_in_parallel(server.port, "/v2/models/diabetes/infer", [v2_body(c) for c in chunks[6:]])
    predicted = models.regressor.predict(DIABETES_X)

    buckets = samples(server.port, "modelserver_prediction_value_bucket")
    total = samples(server.port, "modelserver_prediction_value_sum")
    count = samples(server.port, "modelserver_prediction_value_count")

    cumulative = {dict(labels)["le"]: value for labels, value in buckets.items()}
    assert cumulative["+Inf"] == len(predicted)
    for bound, value in cumulative.items():
        if bound != "+Inf":
            assert value == sum(1 for p in predicted if p <= float(bound)), bound
    assert 0 < cumulative["100.0"] < cumulative["200.0"] < len(predicted)  # the values spread out
    assert list(count.values()) == [float(len(predicted))]
    assert list(total.values()) == [pytest.approx(float(np.sum(predicted)))]


def test_a_request_larger_than_a_batch_is_counted_too(
    monitored: dict[str, ServerProcess], models: Models, tmp_path: Path
) -> None:
    """Rows beyond --max-batch-size run in a thread; they are counted like the others."""
    server = ServerProcess(
        models.path("iris.joblib"), tmp_path, args=("--max-batch-size", "8")
    ).start()
    try:
        server.wait_ready()
        rows = np.repeat(IRIS_X, 4, axis=0)  # 600 rows
        assert post_json(server.port, "/v1/models/iris:predict", v1_body(rows)).status == 200
        counts = samples(server.port, "modelserver_predictions_total")
    finally:
        server.stop()
    expected = collections.Counter(models.iris.predict(rows).tolist())
    assert {dict(labels)["class"]: value for labels, value in counts.items()} == {
        str(label): float(n) for label, n in expected.items()
    }

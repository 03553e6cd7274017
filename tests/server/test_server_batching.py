"""Adaptive batching: concurrent requests share predict calls; each gets exactly its own rows."""

from __future__ import annotations

import concurrent.futures
import http.client
import json
import random
import re
import time

import numpy as np

from .support import (
    IRIS_X,
    Models,
    ServerProcess,
    batch_counts,
    post_json,
    request,
    v1_body,
    v2_body,
)


def test_concurrent_requests_are_batched_and_split_back_exactly(
    servers: dict[str, ServerProcess], models: Models
) -> None:
    """24 clients send requests of 1-3 random rows through V1 and V2, for classes or probabilities;
    the model sleeps 10 ms per call, so requests pile up and must share calls."""
    port = servers["batching"].port
    calls_before, rows_before, _ = batch_counts(port)
    model = models.slow

    def client(seed: int) -> list[str]:
        rng = random.Random(seed)  # noqa: S311 - test data, not secrets.
        problems = []
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            for _ in range(8):
                rows = IRIS_X[rng.sample(range(len(IRIS_X)), rng.randint(1, 3))]
                proba = rng.random() < 0.5
                if rng.random() < 0.5:
                    body = v1_body(rows, proba=proba)
                    connection.request("POST", "/v1/models/iris:predict", json.dumps(body))
                    got = json.loads(connection.getresponse().read())["predictions"]
                else:
                    body = v2_body(rows, proba=proba)
                    connection.request("POST", "/v2/models/iris/infer", json.dumps(body))
                    output = json.loads(connection.getresponse().read())["outputs"][0]
                    got = np.reshape(output["data"], output["shape"]).tolist()
                if proba:
                    if not np.allclose(got, model.predict_proba(rows), rtol=1e-12, atol=0):
                        problems.append(f"probabilities of {rows.tolist()}: {got}")
                elif got != model.predict(rows).tolist():
                    problems.append(f"classes of {rows.tolist()}: {got}")
        finally:
            connection.close()
        return problems

    with concurrent.futures.ThreadPoolExecutor(24) as pool:
        problems = [p for found in pool.map(client, range(24)) for p in found]
    assert problems == []
    calls_after, rows_after, _ = batch_counts(port)
    calls = calls_after - calls_before
    rows = rows_after - rows_before
    assert 24 * 8 <= rows <= 24 * 8 * 3
    # Without batching there would be one call per request (192 calls).
    assert calls < 24 * 8 / 2, f"{calls} predict calls for {rows} rows"


def test_a_lone_request_does_not_wait_for_a_batch(
    servers: dict[str, ServerProcess], models: Models
) -> None:
    """The batching server may wait up to 100 ms to fill a batch; sequential requests never do."""
    port = servers["batching"].port
    calls_before, _, singles_before = batch_counts(port)
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        # A first request resets the expectation left by earlier concurrent tests.
        connection.request("POST", "/v1/models/iris:predict", json.dumps(v1_body(IRIS_X[:1])))
        connection.getresponse().read()
        durations = []
        for index in range(20):
            row = IRIS_X[index : index + 1]
            started = time.perf_counter()
            connection.request("POST", "/v1/models/iris:predict", json.dumps(v1_body(row)))
            answer = json.loads(connection.getresponse().read())
            durations.append(time.perf_counter() - started)
            assert answer == {"predictions": models.slow.predict(row).tolist()}
    finally:
        connection.close()
    calls_after, _, singles_after = batch_counts(port)
    assert calls_after - calls_before == 21
    assert singles_after - singles_before == 21
    # 10 ms of model time each; a batching wait would add 100 ms to each.
    assert sorted(durations)[10] < 0.010 + 0.050, durations


def test_requests_on_fresh_connections_are_counted_once_by_all_workers(
    iris_server: ServerProcess, models: Models
) -> None:
    """The iris server has two workers; /metrics sums them whichever worker answers (each worker
    publishes its counts at least every half second)."""

    def total() -> float:
        text = request(iris_server.port, "GET", "/metrics").body.decode()
        match = re.search(
            r'^modelserver_requests_total\{model="iris",protocol="v1",status="200"\} (\S+)$',
            text,
            re.MULTILINE,
        )
        return float(match.group(1)) if match else 0.0

    before = total()
    for index in range(30):
        row = IRIS_X[index : index + 1]
        response = post_json(iris_server.port, "/v1/models/iris:predict", v1_body(row))
        assert response.json() == {"predictions": models.iris.predict(row).tolist()}
    deadline = time.monotonic() + 5
    while total() - before < 30 and time.monotonic() < deadline:
        time.sleep(0.1)
    for _ in range(5):
        assert total() - before == 30


def test_a_request_larger_than_a_batch_runs_beside_the_loop(
    servers: dict[str, ServerProcess], models: Models
) -> None:
    """The slow server batches at most one row and predicts for 0.25 s: a two-row request runs in
    a thread, and the server answers probes meanwhile."""
    port = servers["slow"].port
    rows = IRIS_X[[5, 140]]
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        big = pool.submit(post_json, port, "/v1/models/iris:predict", v1_body(rows))
        time.sleep(0.08)
        started = time.perf_counter()
        assert request(port, "GET", "/v2/health/live").status == 200
        probe_seconds = time.perf_counter() - started
        assert not big.done()
        answer = big.result(timeout=10)
    assert answer.json() == {"predictions": models.slow.predict(rows).tolist()}
    assert probe_seconds < 0.15


def test_big_requests_are_answered_whole(iris_server: ServerProcess, models: Models) -> None:
    rows = np.tile(IRIS_X, (2, 1))  # 300 rows, above the 256-row batch limit
    response = post_json(iris_server.port, "/v1/models/iris:predict", v1_body(rows))
    assert response.json() == {"predictions": models.iris.predict(rows).tolist()}

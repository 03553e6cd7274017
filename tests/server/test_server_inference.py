"""KServe V1 and Open Inference Protocol V2 over HTTP, checked against in-process predictions."""

from __future__ import annotations

import http.client
import json
import socket
import time
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_diabetes

from .support import (
    IRIS_X,
    Models,
    ServerProcess,
    post_json,
    request,
    v1_body,
    v2_body,
)

ROWS = IRIS_X[[0, 55, 120, 7]]


def test_v1_predict_returns_the_pipelines_classes(
    iris_server: ServerProcess, models: Models
) -> None:
    response = post_json(iris_server.port, "/v1/models/iris:predict", v1_body(ROWS))
    assert response.status == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"predictions": models.iris.predict(ROWS).tolist()}


def test_v1_predict_proba_on_request(iris_server: ServerProcess, models: Models) -> None:
    response = post_json(iris_server.port, "/v1/models/iris:predict", v1_body(ROWS, proba=True))
    assert response.status == 200
    np.testing.assert_allclose(
        response.json()["predictions"], models.iris.predict_proba(ROWS), rtol=1e-12
    )


def test_v2_infer_returns_a_predict_tensor(iris_server: ServerProcess, models: Models) -> None:
    body = v2_body(ROWS)
    body["id"] = "req-7"
    response = post_json(iris_server.port, "/v2/models/iris/infer", body)
    assert response.status == 200
    answer = response.json()
    assert answer["model_name"] == "iris"
    assert answer["id"] == "req-7"
    assert answer["outputs"] == [
        {
            "name": "predict",
            "datatype": "INT64",
            "shape": [4],
            "data": models.iris.predict(ROWS).tolist(),
        }
    ]


@pytest.mark.parametrize(
    "ask",
    [{"outputs": [{"name": "predict_proba"}]}, {"parameters": {"predict_proba": True}}],
    ids=["output-name", "parameter"],
)
def test_v2_infer_returns_probabilities_when_asked(
    iris_server: ServerProcess, models: Models, ask: dict[str, object]
) -> None:
    body = {**v2_body(ROWS), **ask}
    response = post_json(iris_server.port, "/v2/models/iris/infer", body)
    assert response.status == 200
    (output,) = response.json()["outputs"]
    assert output["name"] == "predict_proba"
    assert output["datatype"] == "FP64"
    assert output["shape"] == [4, 3]
    np.testing.assert_allclose(
        np.reshape(output["data"], (4, 3)), models.iris.predict_proba(ROWS), rtol=1e-12
    )


@pytest.mark.parametrize("datatype", ["FP32", "INT64"])
def test_v2_accepts_other_numeric_datatypes(
    iris_server: ServerProcess, models: Models, datatype: str
) -> None:
    rows = np.array([[5, 3, 1, 0], [7, 3, 6, 2]])
    response = post_json(
        iris_server.port, "/v2/models/iris/infer", v2_body(rows, datatype=datatype)
    )
    assert response.status == 200
    assert response.json()["outputs"][0]["data"] == models.iris.predict(rows).tolist()


def test_v2_accepts_nested_data(iris_server: ServerProcess, models: Models) -> None:
    body = v2_body(ROWS)
    body["inputs"][0]["data"] = ROWS.tolist()
    response = post_json(iris_server.port, "/v2/models/iris/infer", body)
    assert response.json()["outputs"][0]["data"] == models.iris.predict(ROWS).tolist()


def test_v2_versioned_path_needs_the_served_version(iris_server: ServerProcess) -> None:
    response = post_json(iris_server.port, "/v2/models/iris/versions/9/infer", v2_body(ROWS))
    assert response.status == 404
    assert "version" in response.json()["error"]


def test_string_labels_come_back_as_bytes_tensors(
    servers: dict[str, ServerProcess], models: Models
) -> None:
    port = servers["forest"].port
    expected = models.forest.predict(ROWS).tolist()
    assert expected == ["setosa", "versicolor", "virginica", "setosa"]
    v1 = post_json(port, "/v1/models/flowers:predict", v1_body(ROWS))
    assert v1.json() == {"predictions": expected}
    v2 = post_json(port, "/v2/models/flowers/infer", v2_body(ROWS)).json()
    assert v2["outputs"][0]["datatype"] == "BYTES"
    assert v2["outputs"][0]["data"] == expected
    proba = post_json(port, "/v1/models/flowers:predict", v1_body(ROWS, proba=True)).json()
    np.testing.assert_array_equal(proba["predictions"], models.forest.predict_proba(ROWS))
    metadata = request(port, "GET", "/v2/models/flowers").json()
    assert metadata["outputs"][0]["datatype"] == "BYTES"
    assert metadata["parameters"]["fast_path"] is True


def test_regressor_returns_values_and_refuses_probabilities(
    servers: dict[str, ServerProcess], models: Models
) -> None:
    port = servers["regressor"].port
    rows = load_diabetes().data[:3]
    v1 = post_json(port, "/v1/models/diabetes:predict", v1_body(rows))
    np.testing.assert_allclose(v1.json()["predictions"], models.regressor.predict(rows), rtol=1e-12)
    v2 = post_json(port, "/v2/models/diabetes/infer", v2_body(rows)).json()
    assert v2["outputs"][0]["datatype"] == "FP64"
    refused = post_json(port, "/v1/models/diabetes:predict", v1_body(rows, proba=True))
    assert refused.status == 400
    assert "predict_proba is not available" in refused.json()["error"]


def test_skops_model_with_pinned_digest_serves(
    servers: dict[str, ServerProcess], models: Models
) -> None:
    response = post_json(servers["skops"].port, "/v1/models/iris:predict", v1_body(ROWS))
    assert response.json() == {"predictions": models.iris.predict(ROWS).tolist()}


def test_v2_model_metadata_describes_inputs_outputs_and_the_loaded_file(
    iris_server: ServerProcess,
) -> None:
    metadata = request(iris_server.port, "GET", "/v2/models/iris").json()
    assert metadata["name"] == "iris"
    assert metadata["platform"] == "scikit-learn"
    assert metadata["inputs"] == [{"name": "input-0", "datatype": "FP64", "shape": [-1, 4]}]
    assert metadata["outputs"] == [
        {"name": "predict", "datatype": "INT64", "shape": [-1]},
        {"name": "predict_proba", "datatype": "FP64", "shape": [-1, 3]},
    ]
    parameters = metadata["parameters"]
    assert parameters["model_class"] == "sklearn.pipeline.Pipeline"
    assert parameters["n_features_in"] == 4
    assert parameters["classes"] == [0, 1, 2]
    assert parameters["sha256"].startswith("sha256:")
    assert parameters["load_seconds"] > 0
    assert set(parameters["versions"]) >= {"python", "scikit-learn", "numpy", "joblib"}


def test_health_and_server_metadata(iris_server: ServerProcess) -> None:
    port = iris_server.port
    assert request(port, "GET", "/v2/health/live").status == 200
    assert request(port, "GET", "/v2/health/ready").status == 200
    assert request(port, "GET", "/v2/models/iris/ready").status == 200
    assert request(port, "GET", "/v1/models/iris").json() == {"name": "iris", "ready": True}
    assert request(port, "GET", "/v2").json()["name"] == "modelserver"
    assert request(port, "GET", "/v1/models").json() == {"models": ["iris"]}


def test_keep_alive_connection_serves_many_requests(
    iris_server: ServerProcess, models: Models
) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", iris_server.port, timeout=5)
    try:
        for index in range(20):
            row = IRIS_X[index * 7 : index * 7 + 1]
            connection.request("POST", "/v1/models/iris:predict", json.dumps(v1_body(row)))
            response = connection.getresponse()
            assert response.status == 200
            assert json.loads(response.read()) == {"predictions": models.iris.predict(row).tolist()}
    finally:
        connection.close()


def test_pipelined_requests_are_answered_in_order(
    iris_server: ServerProcess, models: Models
) -> None:
    rows = [IRIS_X[i : i + 1] for i in (0, 60, 120, 1, 61, 121)]
    payload = b""
    for row in rows:
        body = json.dumps(v1_body(row)).encode()
        payload += (
            b"POST /v1/models/iris:predict HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s"
            % (len(body), body)
        )
    with socket.create_connection(("127.0.0.1", iris_server.port), timeout=5) as sock:
        sock.sendall(payload)
        received = b""
        while received.count(b"HTTP/1.1 200") < len(rows) or not received.endswith(b"}"):
            chunk = sock.recv(65536)
            assert chunk, received
            received += chunk
    bodies = [part.split(b"\r\n\r\n", 1)[1] for part in received.split(b"HTTP/1.1 ")[1:]]
    assert [json.loads(body)["predictions"] for body in bodies] == [
        models.iris.predict(row).tolist() for row in rows
    ]


def test_readiness_is_503_until_the_model_is_loaded(models: Models, tmp_path: Path) -> None:
    server = ServerProcess(models.path("slow-load.joblib"), tmp_path).start()
    try:
        server.wait_listening()
        assert request(server.port, "GET", "/v2/health/live").status == 200
        not_ready = request(server.port, "GET", "/v2/health/ready")
        assert (not_ready.status, not_ready.reason) == (503, "Service Unavailable")
        assert request(server.port, "GET", "/v2/models/iris/ready").status == 503
        assert request(server.port, "GET", "/v1/models/iris").json() == {
            "name": "iris",
            "ready": False,
        }
        early = post_json(server.port, "/v1/models/iris:predict", v1_body(ROWS))
        assert early.status == 503
        assert "not loaded yet" in early.json()["error"]
        server.wait_ready()
        assert post_json(server.port, "/v1/models/iris:predict", v1_body(ROWS)).status == 200
    finally:
        server.stop()


def test_upgrade_requests_are_served_as_http11(iris_server: ServerProcess, models: Models) -> None:
    """`curl --http2` on http:// asks to upgrade to h2c; the server answers in HTTP/1.1, body and
    pipelined requests after it included."""
    body = json.dumps(v1_body(ROWS)).encode()
    upgrade = (
        b"POST /v1/models/iris:predict HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings"
        b"\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    follow_up = b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n"
    with socket.create_connection(("127.0.0.1", iris_server.port), timeout=5) as sock:
        sock.sendall(upgrade[:150])
        time.sleep(0.05)
        sock.sendall(upgrade[150:] + follow_up)
        received = b""
        while not received.endswith(b'{"live":true}'):
            chunk = sock.recv(65536)
            assert chunk, received
            received += chunk
    first, second = received.split(b"HTTP/1.1 ")[1:]
    assert first.startswith(b"200 OK")
    expected = {"predictions": models.iris.predict(ROWS).tolist()}
    assert json.loads(first.split(b"\r\n\r\n", 1)[1]) == expected
    assert second.startswith(b"200 OK")

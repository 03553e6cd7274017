"""Bad requests get the right status and a JSON error naming the problem; the server goes on."""

from __future__ import annotations

import concurrent.futures
import http.client
import json
import socket
from typing import Any

import numpy as np
import pytest

from .support import IRIS_X, Models, ServerProcess, post_json, request, v1_body, v2_body

GOOD_ROWS = IRIS_X[[3, 77]]
V1 = "/v1/models/iris:predict"
V2 = "/v2/models/iris/infer"


def _v2_with(**changes: object) -> str:
    body = v2_body(IRIS_X[:2])
    body["inputs"][0].update(changes)
    return json.dumps(body)


def _v2_int(datatype: str, value: float) -> str:
    """Two iris rows as whole numbers of `datatype`, one value replaced by `value`."""
    rows = np.rint(IRIS_X[:2]).astype(int).tolist()
    rows[1][2] = value
    return json.dumps(
        {"inputs": [{"name": "input-0", "shape": [2, 4], "datatype": datatype, "data": rows}]}
    )


# (id, method, path, body, extra headers, expected status, words the error must contain)
BAD_REQUESTS = [
    ("malformed-json", "POST", V1, '{"instances": [[1, 2, 3, 4]]', {}, 400, "malformed JSON"),
    ("empty-body", "POST", V1, "", {}, 400, "empty request body"),
    ("not-an-object", "POST", V1, "[[1, 2, 3, 4]]", {}, 400, "JSON object"),
    ("missing-instances", "POST", V1, '{"rows": [[1, 2, 3, 4]]}', {}, 400, '"instances"'),
    ("instances-not-a-list", "POST", V1, '{"instances": "1,2,3,4"}', {}, 400, "must be a list"),
    ("empty-batch", "POST", V1, '{"instances": []}', {}, 400, "empty batch"),
    ("too-few-features", "POST", V1, '{"instances": [[1, 2, 3]]}', {}, 400, "expects 4 per row"),
    ("too-many-features", "POST", V1, '{"instances": [[1, 2, 3, 4, 5]]}', {}, 400, "got 5"),
    ("ragged-rows", "POST", V1, '{"instances": [[1, 2, 3, 4], [1, 2]]}', {}, 400, "ragged"),
    ("string-value", "POST", V1, '{"instances": [[1, 2, 3, "x"]]}', {}, 400, "non-numeric"),
    ("null-value", "POST", V1, '{"instances": [[1, 2, null, 4]]}', {}, 400, "non-numeric"),
    ("numeric-strings", "POST", V1, '{"instances": [["1", "2", "3", "4"]]}', {}, 400, "string"),
    ("too-deep", "POST", V1, '{"instances": [[[1, 2, 3, 4]]]}', {}, 400, "flat list of numbers"),
    ("huge-number", "POST", V1, '{"instances": [[1e999, 2, 3, 4]]}', {}, 400, "malformed JSON"),
    ("v2-missing-inputs", "POST", V2, '{"outputs": []}', {}, 400, '"inputs"'),
    ("v2-bytes-datatype", "POST", V2, _v2_with(datatype="BYTES"), {}, 400, "unsupported datatype"),
    ("v2-unknown-datatype", "POST", V2, _v2_with(datatype="FP128"), {}, 400, "FP128"),
    ("v2-shape-data-mismatch", "POST", V2, _v2_with(shape=[3, 4]), {}, 400, "needs 12 values"),
    ("v2-3d-shape", "POST", V2, _v2_with(shape=[2, 2, 2]), {}, 400, "[rows, features]"),
    ("v2-negative-shape", "POST", V2, _v2_with(shape=[-2, 4]), {}, 400, "non-negative"),
    ("v2-int-with-floats", "POST", V2, _v2_with(datatype="INT64"), {}, 400, "non-integer"),
    ("v2-int8-overflow", "POST", V2, _v2_int("INT8", 1000), {}, 400, "'inputs[0].data' holds 1000"),
    ("v2-uint8-negative", "POST", V2, _v2_int("UINT8", -1), {}, 400, "outside the range of UINT8"),
    ("v2-int16-overflow", "POST", V2, _v2_int("INT16", -40_000), {}, 400, "(-32768 to 32767)"),
    ("v2-uint32-overflow", "POST", V2, _v2_int("UINT32", 2**32), {}, 400, "range of UINT32"),
    ("v2-fp16-overflow", "POST", V2, _v2_int("FP16", 100_000), {}, 400, "range of FP16"),
    ("v2-fp32-overflow", "POST", V2, _v2_int("FP32", 1e39), {}, 400, "range of FP32"),
    (
        "v1-predict-proba-string",
        "POST",
        V1,
        json.dumps({**v1_body(GOOD_ROWS), "parameters": {"predict_proba": "true"}}),
        {},
        400,
        "parameters.predict_proba must be true or false, got a string",
    ),
    (
        "v2-predict-proba-string",
        "POST",
        V2,
        json.dumps({**v2_body(GOOD_ROWS), "parameters": {"predict_proba": "true"}}),
        {},
        400,
        "parameters.predict_proba must be true or false, got a string",
    ),
    (
        "v2-predict-proba-number",
        "POST",
        V2,
        json.dumps({**v2_body(GOOD_ROWS), "parameters": {"predict_proba": 1}}),
        {},
        400,
        "parameters.predict_proba must be true or false, got a number",
    ),
    (
        "v2-binary-data-output-string",
        "POST",
        V2,
        json.dumps({**v2_body(GOOD_ROWS), "parameters": {"binary_data_output": "yes"}}),
        {},
        400,
        "parameters.binary_data_output must be true or false",
    ),
    (
        "v2-output-binary-data-string",
        "POST",
        V2,
        json.dumps(
            {
                **v2_body(GOOD_ROWS),
                "outputs": [{"name": "predict", "parameters": {"binary_data": "false"}}],
            }
        ),
        {},
        400,
        "outputs[0].parameters.binary_data must be true or false",
    ),
    (
        "v2-unknown-output",
        "POST",
        V2,
        json.dumps({**v2_body(IRIS_X[:1]), "outputs": [{"name": "decision_function"}]}),
        {},
        400,
        "unknown output",
    ),
    (
        "v2-two-inputs",
        "POST",
        V2,
        json.dumps({"inputs": v2_body(IRIS_X[:1])["inputs"] * 2}),
        {},
        400,
        "exactly one input",
    ),
    (
        "v2-binary-header-beyond-body",
        "POST",
        V2,
        json.dumps(v2_body(IRIS_X[:1])),
        {"Inference-Header-Content-Length": "99999"},
        400,
        "outside the body",
    ),
    (
        "unknown-model-v1",
        "POST",
        "/v1/models/nope:predict",
        json.dumps(v1_body(GOOD_ROWS)),
        {},
        404,
        "'nope' not found",
    ),
    (
        "unknown-model-v2",
        "POST",
        "/v2/models/nope/infer",
        json.dumps(v2_body(GOOD_ROWS)),
        {},
        404,
        "'nope' not found",
    ),
    ("unknown-model-metadata", "GET", "/v2/models/nope", None, {}, 404, "not found"),
    ("unknown-path", "GET", "/v3/anything", None, {}, 404, "no such endpoint"),
    ("wrong-method", "GET", V1, None, {}, 405, "use POST"),
    ("oversized-body", "POST", V1, json.dumps(v1_body(IRIS_X.tolist() * 20)), {}, 413, "limit"),
    ("oversized-headers", "GET", "/v2/health/live", None, {"X-Big": "x" * 70_000}, 431, "exceed"),
]


def _assert_still_serving(port: int, models: Models) -> None:
    response = post_json(port, V1, v1_body(GOOD_ROWS))
    assert response.status == 200
    assert response.json() == {"predictions": models.iris.predict(GOOD_ROWS).tolist()}


@pytest.mark.parametrize("case", BAD_REQUESTS, ids=[case[0] for case in BAD_REQUESTS])
def test_bad_request_gets_a_json_error_and_the_server_keeps_serving(
    iris_server: ServerProcess, models: Models, case: tuple[Any, ...]
) -> None:
    _, method, path, body, headers, status, words = case
    response = request(iris_server.port, method, path, body, headers=headers)
    assert response.status == status, response.body
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert words in error
    _assert_still_serving(iris_server.port, models)


@pytest.mark.parametrize(
    ("datatype", "low", "high"),
    [("INT8", -128, 127), ("UINT8", 0, 255), ("INT16", -32768, 32767), ("FP16", -65504, 65504)],
)
def test_values_at_the_edges_of_a_datatype_are_served(
    iris_server: ServerProcess, models: Models, datatype: str, low: int, high: int
) -> None:
    """The range check refuses only what the type cannot hold: its own extremes are fine."""
    rows = [[5, 3, low, 0], [6, 3, high, 2]]
    body = {"inputs": [{"name": "input-0", "shape": [2, 4], "datatype": datatype, "data": rows}]}
    response = post_json(iris_server.port, V2, body)
    assert response.status == 200, response.body
    assert response.json()["outputs"][0]["data"] == models.iris.predict(np.array(rows)).tolist()


@pytest.mark.parametrize("proba", [True, False, None])
def test_predict_proba_takes_json_booleans_and_null(
    iris_server: ServerProcess, models: Models, proba: bool | None
) -> None:
    body = {**v1_body(GOOD_ROWS), "parameters": {"predict_proba": proba}}
    response = post_json(iris_server.port, V1, body)
    assert response.status == 200, response.body
    model = models.iris
    expected = model.predict_proba(GOOD_ROWS) if proba else model.predict(GOOD_ROWS)
    np.testing.assert_allclose(response.json()["predictions"], expected, rtol=1e-12)


def test_malformed_http_gets_400_and_the_server_keeps_serving(
    iris_server: ServerProcess, models: Models
) -> None:
    with socket.create_connection(("127.0.0.1", iris_server.port), timeout=5) as sock:
        sock.sendall(b"POST /v1/models/iris:predict HTTP/1.1\r\nContent-Length: nope\r\n\r\n")
        answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 400 ")
    assert b"malformed HTTP request" in answer
    _assert_still_serving(iris_server.port, models)


def test_non_finite_binary_values_are_refused_by_the_model(
    iris_server: ServerProcess, models: Models
) -> None:
    """JSON cannot carry NaN, binary tensors can; the pipeline's own validation refuses it."""
    rows = np.array([[5.0, 3.0, np.nan, 0.2]])
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "input-0",
                    "shape": [1, 4],
                    "datatype": "FP64",
                    "parameters": {"binary_data_size": rows.nbytes},
                }
            ]
        }
    ).encode()
    response = request(
        iris_server.port,
        "POST",
        V2,
        header + rows.astype("<f8").tobytes(),
        headers={"Inference-Header-Content-Length": str(len(header))},
    )
    assert response.status == 400
    assert "the model rejected the input" in response.json()["error"]
    assert "NaN" in response.json()["error"]
    _assert_still_serving(iris_server.port, models)


def test_oversized_chunked_body_gets_413(iris_server: ServerProcess, models: Models) -> None:
    chunk = b"[" + b"1," * 40_000 + b"1]"
    with socket.create_connection(("127.0.0.1", iris_server.port), timeout=5) as sock:
        sock.sendall(
            b"POST /v1/models/iris:predict HTTP/1.1\r\nHost: x\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n" + b"%x\r\n%s\r\n0\r\n\r\n" % (len(chunk), chunk)
        )
        answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 413 ")
    assert b"connection: close" in answer
    _assert_still_serving(iris_server.port, models)


def test_too_many_waiting_requests_get_503_with_retry_after(
    servers: dict[str, ServerProcess], models: Models
) -> None:
    """The slow server predicts for 0.25 s per call and lets one more request wait; ten requests
    sent together on open connections overflow that."""
    port = servers["slow"].port
    rows = IRIS_X[[10]]
    connections = [http.client.HTTPConnection("127.0.0.1", port, timeout=30) for _ in range(10)]
    for connection in connections:
        connection.request("GET", "/v2/health/live")
        connection.getresponse().read()

    def predict(connection: http.client.HTTPConnection) -> tuple[int, str | None, Any]:
        connection.request("POST", V1, json.dumps(v1_body(rows)))
        response = connection.getresponse()
        return response.status, response.getheader("Retry-After"), json.loads(response.read())

    try:
        with concurrent.futures.ThreadPoolExecutor(10) as pool:
            answers = list(pool.map(predict, connections))
    finally:
        for connection in connections:
            connection.close()
    refused = [answer for answer in answers if answer[0] == 503]
    served = [answer for answer in answers if answer[0] == 200]
    assert len(refused) + len(served) == 10
    assert refused, "the queue bound never refused a request"
    assert served
    for _, retry_after, body in refused:
        assert retry_after == "1"
        assert "overloaded" in body["error"]
    expected = {"predictions": models.slow.predict(rows).tolist()}
    assert all(body == expected for _, _, body in served)
    assert post_json(port, V1, v1_body(rows)).status == 200


def _large_rows(last: object) -> list[list[object]]:
    """12,000 good iris rows (48,000 values: converted in slices, decoded off the loop) and then
    `last`."""
    rows: list[list[object]] = np.tile(IRIS_X, (80, 1)).tolist()
    return [*rows, last]  # type: ignore[list-item]


@pytest.mark.parametrize(
    ("last", "words", "v2_words"),
    [
        ([5.1, 3.5, 1.4, "x"], "non-numeric", "non-numeric"),
        ([5.1, 3.5, None, 0.2], "non-numeric", "non-numeric"),
        ([5.1, 3.5], "ragged", "needs 48004 values"),
        ([[5.1, 3.5, 1.4, 0.2]], "ragged", "ragged"),
    ],
    ids=["string", "null", "short-row", "nested-row"],
)
def test_large_requests_are_checked_like_small_ones(
    servers: dict[str, ServerProcess], models: Models, last: object, words: str, v2_words: str
) -> None:
    """A bad value in the last row of a large request is found and named, on both protocols
    (the iris model again, on a server with the default body limit)."""
    port = servers["skops"].port
    v1 = post_json(port, V1, {"instances": _large_rows(last)})
    assert v1.status == 400
    assert words in v1.json()["error"]
    flat = [value for row in _large_rows(last) for value in row]
    v2 = post_json(
        port,
        V2,
        {"inputs": [{"name": "x", "shape": [12001, 4], "datatype": "FP64", "data": flat}]},
    )
    assert v2.status == 400
    assert v2_words in v2.json()["error"]
    good = np.tile(IRIS_X, (80, 1))
    answer = post_json(port, V1, v1_body(good))
    assert answer.status == 200
    assert answer.json() == {"predictions": models.iris.predict(good).tolist()}

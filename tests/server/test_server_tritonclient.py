"""The reference Open Inference Protocol client (tritonclient[http]) works against the server."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import tritonclient.http as triton

from .support import IRIS_X, Models, ServerProcess

ROWS = IRIS_X[[0, 50, 100, 149]]


@pytest.fixture
def client(iris_server: ServerProcess) -> Iterator[triton.InferenceServerClient]:
    connection = triton.InferenceServerClient(url=f"127.0.0.1:{iris_server.port}")
    yield connection
    connection.close()


def test_health_and_metadata_through_tritonclient(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("iris")
    assert client.get_server_metadata()["name"] == "modelserver"
    metadata = client.get_model_metadata("iris")
    assert metadata["inputs"][0]["shape"] == [-1, 4]
    assert [output["name"] for output in metadata["outputs"]] == ["predict", "predict_proba"]


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
@pytest.mark.parametrize("datatype", ["FP64", "FP32"])
def test_infer_through_tritonclient(
    client: triton.InferenceServerClient, models: Models, binary: bool, datatype: str
) -> None:
    rows = ROWS.astype(np.float32 if datatype == "FP32" else np.float64)
    tensor = triton.InferInput("input-0", list(rows.shape), datatype)
    tensor.set_data_from_numpy(rows, binary_data=binary)
    result = client.infer(
        "iris",
        [tensor],
        outputs=[triton.InferRequestedOutput("predict", binary_data=binary)],
    )
    np.testing.assert_array_equal(result.as_numpy("predict"), models.iris.predict(rows))


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_probabilities_through_tritonclient(
    client: triton.InferenceServerClient, models: Models, binary: bool
) -> None:
    tensor = triton.InferInput("input-0", list(ROWS.shape), "FP64")
    tensor.set_data_from_numpy(ROWS, binary_data=binary)
    result = client.infer(
        "iris",
        [tensor],
        outputs=[triton.InferRequestedOutput("predict_proba", binary_data=binary)],
    )
    probabilities = result.as_numpy("predict_proba")
    assert probabilities.shape == (4, 3)
    np.testing.assert_allclose(probabilities, models.iris.predict_proba(ROWS), rtol=1e-12)


def test_string_classes_as_binary_bytes_through_tritonclient(
    servers: dict[str, ServerProcess], models: Models
) -> None:
    client = triton.InferenceServerClient(url=f"127.0.0.1:{servers['forest'].port}")
    try:
        tensor = triton.InferInput("input-0", list(ROWS.shape), "FP64")
        tensor.set_data_from_numpy(ROWS)
        result = client.infer("flowers", [tensor], outputs=[triton.InferRequestedOutput("predict")])
    finally:
        client.close()
    labels = [value.decode() for value in result.as_numpy("predict")]
    assert labels == models.forest.predict(ROWS).tolist()

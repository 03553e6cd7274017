"""KServe's own Python client (`kserve.InferenceRESTClient`, V1 and V2) works against the server.

The `kserve` package cannot live in the project's environment (it pins psutil below 6, the tests
use 7), so the client runs in the KServe environment that the benchmark already builds
(`bench.server.venvs`, cached under ~/.cache/modeldeploy/bench-venvs; `make kserve-client`
prepares it, and this module does on first use) and reports its results as JSON.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from bench.server import venvs

from .support import IRIS_X, Models, ServerProcess, request

ROWS = IRIS_X[[0, 50, 100, 149]]
CALLS = Path(__file__).with_name("kserve_client_calls.py")


@pytest.fixture(scope="module")
def kserve_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    log = tmp_path_factory.mktemp("kserve-venv") / "pip.log"
    return venvs.python_of(venvs.ensure(venvs.peer_envs()["kserve"], log))


@pytest.fixture(scope="module")
def results(kserve_python: Path, servers: dict[str, ServerProcess]) -> dict[str, Any]:
    done = subprocess.run(
        [
            str(kserve_python),
            str(CALLS),
            f"http://127.0.0.1:{servers['iris'].port}",
            "iris",
            json.dumps(ROWS.tolist()),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    answers: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    return answers


@pytest.mark.parametrize("call", ["v1_server_live", "v2_server_live", "v2_server_ready"])
def test_server_health_through_the_kserve_client(results: dict[str, Any], call: str) -> None:
    """V1 liveness is `GET /` answering {"status": "alive"}; V2's is /v2/health/live."""
    assert results[call] is True


@pytest.mark.parametrize("call", ["v1_model_ready", "v2_model_ready"])
def test_model_readiness_through_the_kserve_client(results: dict[str, Any], call: str) -> None:
    assert results[call] is True


def test_v1_predict_through_the_kserve_client(results: dict[str, Any], models: Models) -> None:
    assert results["v1_predict"] == {"predictions": models.iris.predict(ROWS).tolist()}


@pytest.mark.parametrize("encoding", ["json", "binary"])
def test_v2_infer_through_the_kserve_client(
    results: dict[str, Any], models: Models, encoding: str
) -> None:
    predicted = results[f"v2_predict_{encoding}"]
    assert predicted == {"id": "kserve-client", "outputs": {"predict": _labels(models)}}
    probabilities = results[f"v2_predict_proba_{encoding}"]["outputs"]["predict_proba"]
    np.testing.assert_allclose(probabilities, models.iris.predict_proba(ROWS), rtol=1e-12)


def _labels(models: Models) -> list[int]:
    return [int(label) for label in models.iris.predict(ROWS)]


def test_root_answers_kserve_v1_liveness_and_keeps_the_v2_field(
    iris_server: ServerProcess,
) -> None:
    response = request(iris_server.port, "GET", "/")
    assert response.status == 200
    assert response.json() == {"status": "alive", "live": True}


def test_v2_with_a_trailing_slash_is_the_server_metadata(iris_server: ServerProcess) -> None:
    """`/v2/` is how the OIP OpenAPI document spells the server metadata endpoint."""
    with_slash = request(iris_server.port, "GET", "/v2/")
    assert with_slash.status == 200
    assert with_slash.json() == request(iris_server.port, "GET", "/v2").json()
    assert with_slash.json()["name"] == "modelserver"

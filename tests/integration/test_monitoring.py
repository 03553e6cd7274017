"""spec.monitoring against a real API server (KWOK pods run nothing, so no pod has PSI figures:
ModelDrift starts False and stays so; the decision from figures is tested in
tests/unit/test_drift_condition.py)."""

from __future__ import annotations

import pytest
from kubernetes import client

from .operator_support import (
    Models,
    crd_installed,  # noqa: F401 - fixture
    operator,  # noqa: F401 - fixture
    operator_kubeconfig,  # noqa: F401 - fixture
)

pytestmark = pytest.mark.usefixtures("operator")
DIGEST = "sha256:" + "ab" * 32


def test_a_reference_profile_is_fetched_and_model_drift_starts_false(
    api_client: client.ApiClient, namespace: str
) -> None:
    models = Models(api_client, namespace)
    models.create(
        "watched",
        {
            "model": {"uri": "file:///opt/models/iris/model.joblib"},
            "monitoring": {
                "reference": {"uri": "https://profiles.example/iris.json", "digest": DIGEST},
                "driftThreshold": 0.25,
                "payloadLog": {"url": "http://sink.logs.svc/", "sampleRate": 0.1, "redact": ["0"]},
            },
        },
    )

    body = models.wait_condition("watched", "ModelDrift", "False", reason="NoDrift")

    condition = models.current_condition(body, "ModelDrift")
    assert condition is not None
    assert condition["message"] == "no feature or prediction PSI above 0.25"
    deployment = models.deployment("watched")
    assert deployment is not None
    pod = deployment.spec.template.spec
    assert [c.name for c in pod.init_containers] == ["fetch-reference"]
    env = {e.name: e.value for e in pod.containers[0].env}
    assert env["REFERENCE_URI"] == "file:///mnt/reference/profile.json"
    assert env["REFERENCE_DIGEST"] == DIGEST
    assert env["PAYLOAD_LOG_SAMPLE_RATE"] == "0.1"
    assert env["PAYLOAD_LOG_REDACT"] == "0"


def test_without_a_reference_there_is_no_model_drift(
    api_client: client.ApiClient, namespace: str
) -> None:
    models = Models(api_client, namespace)
    models.create("plain", {"model": {"uri": "file:///opt/models/iris/model.joblib"}})
    body = models.wait_condition("plain", "Ready", "True", timeout=60)
    assert models.current_condition(body, "ModelDrift") is None

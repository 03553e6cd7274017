"""Canary rollouts against a real API server (KWOK nodes: pods become Ready without running, so
there are no metrics to judge; the analysis stays Inconclusive and the gates are tested in
tests/unit/test_canary.py and on the real node in tests/e2e/test_canary.py). What is tested
here is what a user sees with kubectl: the second Deployment, the frozen stable one, the
status, the conditions, the Events and the manual promote / abort."""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes import client

from modeldeploy import canary

from .operator_support import (
    Models,
    crd_installed,  # noqa: F401 - fixture
    operator,  # noqa: F401 - fixture
    operator_kubeconfig,  # noqa: F401 - fixture
    wait_for,
)

pytestmark = pytest.mark.usefixtures("operator")

TRACK = canary.TRACK_LABEL


@pytest.fixture
def models(api_client: client.ApiClient, namespace: str) -> Models:
    return Models(api_client, namespace)


def _spec(version: str) -> dict[str, Any]:
    return {
        "model": {"uri": "file:///opt/models/iris/model.joblib", "version": version},
        "replicas": 4,
        "rollout": {
            "strategy": "Canary",
            "canary": {
                "steps": [{"weight": 25, "pauseSeconds": 5}, {"weight": 50, "pauseSeconds": 5}],
                "analysis": {"intervalSeconds": 5, "minRequests": 10},
            },
        },
    }


def _version(deployment: client.V1Deployment) -> str:
    env = {e.name: e.value for e in deployment.spec.template.spec.containers[0].env}
    return str(env.get("MODEL_VERSION"))


def _canary_status(models: Models, name: str) -> dict[str, Any]:
    return dict((models.get(name).get("status") or {}).get("canary") or {})


def _annotate(models: Models, name: str, value: str) -> None:
    models.custom.patch_namespaced_custom_object(
        "serving.modeldeploy.io",
        "v1alpha1",
        models.namespace,
        "modeldeployments",
        name,
        {"metadata": {"annotations": {canary.COMMAND_ANNOTATION: value}}},
    )


def test_a_canary_runs_beside_the_frozen_stable_version_and_is_promoted_or_aborted(
    models: Models, api_client: client.ApiClient
) -> None:
    core = client.CoreV1Api(api_client)
    models.create("iris", _spec("1"))
    models.wait_condition("iris", "Ready", timeout=60)
    stable = models.deployment("iris")
    assert stable is not None
    assert stable.spec.template.metadata.labels[TRACK] == "stable"
    assert "status" not in models.get("iris") or "canary" not in models.get("iris")["status"]

    # v2: a canary of 1 pod (25 % of 4); the stable Deployment keeps v1 and gives a pod up
    # once the canary's pod is Ready.
    models.patch_spec("iris", _spec("2"))
    body = models.wait_condition("iris", "Reconciling", "True", "CanaryProgressing", timeout=30)
    ready = models.current_condition(body, "Ready")
    assert ready is not None
    assert ready["status"] == "False"
    assert ready["reason"] == "CanaryProgressing"
    wait_for(
        "the canary's pod is Ready and the stable version gave one up",
        lambda: (
            (c := models.deployment("iris-canary")) is not None
            and (c.status.ready_replicas or 0) == 1
            and (s := models.deployment("iris")) is not None
            and s.spec.replicas == 3
        ),
        timeout=60,
    )
    canary_deployment = models.deployment("iris-canary")
    assert canary_deployment is not None
    assert _version(canary_deployment) == "2"
    assert canary_deployment.spec.selector.match_labels[TRACK] == "canary"
    assert canary_deployment.metadata.owner_references[0].name == "iris"
    frozen = models.deployment("iris")
    assert frozen is not None
    assert _version(frozen) == "1"
    assert frozen.metadata.generation == stable.metadata.generation + 1  # only scaled
    # One Service selects both tracks.
    service = core.read_namespaced_service("iris", models.namespace)
    assert TRACK not in service.spec.selector

    # No pod answers metrics here: the analysis cannot judge and the canary waits (Paused).
    status = wait_for(
        "the canary's analysis to wait for traffic",
        lambda: (s := _canary_status(models, "iris")).get("state") == "Paused" and s,
        timeout=30,
    )
    assert status["step"] == 1
    assert status["steps"] == 2
    assert status["weight"] == 25
    assert status["model"]["version"] == "2"
    assert status["analysis"]["verdict"] == "Inconclusive"
    assert models.get("iris")["status"]["model"]["version"] == "1"  # what serves

    # promote: the stable Deployment rolls out v2, then the canary goes; the annotation is
    # removed once carried out.
    _annotate(models, "iris", "promote")
    wait_for(
        "promotion: canary removed, stable on v2",
        lambda: (
            models.deployment("iris-canary") is None
            and (s := models.deployment("iris")) is not None
            and _version(s) == "2"
        ),
        timeout=60,
    )
    body = models.wait_condition("iris", "Ready", timeout=60)
    assert body["status"]["canary"]["state"] == "Promoted"
    assert body["status"]["model"]["version"] == "2"
    assert canary.COMMAND_ANNOTATION not in (body["metadata"].get("annotations") or {})
    promoted = models.deployment("iris")
    assert promoted is not None
    assert promoted.spec.replicas == 4

    # v3 aborted: canary removed, stable back to 4 pods on v2, Stalled names the rollback.
    models.patch_spec("iris", _spec("3"))
    wait_for(
        "a canary of v3",
        lambda: _canary_status(models, "iris").get("model", {}).get("version") == "3",
    )
    _annotate(models, "iris", "abort")
    body = models.wait_condition("iris", "Stalled", "True", "CanaryRolledBack", timeout=30)
    assert body["status"]["canary"]["state"] == "RolledBack"
    assert "annotation" in models.current_condition(body, "Ready")["message"]  # type: ignore[index]
    assert body["status"]["phase"] == "Degraded"
    wait_for(
        "the rollback's end state",
        lambda: (
            models.deployment("iris-canary") is None
            and (s := models.deployment("iris")) is not None
            and s.spec.replicas == 4
            and _version(s) == "2"
        ),
        timeout=30,
    )
    available = models.current_condition(models.get("iris"), "Available")
    assert available is not None
    assert available["status"] == "True"

    events = core.list_namespaced_event(
        models.namespace, field_selector="involvedObject.name=iris"
    ).items
    reasons = {event.reason for event in events}
    assert {"CanaryStarted", "CanaryPromoted", "CanaryRolledBack"} <= reasons

    # A new spec starts a new canary from step 1.
    models.patch_spec("iris", _spec("4"))
    status = wait_for(
        "a canary of v4",
        lambda: (s := _canary_status(models, "iris")).get("model", {}).get("version") == "4" and s,
    )
    assert status["step"] == 1
    assert status["state"] in ("Progressing", "Paused")

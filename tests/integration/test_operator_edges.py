"""The operator at its edges, with real faults on the real API server: deletions, crash-looping
pods, refused repairs, quotas lifted later.

Each test failed on the operator before the work queue (issue 9): deleted resources stayed in
its memory, Events from re-checks were lost in timer threads, a failed repair was never retried.
"""

from __future__ import annotations

import os
import time
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from prometheus_client import REGISTRY

from modeldeploy import api

from .operator_support import (
    Models,
    crd_installed,  # noqa: F401 - fixture
    operator,  # noqa: F401 - fixture
    operator_kubeconfig,  # noqa: F401 - fixture
    wait_for,
)

pytestmark = pytest.mark.usefixtures("operator")

FILE_MODEL = {"uri": "file:///opt/models/iris/model.joblib", "version": "1"}


@pytest.fixture
def models(api_client: client.ApiClient, namespace: str) -> Models:
    return Models(api_client, namespace)


def _gauge(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def _known_resources() -> float:
    return sum(_gauge("modeldeploy_resources", phase=str(phase)) for phase in api.Phase)


def _live_resources(models: Models) -> int:
    listed = models.custom.list_cluster_custom_object(api.GROUP, api.VERSION, api.PLURAL)
    return sum(1 for item in listed["items"] if not item["metadata"].get("deletionTimestamp"))


def test_deleted_resources_are_forgotten_and_memory_stays_flat(models: Models) -> None:
    """No finalizer, so only the DELETED watch event tells the operator; its gauge and every
    per-resource store must follow the live count through many create/delete cycles."""
    cycles = int(os.environ.get("MODELDEPLOY_CHURN_CYCLES", "60"))
    wait_for("gauge matches live resources", lambda: _known_resources() == _live_resources(models))
    baseline = {
        store: _gauge("modeldeploy_remembered_objects", store=store)
        for store in ("parents", "phases", "written", "applied", "locks")
    }
    batch = 10
    for start in range(0, cycles, batch):
        names = [f"churn-{i}" for i in range(start, min(start + batch, cycles))]
        for name in names:
            models.create(name, {"model": FILE_MODEL, "replicas": 0})
        for name in names:
            wait_for(f"{name} reconciled", lambda n=name: models.get(n).get("status"), timeout=60)
        for name in names:
            models.delete(name)
    wait_for(
        "gauge back to the live count",
        lambda: _known_resources() == _live_resources(models),
        timeout=60,
    )
    for store, before in baseline.items():
        wait_for(
            f"{store} back to its baseline",
            lambda s=store, b=before: _gauge("modeldeploy_remembered_objects", store=s) <= b,
            timeout=60,
        )


def _unschedulable_spec() -> dict[str, Any]:
    # No fake node has 64 CPUs: the pod stays Pending, and the test plays the kubelet.
    return {
        "model": FILE_MODEL,
        "replicas": 1,
        "resources": {"requests": {"cpu": "64", "memory": "256Mi"}},
    }


def _crash(core: client.CoreV1Api, namespace: str, pod: str, message: str) -> None:
    core.patch_namespaced_pod_status(
        pod,
        namespace,
        {
            "status": {
                "containerStatuses": [
                    {
                        "name": "server",
                        "image": "modeldeploy/modelserver:test",
                        "imageID": "",
                        "ready": False,
                        "restartCount": 3,
                        "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off"}},
                        "lastState": {
                            "terminated": {"exitCode": 3, "reason": "Error", "message": message}
                        },
                    }
                ]
            }
        },
    )


def test_crash_looping_pods_get_a_stalled_event_and_keep_being_rechecked(
    models: Models, namespace: str
) -> None:
    models.create("crashy", _unschedulable_spec())
    pod = wait_for(
        "a pod",
        lambda: next(iter(models.core.list_namespaced_pod(namespace).items), None),
        timeout=30,
    ).metadata.name
    _crash(models.core, namespace, pod, "model load failed: first reason")
    body = models.wait_condition("crashy", "Stalled", reason="ModelLoadFailed", timeout=60)
    stalled = models.current_condition(body, "Stalled")
    assert stalled is not None
    assert "first reason" in stalled["message"]

    def stalled_event() -> client.CoreV1Event | None:
        events = models.core.list_namespaced_event(
            namespace, field_selector="involvedObject.name=crashy"
        ).items
        return next((e for e in events if e.reason == "StalledTrue"), None)

    event = wait_for("the Stalled Event", stalled_event, timeout=30)
    assert event.type == "Warning"
    assert "first reason" in event.message
    assert event.involved_object.kind == "ModelDeployment"

    # Nothing about the Deployment changes from here: only re-checks can see the new message.
    _crash(models.core, namespace, pod, "model load failed: second reason")
    wait_for(
        "the re-check sees the new termination message",
        lambda: (
            "second reason" in ((models.condition("crashy", "Stalled") or {}).get("message") or "")
        ),
        timeout=75,
    )


def test_a_repair_refused_by_a_quota_is_retried_until_the_quota_is_lifted(
    models: Models, namespace: str, api_client: client.ApiClient
) -> None:
    """A NetworkPolicy deleted while the API server refuses new ones (quota 0) must come back
    once the quota is lifted: no event announces that, only the retries."""
    net = client.NetworkingV1Api(api_client)
    models.create("guarded", {"model": FILE_MODEL, "replicas": 1})
    models.wait_condition("guarded", "Ready", timeout=30)
    models.core.create_namespaced_resource_quota(
        namespace,
        {
            "metadata": {"name": "no-policies"},
            "spec": {"hard": {"count/networkpolicies.networking.k8s.io": "0"}},
        },
    )
    wait_for(
        "quota observed",
        lambda: models.core.read_namespaced_resource_quota("no-policies", namespace).status.hard,
    )
    net.delete_namespaced_network_policy("guarded", namespace)
    body = models.wait_condition("guarded", "Stalled", reason="ApplyFailed", timeout=30)
    stalled = models.current_condition(body, "Stalled")
    assert stalled is not None
    assert "exceeded quota" in stalled["message"], "the API server's own message is shown"
    time.sleep(2)
    with pytest.raises(ApiException):
        net.read_namespaced_network_policy("guarded", namespace)

    models.core.delete_namespaced_resource_quota("no-policies", namespace)
    lifted = time.monotonic()
    wait_for(
        "NetworkPolicy re-created",
        lambda: net.list_namespaced_network_policy(namespace).items,
        timeout=40,
    )
    print(f"NetworkPolicy back {time.monotonic() - lifted:.1f}s after the quota was lifted")
    models.wait_condition("guarded", "Ready", timeout=30)
    assert models.condition("guarded", "Stalled")["status"] == "False"  # type: ignore[index]

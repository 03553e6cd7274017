"""A stopped and restarted operator converges with no duplicate or orphaned objects."""

from __future__ import annotations

from pathlib import Path

from kubernetes import client

from .operator_support import (
    Models,
    children,
    crd_installed,  # noqa: F401 - fixture
    operator_kubeconfig,  # noqa: F401 - fixture
    running_operator,
    wait_for,
)

MODEL = {"uri": "file:///opt/models/iris/model.joblib", "version": "1"}


def _count(api_client: client.ApiClient, namespace: str, name: str) -> dict[str, int]:
    return {kind: len(items) for kind, items in children(api_client, namespace, name).items()}


def test_operator_restart_converges_without_duplicates(
    crd_installed: None,  # noqa: F811 - fixture
    operator_kubeconfig: Path,  # noqa: F811 - fixture
    api_client: client.ApiClient,
    namespace: str,
) -> None:
    models = Models(api_client, namespace)
    with running_operator(operator_kubeconfig):
        models.create("steady", {"model": MODEL, "replicas": 2})
        models.wait_condition("steady", "Ready")

    # While the operator is down: a new resource, a spec change, and a deleted child.
    models.create("newcomer", {"model": MODEL, "replicas": 2})
    models.patch_spec("steady", {"model": {**MODEL, "version": "2"}})
    client.CoreV1Api(api_client).delete_namespaced_service("steady", namespace)
    models.apps.patch_namespaced_deployment_scale("steady", namespace, {"spec": {"replicas": 5}})

    with running_operator(operator_kubeconfig):
        for name in ("steady", "newcomer"):
            body = models.wait_condition(name, "Ready", timeout=60)
            assert body["status"]["observedGeneration"] == body["metadata"]["generation"]
        wait_for(
            "Service restored",
            lambda: _count(api_client, namespace, "steady")["Service"] == 1,
            timeout=10,
        )
        deployment = models.deployment("steady")
        assert deployment is not None
        assert deployment.spec.replicas == 2
        assert models.get("steady")["status"]["model"]["version"] == "2"
        for name in ("steady", "newcomer"):
            assert _count(api_client, namespace, name) == {
                "Deployment": 1,
                "Service": 1,
                "HorizontalPodAutoscaler": 0,
                "PodDisruptionBudget": 1,
                "NetworkPolicy": 1,
            }

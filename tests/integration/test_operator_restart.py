"""A stopped and restarted or upgraded operator converges, with no duplicate or orphan."""

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


def test_an_upgraded_operator_rolls_its_new_server_image_out(
    crd_installed: None,  # noqa: F811 - fixture
    operator_kubeconfig: Path,  # noqa: F811 - fixture
    api_client: client.ApiClient,
    namespace: str,
) -> None:
    """A new operator release with a new default server image reaches the running pods (a
    server image that a resource names itself stays)."""
    models = Models(api_client, namespace)
    pinned = "registry.example.com/team/modelserver:custom"
    with running_operator(operator_kubeconfig):
        models.create("default-image", {"model": MODEL, "replicas": 1})
        models.create("own-image", {"model": MODEL, "replicas": 1, "server": {"image": pinned}})
        for name in ("default-image", "own-image"):
            models.wait_condition(name, "Ready")

    def image(name: str) -> str:
        deployment = models.deployment(name)
        assert deployment is not None
        return str(deployment.spec.template.spec.containers[0].image)

    upgraded = "registry.example.com/modeldeploy/modelserver:next"
    with running_operator(operator_kubeconfig, server_image=upgraded):

        def rolled_out() -> bool:
            deployment = models.deployment("default-image")
            assert deployment is not None
            st = deployment.status
            return bool(
                image("default-image") == upgraded
                and st.observed_generation == deployment.metadata.generation
                and st.updated_replicas == st.available_replicas == st.replicas == 1
            )

        wait_for("the new default image rolled out", rolled_out, timeout=30)
        body = models.wait_condition("default-image", "Ready")
        assert body["status"]["updatedReplicas"] == 1
        assert image("own-image") == pinned

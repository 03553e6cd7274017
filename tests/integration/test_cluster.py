"""The local control plane behaves like a real cluster where the operator needs it to.

Versions, Ready nodes, Deployments that reach Ready pods through the real scheduler and KWOK,
real garbage collection of owned objects, and the autoscaling/v2 API with a live HPA
controller: if one of these breaks, operator tests would fail for reasons of the harness.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import pytest
from kubernetes import client

import localcluster

T = TypeVar("T")


def eventually(check: Callable[[], T | None], *, timeout: float = 60.0, what: str = "") -> T:
    """Poll ``check`` until it returns something truthy; fail with ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.25)


def _deployment(name: str, replicas: int) -> client.V1Deployment:
    labels = {"app": name}
    return client.V1Deployment(
        metadata=client.V1ObjectMeta(name=name, labels=labels),
        spec=client.V1DeploymentSpec(
            replicas=replicas,
            selector=client.V1LabelSelector(match_labels=labels),
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(labels=labels),
                spec=client.V1PodSpec(
                    containers=[
                        client.V1Container(
                            name="main",
                            image="registry.k8s.io/pause:3.10",
                            resources=client.V1ResourceRequirements(
                                requests={"cpu": "100m", "memory": "64Mi"}
                            ),
                        )
                    ]
                ),
            ),
        ),
    )


def test_api_server_reports_pinned_version(
    cluster: localcluster.Cluster, api_client: client.ApiClient
) -> None:
    info = client.VersionApi(api_client).get_code()
    if cluster.use_existing:
        pytest.skip(f"existing cluster runs {info.git_version}")
    assert info.git_version == localcluster.KUBERNETES_VERSION
    assert info.git_tree_state == "clean"
    assert (info.major, info.minor) == ("1", localcluster.KUBERNETES_VERSION.split(".")[1])


def test_both_fake_nodes_are_ready_and_schedulable(
    cluster: localcluster.Cluster, api_client: client.ApiClient
) -> None:
    if cluster.use_existing:
        pytest.skip("an existing cluster has its own nodes")
    nodes = {n.metadata.name: n for n in client.CoreV1Api(api_client).list_node().items}
    assert set(localcluster.NODE_NAMES) <= set(nodes)
    for name in localcluster.NODE_NAMES:
        node = nodes[name]
        ready = {c.type: c.status for c in node.status.conditions}["Ready"]
        assert ready == "True", name
        assert not node.spec.taints, name
        assert node.metadata.labels["type"] == "kwok"
        assert node.status.allocatable["pods"] == "110"


def test_deployment_gets_ready_pods_on_fake_nodes(
    api_client: client.ApiClient, namespace: str
) -> None:
    apps = client.AppsV1Api(api_client)
    apps.create_namespaced_deployment(namespace, _deployment("web", replicas=2))

    def ready_replicas() -> int | None:
        status = apps.read_namespaced_deployment_status("web", namespace).status
        return status.ready_replicas if status.ready_replicas == 2 else None

    eventually(ready_replicas, what="2 ready replicas of deployment web")
    pods = client.CoreV1Api(api_client).list_namespaced_pod(namespace, label_selector="app=web")
    assert len(pods.items) == 2
    for pod in pods.items:
        assert pod.status.phase == "Running"
        assert pod.status.pod_ip
        assert pod.spec.node_name in localcluster.NODE_NAMES


def test_deleting_a_deployment_garbage_collects_its_replicaset_and_pods(
    api_client: client.ApiClient, namespace: str
) -> None:
    apps = client.AppsV1Api(api_client)
    core = client.CoreV1Api(api_client)
    apps.create_namespaced_deployment(namespace, _deployment("doomed", replicas=2))
    replicasets = eventually(
        lambda: apps.list_namespaced_replica_set(namespace, label_selector="app=doomed").items,
        what="the deployment's ReplicaSet",
    )
    owner = replicasets[0].metadata.owner_references[0]
    assert (owner.kind, owner.name) == ("Deployment", "doomed")
    eventually(
        lambda: len(core.list_namespaced_pod(namespace, label_selector="app=doomed").items) == 2,
        what="2 pods",
    )

    # Background propagation: the API deletes the Deployment, the garbage collector the rest.
    apps.delete_namespaced_deployment(
        "doomed", namespace, body=client.V1DeleteOptions(propagation_policy="Background")
    )
    eventually(
        lambda: not apps.list_namespaced_replica_set(namespace, label_selector="app=doomed").items,
        what="the ReplicaSet to be garbage-collected",
    )
    eventually(
        lambda: not core.list_namespaced_pod(namespace, label_selector="app=doomed").items,
        what="the pods to be garbage-collected and removed",
    )


def test_hpa_v2_is_accepted_and_picked_up_by_the_controller(
    api_client: client.ApiClient, namespace: str
) -> None:
    client.AppsV1Api(api_client).create_namespaced_deployment(
        namespace, _deployment("scaled", replicas=1)
    )
    autoscaling = client.AutoscalingV2Api(api_client)
    autoscaling.create_namespaced_horizontal_pod_autoscaler(
        namespace,
        client.V2HorizontalPodAutoscaler(
            metadata=client.V1ObjectMeta(name="scaled"),
            spec=client.V2HorizontalPodAutoscalerSpec(
                scale_target_ref=client.V2CrossVersionObjectReference(
                    api_version="apps/v1", kind="Deployment", name="scaled"
                ),
                min_replicas=1,
                max_replicas=3,
                metrics=[
                    client.V2MetricSpec(
                        type="Resource",
                        resource=client.V2ResourceMetricSource(
                            name="cpu",
                            target=client.V2MetricTarget(
                                type="Utilization", average_utilization=50
                            ),
                        ),
                    )
                ],
            ),
        ),
    )
    hpa = autoscaling.read_namespaced_horizontal_pod_autoscaler("scaled", namespace)
    assert hpa.spec.max_replicas == 3
    assert hpa.spec.metrics[0].resource.target.average_utilization == 50

    # The controller (5 s sync here) reports conditions even without a metrics API.
    conditions = eventually(
        lambda: (
            autoscaling.read_namespaced_horizontal_pod_autoscaler_status(
                "scaled", namespace
            ).status.conditions
        ),
        timeout=60,
        what="HPA status conditions from the controller",
    )
    assert "AbleToScale" in {c.type for c in conditions}

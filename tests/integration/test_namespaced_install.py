"""The least-privilege install (manifests/namespaced/): the operator holds Roles in the
namespaces it watches and nothing cluster-wide, and works with that alone."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from kubernetes import client

import localcluster

from .operator_support import (
    OPERATOR_NAMESPACE,
    ROOT,
    Models,
    apply_yaml,
    children,
    crd_installed,  # noqa: F401 - fixture
    ensure_operator_namespace,
    running_operator,
    write_token_kubeconfig,
)

SA = "modeldeploy-operator-namespaced"
MODEL = {"uri": "file:///opt/models/iris/model.joblib", "version": "1"}


def _namespaced_rbac(cluster: localcluster.Cluster, namespace: str) -> list[dict[str, Any]]:
    """The overlay's ServiceAccount and Roles, for ``namespace`` and a ServiceAccount of its
    own (the cluster-wide install's account may be bound to the ClusterRole already)."""
    rendered = cluster.kubectl("kustomize", str(ROOT / "manifests" / "namespaced")).stdout
    docs = []
    for doc in yaml.safe_load_all(rendered):
        if doc["kind"] not in ("ServiceAccount", "Role", "RoleBinding"):
            continue
        assert not doc["kind"].startswith("Cluster")
        if doc["kind"] == "ServiceAccount":
            doc["metadata"]["name"] = SA
        if doc["kind"] == "RoleBinding":
            doc["subjects"][0]["name"] = SA
        if doc["metadata"].get("namespace") == "models":
            doc["metadata"]["namespace"] = namespace
        docs.append(doc)
    return docs


def test_the_namespaced_install_reconciles_with_roles_only(
    crd_installed: None,  # noqa: F811 - fixture
    cluster: localcluster.Cluster,
    api_client: client.ApiClient,
    namespace: str,
    tmp_path: Path,
) -> None:
    ensure_operator_namespace(cluster)
    apply_yaml(cluster, yaml.safe_dump_all(_namespaced_rbac(cluster, namespace)))
    kubeconfig = write_token_kubeconfig(cluster, SA, tmp_path / "kubeconfig")
    # Nothing cluster-wide: what the cluster-wide install may do, this one may not.
    review = client.AuthorizationV1Api(api_client)
    for verb, resource, group in (("list", "pods", ""), ("create", "deployments", "apps")):
        answer = review.create_subject_access_review(
            {
                "spec": {
                    "user": f"system:serviceaccount:{OPERATOR_NAMESPACE}:{SA}",
                    "resourceAttributes": {"verb": verb, "resource": resource, "group": group},
                }
            }
        )
        assert not answer.status.allowed, f"{verb} {resource} cluster-wide"

    models = Models(api_client, namespace)
    with running_operator(kubeconfig, namespaces=(namespace,)) as runner:
        models.create("scoped", {"model": MODEL, "replicas": 2})
        body = models.wait_condition("scoped", "Ready", timeout=60)
        assert body["status"]["observedGeneration"] == body["metadata"]["generation"]
        assert {
            kind: len(items) for kind, items in children(api_client, namespace, "scoped").items()
        } == {
            "Deployment": 1,
            "Service": 1,
            "HorizontalPodAutoscaler": 0,
            "PodDisruptionBudget": 1,
            "NetworkPolicy": 1,
        }
    assert "Forbidden" not in runner.output, runner.output[-3000:]

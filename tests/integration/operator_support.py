"""Fixtures and helpers to run the operator in-process against the session's real cluster.

The operator runs as its own ServiceAccount with the ClusterRole from ``manifests/base/rbac.yaml``
(a kubeconfig holding a TokenRequest token), so every integration test also proves that the
RBAC grants what the operator uses.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml
from kopf.testing import KopfRunner
from kubernetes import client
from kubernetes.client.exceptions import ApiException

import localcluster
from modeldeploy import api, handlers
from modeldeploy.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
SERVER_IMAGE = "modeldeploy/modelserver:test"
OPERATOR_NAMESPACE = "modeldeploy-system"
OPERATOR_SA = "modeldeploy-operator"

T = TypeVar("T")


@contextlib.contextmanager
def fresh_namespace(api_client: client.ApiClient, test_name: str) -> Iterator[str]:
    """A fresh namespace named after the test; deleted afterwards (without waiting)."""
    slug = re.sub(r"[^a-z0-9-]+", "-", test_name.lower()).strip("-")[:40].strip("-")
    name = f"{slug}-{uuid.uuid4().hex[:6]}"
    core = client.CoreV1Api(api_client)
    core.create_namespace(
        client.V1Namespace(
            metadata=client.V1ObjectMeta(name=name, labels={"localcluster/test": "true"})
        )
    )
    yield name
    try:
        core.delete_namespace(name)
    except ApiException as err:
        if err.status != 404:
            raise


def wait_for(
    what: str, probe: Callable[[], T | None], timeout: float = 30.0, interval: float = 0.2
) -> T:
    """Poll ``probe`` until it returns something truthy; fail with ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def apply_yaml(cluster: localcluster.Cluster, text: str, namespace: str | None = None) -> str:
    args = ["apply", "--server-side", "--field-manager=tests", "-f", "-"]
    if namespace:
        args = ["-n", namespace, *args]
    return cluster.kubectl(*args, input=text).stdout


def install_crd(cluster: localcluster.Cluster) -> None:
    """The generated CRD from crds/, applied and Established."""
    apply_yaml(
        cluster, (ROOT / "crds" / "serving.modeldeploy.io_modeldeployments.yaml").read_text()
    )
    cluster.kubectl(
        "wait", "--for=condition=Established", f"crd/{api.PLURAL}.{api.GROUP}", "--timeout=60s"
    )


def ensure_operator_namespace(cluster: localcluster.Cluster) -> None:
    namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": OPERATOR_NAMESPACE}}
    apply_yaml(cluster, yaml.safe_dump(namespace))


def write_operator_kubeconfig(cluster: localcluster.Cluster, path: Path) -> Path:
    """Install manifests/base/rbac*.yaml; write a kubeconfig with a token of the operator's SA."""
    ensure_operator_namespace(cluster)
    apply_yaml(cluster, (ROOT / "manifests" / "base" / "rbac.yaml").read_text())
    apply_yaml(cluster, (ROOT / "manifests" / "base" / "rbac-auth.yaml").read_text())
    return write_token_kubeconfig(cluster, OPERATOR_SA, path)


def write_token_kubeconfig(cluster: localcluster.Cluster, account: str, path: Path) -> Path:
    """A kubeconfig holding a token of ServiceAccount ``account`` of the operator's namespace."""
    token = cluster.kubectl(
        "create", "token", account, "-n", OPERATOR_NAMESPACE, "--duration=4h"
    ).stdout.strip()
    admin = yaml.safe_load(cluster.kubeconfig.read_text())
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "local", "cluster": admin["clusters"][0]["cluster"]}],
        "users": [{"name": "operator", "user": {"token": token}}],
        "contexts": [{"name": "operator", "context": {"cluster": "local", "user": "operator"}}],
        "current-context": "operator",
    }
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


@pytest.fixture(scope="session")
def crd_installed(cluster: localcluster.Cluster) -> None:
    install_crd(cluster)


@pytest.fixture(scope="session")
def operator_kubeconfig(
    cluster: localcluster.Cluster, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    return write_operator_kubeconfig(cluster, tmp_path_factory.mktemp("operator") / "kubeconfig")


@contextlib.contextmanager
def running_operator(
    kubeconfig: Path, server_image: str = SERVER_IMAGE, namespaces: tuple[str, ...] = ()
) -> Iterator[KopfRunner]:
    """The operator in-process (kopf's KopfRunner), authenticated as its ServiceAccount;
    watching ``namespaces`` only when given (as ``--namespace``), else the whole cluster."""
    old = os.environ.get("KUBECONFIG")
    os.environ["KUBECONFIG"] = str(kubeconfig)
    handlers.configure(
        Settings(server_image=server_image, metrics_port=0, health_port=0, namespaces=namespaces)
    )
    scope = [f"--namespace={ns}" for ns in namespaces] or ["--all-namespaces"]
    try:
        with KopfRunner(
            ["run", "--standalone", *scope, "-m", "modeldeploy.handlers"],
            timeout=60,
        ) as runner:
            time.sleep(1.0)  # let the watches start
            yield runner
    finally:
        if old is None:
            os.environ.pop("KUBECONFIG", None)
        else:
            os.environ["KUBECONFIG"] = old
    assert runner.exception is None, runner.output


@pytest.fixture(scope="module")
def operator(crd_installed: None, operator_kubeconfig: Path) -> Iterator[KopfRunner]:
    """One operator per test module."""
    with running_operator(operator_kubeconfig) as runner:
        yield runner


class Models:
    """ModelDeployment access for one namespace, as a user would with kubectl."""

    def __init__(self, api_client: client.ApiClient, namespace: str):
        self.custom = client.CustomObjectsApi(api_client)
        self.apps = client.AppsV1Api(api_client)
        self.core = client.CoreV1Api(api_client)
        self.namespace = namespace

    def create(self, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        body = {
            "apiVersion": api.API_VERSION,
            "kind": api.KIND,
            "metadata": {"name": name},
            "spec": spec,
        }
        result: dict[str, Any] = self.custom.create_namespaced_custom_object(
            api.GROUP, api.VERSION, self.namespace, api.PLURAL, body
        )
        return result

    def get(self, name: str) -> dict[str, Any]:
        result: dict[str, Any] = self.custom.get_namespaced_custom_object(
            api.GROUP, api.VERSION, self.namespace, api.PLURAL, name
        )
        return result

    def patch_spec(self, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = self.custom.patch_namespaced_custom_object(
            api.GROUP, api.VERSION, self.namespace, api.PLURAL, name, {"spec": spec}
        )
        return result

    def delete(self, name: str) -> None:
        self.custom.delete_namespaced_custom_object(
            api.GROUP, api.VERSION, self.namespace, api.PLURAL, name
        )

    @staticmethod
    def current_condition(body: dict[str, Any], type_: str) -> dict[str, Any] | None:
        """The condition ``type_`` if it describes the resource's current generation."""
        for condition in (body.get("status") or {}).get("conditions") or []:
            if (
                condition["type"] == type_
                and condition.get("observedGeneration") == body["metadata"]["generation"]
            ):
                return dict(condition)
        return None

    def condition(self, name: str, type_: str) -> dict[str, Any] | None:
        return self.current_condition(self.get(name), type_)

    def wait_condition(
        self,
        name: str,
        type_: str,
        status: str = "True",
        reason: str | None = None,
        timeout: float = 30,
    ) -> dict[str, Any]:
        """The resource once ``type_`` has ``status`` (and ``reason``) for this generation."""

        def probe() -> dict[str, Any] | None:
            body = self.get(name)
            condition = self.current_condition(body, type_)
            if (
                condition
                and condition["status"] == status
                and reason in (None, condition["reason"])
            ):
                return body
            return None

        return wait_for(f"{name} {type_}={status} {reason or ''}", probe, timeout=timeout)

    def deployment(self, name: str) -> client.V1Deployment | None:
        try:
            return self.apps.read_namespaced_deployment(name, self.namespace)
        except ApiException as error:
            if error.status == 404:
                return None
            raise


def children(api_client: client.ApiClient, namespace: str, name: str) -> dict[str, list[Any]]:
    """The objects of each child kind labelled as belonging to ModelDeployment ``name``."""
    selector = f"app.kubernetes.io/instance={name}"
    return {
        "Deployment": client.AppsV1Api(api_client)
        .list_namespaced_deployment(namespace, label_selector=selector)
        .items,
        "Service": client.CoreV1Api(api_client)
        .list_namespaced_service(namespace, label_selector=selector)
        .items,
        "HorizontalPodAutoscaler": client.AutoscalingV2Api(api_client)
        .list_namespaced_horizontal_pod_autoscaler(namespace, label_selector=selector)
        .items,
        "NetworkPolicy": client.NetworkingV1Api(api_client)
        .list_namespaced_network_policy(namespace, label_selector=selector)
        .items,
        "PodDisruptionBudget": client.PolicyV1Api(api_client)
        .list_namespaced_pod_disruption_budget(namespace, label_selector=selector)
        .items,
    }

"""The operator installed as users install it: `kubectl apply -k manifests/`, running as pods.

The operator image is built from `operator/Dockerfile` (buildah, on the local Debian base) and
runs under the Deployment, ServiceAccount and RBAC of `manifests/`: in the namespace that
manifest puts under Pod Security `restricted`, with the security context it sets (non-root,
read-only root filesystem, no capabilities), reaching the API server in-cluster through the
`kubernetes` Service with its ServiceAccount token. One adjustment, as a user's overlay would
make it: it watches only the test's namespace, so it is the only operator reconciling what
the test creates (this module has no in-process operator). Two replicas run; the Lease
``modeldeploy-operator`` says which one leads.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

import localcluster

from .support import ROOT, Models, http_json, wait_for, wait_routed

SYSTEM = "modeldeploy-system"
OPERATOR = "modeldeploy-operator"
SELECTOR = "app.kubernetes.io/name=modeldeploy,app.kubernetes.io/component=operator"
REPLICAS = 2


@pytest.fixture
def installed(
    cluster: localcluster.Cluster, api_client: client.ApiClient, namespace: str
) -> Iterator[list[client.V1Pod]]:
    """The manifests applied, adjusted for this cluster; yields the running operator pods."""
    docs = list(yaml.safe_load_all(cluster.kubectl("kustomize", str(ROOT / "manifests")).stdout))
    (deployment,) = [d for d in docs if d["kind"] == "Deployment"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    (watched,) = [e for e in container["env"] if e["name"] == "MODELDEPLOY_NAMESPACES"]
    watched["value"] = namespace
    cluster.kubectl(
        "apply", "--server-side", "--field-manager=e2e", "-f", "-", input=yaml.safe_dump_all(docs)
    )
    apps, core = client.AppsV1Api(api_client), client.CoreV1Api(api_client)
    selector = SELECTOR

    def running() -> list[client.V1Pod] | None:
        dep = apps.read_namespaced_deployment(OPERATOR, SYSTEM)
        if dep.status.observed_generation != dep.metadata.generation:
            return None
        pods = _live_pods(core)
        ready = [
            pod
            for pod in pods
            if pod.status.container_statuses and pod.status.container_statuses[0].ready
        ]
        return ready if len(ready) == REPLICAS == len(pods) else None

    try:
        try:
            pods = wait_for("the operator pods running", running, timeout=180)
        except AssertionError as error:
            raise AssertionError(f"{error}\n{_describe(core, selector)}") from None
        yield pods
    finally:
        try:
            apps.delete_namespaced_deployment(OPERATOR, SYSTEM)
        except ApiException as error:
            if error.status != 404:
                raise
        wait_for(
            "the operator pod gone",
            lambda: not core.list_namespaced_pod(SYSTEM, label_selector=selector).items,
            timeout=60,
        )


def _live_pods(core: client.CoreV1Api) -> list[client.V1Pod]:
    return [
        pod
        for pod in core.list_namespaced_pod(SYSTEM, label_selector=SELECTOR).items
        if pod.metadata.deletion_timestamp is None
    ]


def _holder(api_client: client.ApiClient) -> str | None:
    """The Lease's holder: ``modeldeploy@<pod>_<suffix>``, unique per process."""
    try:
        lease = client.CoordinationV1Api(api_client).read_namespaced_lease(OPERATOR, SYSTEM)
    except ApiException:
        return None
    holder: str | None = lease.spec.holder_identity
    return holder


def _leader(api_client: client.ApiClient) -> str | None:
    """Name of the pod holding the Lease."""
    holder = _holder(api_client) or ""
    return holder.removeprefix("modeldeploy@").rpartition("_")[0] or None


def _sigkill(pod: client.V1Pod) -> int:
    """SIGKILL the pod's operator process from the host (the test runs as root beside the real
    node): no SIGTERM, no release of the Lease. The kubelet restarts the container."""
    uid = pod.metadata.uid
    marks = (uid, uid.replace("-", "_"))
    killed = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cgroup = (entry / "cgroup").read_text()
            command = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if any(mark in cgroup for mark in marks) and b"modeldeploy" in command:
            os.kill(int(entry.name), signal.SIGKILL)
            killed += 1
    return killed


def _current_leader(api_client: client.ApiClient) -> str | None:
    """The leader among the running pods (the Lease can still name a pod of an earlier install
    until it expires: a pod killed while it held it releases nothing)."""
    leader = _leader(api_client)
    alive = {pod.metadata.name for pod in _live_pods(client.CoreV1Api(api_client))}
    return leader if leader in alive else None


def _describe(core: client.CoreV1Api, selector: str) -> str:
    """The operator pods' states, events and logs: what a failed start needs explained."""
    lines = []
    for pod in core.list_namespaced_pod(SYSTEM, label_selector=selector).items:
        lines.append(f"pod {pod.metadata.name}: {pod.status.phase} {pod.status.container_statuses}")
        events = core.list_namespaced_event(
            SYSTEM, field_selector=f"involvedObject.name={pod.metadata.name}"
        ).items
        lines += [f"  event {e.reason}: {e.message}" for e in events]
        try:
            lines.append(core.read_namespaced_pod_log(pod.metadata.name, SYSTEM, tail_lines=40))
        except ApiException as error:
            lines.append(f"  no log: {error.reason}")
    return "\n".join(lines) or "no operator pod"


def test_the_operator_from_manifests_runs_restricted_and_serves_a_model(
    installed: list[client.V1Pod], api_client: client.ApiClient, namespace: str
) -> None:
    leader = wait_for("a leader", lambda: _current_leader(api_client), timeout=60)
    (pod,) = [p for p in installed if p.metadata.name == leader]
    (container,) = pod.spec.containers
    assert container.image == "modeldeploy/operator:0.1.0"
    assert pod.spec.service_account_name == OPERATOR
    security = container.security_context
    assert security.read_only_root_filesystem is True
    assert security.run_as_non_root is True
    assert security.allow_privilege_escalation is False
    assert security.capabilities.drop == ["ALL"]
    (status,) = pod.status.container_statuses
    assert status.ready
    assert status.restart_count == 0

    models = Models(api_client, namespace)
    models.create("iris", {"model": {"uri": "file:///opt/models/iris/model.joblib"}})
    body = models.wait_condition("iris", "Ready", timeout=180)
    assert body["status"]["readyReplicas"] == 1
    deployment = models.deployment("iris")
    assert deployment is not None
    # One writer besides the Deployment controller: the operator (a create, or its applies).
    writers = {f.manager for f in deployment.metadata.managed_fields}
    assert writers - {"kube-controller-manager"} == {"modeldeploy"}, writers

    base = f"http://{models.cluster_ip('iris')}"
    wait_routed(f"{base}/v2/models/iris/ready")
    status_code, answer = http_json(
        f"{base}/v1/models/iris:predict", {"instances": [[5.1, 3.5, 1.4, 0.2]]}
    )
    assert status_code == 200, answer
    assert answer["predictions"] == [0]

    logs = client.CoreV1Api(api_client).read_namespaced_pod_log(pod.metadata.name, SYSTEM)
    assert f"reconciled {namespace}/iris" in logs
    (status,) = (
        client.CoreV1Api(api_client)
        .read_namespaced_pod(pod.metadata.name, SYSTEM)
        .status.container_statuses
    )
    assert status.restart_count == 0, "the operator restarted while it worked"


def test_killing_the_leader_while_resources_are_created_loses_none(
    installed: list[client.V1Pod], api_client: client.ApiClient, namespace: str
) -> None:
    """SIGKILL of the leader's process mid-creation: another process leads once the Lease
    expires (15 s), every resource becomes Ready, and no child was written by two writers in
    conflicting ways (each Deployment still at generation 1, one field manager besides the
    Deployment controller)."""
    core = client.CoreV1Api(api_client)
    first = wait_for("a leader", lambda: _current_leader(api_client), timeout=60)
    holder = _holder(api_client)
    (leader_pod,) = [p for p in _live_pods(core) if p.metadata.name == first]
    models = Models(api_client, namespace)
    names = [f"burst-{i}" for i in range(6)]
    spec = {
        "model": {"uri": "file:///opt/models/iris/model.joblib"},
        "resources": {"requests": {"cpu": "10m", "memory": "64Mi"}},
    }
    for name in names[:3]:
        models.create(name, spec)
    assert _sigkill(leader_pod) >= 1, "the leader's process was not found on the host"
    killed = time.monotonic()
    for name in names[3:]:
        models.create(name, spec)
    second = wait_for(
        "a new leader",
        lambda: (now := _holder(api_client)) != holder and _current_leader(api_client) and now,
        timeout=60,
    )
    took = time.monotonic() - killed
    print(f"new leader {second} {took:.1f}s after SIGKILL of {holder}")
    assert took < 15 + 5, "the standby leads within the lease duration"
    for name in names:
        models.wait_condition(name, "Ready", timeout=240)
    for name in names:
        deployment = models.deployment(name)
        assert deployment is not None
        assert deployment.metadata.generation == 1, f"{name} rewritten"
        writers = {f.manager for f in deployment.metadata.managed_fields}
        assert writers - {"kube-controller-manager"} == {"modeldeploy"}, writers
        (ref,) = deployment.metadata.owner_references
        assert ref.uid == models.get(name)["metadata"]["uid"]

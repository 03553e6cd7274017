"""The reconciler alone (no kopf, no watch), as the operator's ServiceAccount, to stage what a
watch can miss."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

from kubernetes import client, config

from modeldeploy import render
from modeldeploy.controller import Controller
from modeldeploy.kube import Kube
from modeldeploy.reconcile import Reconciler
from modeldeploy.settings import Settings

from .operator_support import (
    SERVER_IMAGE,
    Models,
    children,
    crd_installed,  # noqa: F401 - fixture
    operator_kubeconfig,  # noqa: F401 - fixture
    wait_for,
)

FILE_MODEL = {"uri": "file:///opt/models/iris/model.joblib", "version": "1"}
SCALED = {"minReplicas": 2, "maxReplicas": 4, "targetCPUUtilizationPercentage": 70}


def _reconciler(kubeconfig: Path, kube_class: type[Kube] = Kube) -> Reconciler:
    configuration = client.Configuration()
    config.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration)
    settings = Settings(server_image=SERVER_IMAGE, metrics_port=0, health_port=0)
    return Reconciler(kube_class(settings, configuration), settings)


def test_a_missed_deletion_never_lets_the_operator_take_over_a_users_object(
    crd_installed: None,  # noqa: F811 - fixture
    operator_kubeconfig: Path,  # noqa: F811 - fixture
    api_client: client.ApiClient,
    namespace: str,
) -> None:
    models = Models(api_client, namespace)
    reconciler = _reconciler(operator_kubeconfig)
    models.create("stale", {"model": FILE_MODEL, "replicas": 1})
    first = reconciler.reconcile(models.get("stale"))
    assert "Service" in first.changed

    # The DELETED event of the operator's Service is missed (a watch restart), and a user's
    # Service of the same name appears in between.
    models.core.delete_namespaced_service("stale", namespace)
    models.core.create_namespaced_service(
        namespace,
        client.V1Service(
            metadata=client.V1ObjectMeta(name="stale", labels={"team": "web"}),
            spec=client.V1ServiceSpec(
                selector={"app": "web"}, ports=[client.V1ServicePort(port=80, target_port=8080)]
            ),
        ),
    )

    def untouched() -> None:
        service = models.core.read_namespaced_service("stale", namespace)
        assert service.spec.selector == {"app": "web"}
        assert not service.metadata.owner_references
        assert service.metadata.labels == {"team": "web"}

    # A pass from memory alone writes nothing it has not checked...
    fast = reconciler.reconcile(models.get("stale"), full=False)
    assert "Service" not in fast.changed
    untouched()
    # ...and the resync reads the API server, finds the name taken and refuses it.
    resync = reconciler.reconcile(models.get("stale"), full=True)
    assert resync.name_conflict
    assert resync.changed == []
    untouched()
    stalled = models.condition("stale", "Stalled")
    assert stalled is not None
    assert (stalled["status"], stalled["reason"]) == ("True", "NameConflict")
    reconciler.kube.close()


def test_an_idle_resource_costs_no_write(
    crd_installed: None,  # noqa: F811 - fixture
    operator_kubeconfig: Path,  # noqa: F811 - fixture
    api_client: client.ApiClient,
    namespace: str,
) -> None:
    """A resync of a resource that matches its spec reads, and writes nothing."""
    models = Models(api_client, namespace)
    reconciler = _reconciler(operator_kubeconfig)
    models.create("idle", {"model": FILE_MODEL, "replicas": 2})
    reconciler.reconcile(models.get("idle"))
    wait_for(
        "the rollout",
        lambda: (d := models.deployment("idle")) is not None and d.status.available_replicas == 2,
    )
    reconciler.reconcile(models.get("idle"))  # status catches up with the rollout
    versions = {
        kind: [item.metadata.resource_version for item in items]
        for kind, items in _children(api_client, namespace).items()
    }
    for _ in range(3):
        outcome = reconciler.reconcile(models.get("idle"), full=True)
        assert not outcome.did_something, outcome
    assert versions == {
        kind: [item.metadata.resource_version for item in items]
        for kind, items in _children(api_client, namespace).items()
    }
    reconciler.kube.close()


def _children(api_client: client.ApiClient, namespace: str) -> dict[str, list[object]]:
    return children(api_client, namespace, "idle")


def test_a_resync_forgets_a_resource_whose_deletion_the_watch_missed(
    crd_installed: None,  # noqa: F811 - fixture
    operator_kubeconfig: Path,  # noqa: F811 - fixture
    api_client: client.ApiClient,
    namespace: str,
) -> None:
    """kopf re-lists after a watch restart; it does not replay deletions. The resync's fresh
    read of the resource is what lets the operator forget it (the 1,000-cycle churn benchmark
    at 2,000 resources left 6 resources remembered before this)."""
    models = Models(api_client, namespace)
    models.create("ghost", {"model": FILE_MODEL, "replicas": 0})

    async def scenario() -> dict[str, int]:
        controller = Controller(_reconciler(operator_kubeconfig), workers=1, resync_seconds=0.5)
        controller.start()
        controller.parent_event(None, models.get("ghost"))  # as the first listing hands it
        while controller.report_memory()["phases"] < 1:
            await asyncio.sleep(0.1)
        models.delete("ghost")  # and its DELETED event is never delivered
        deadline = time.monotonic() + 20
        while controller.report_memory()["parents"] and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        memory = controller.report_memory()
        await controller.stop()
        controller.reconciler.close()
        return memory

    memory = asyncio.run(scenario())
    assert memory["parents"] == 0
    assert memory["phases"] == memory["written"] == memory["applied"] == memory["locks"] == 0


class _RecordingKube(Kube):
    """The real client, noting the verb and kind of every request in the order they start."""

    def __init__(self, settings: Settings, configuration: client.Configuration):
        super().__init__(settings, configuration)
        self.requests: list[tuple[str, str]] = []
        self._guard = threading.Lock()

    def _call(self, method: str, path: str, *, kind: str, **kwargs: Any) -> dict[str, Any]:
        with self._guard:
            self.requests.append((method, kind))
        return super()._call(method, path, kind=kind, **kwargs)


def _recording(kubeconfig: Path) -> tuple[Reconciler, _RecordingKube]:
    """A reconciler whose client notes every request."""
    reconciler = _reconciler(kubeconfig, _RecordingKube)
    assert isinstance(reconciler.kube, _RecordingKube)
    return reconciler, reconciler.kube


def test_a_full_pass_reads_every_child_before_its_first_write(
    crd_installed: None,  # noqa: F811 - fixture
    operator_kubeconfig: Path,  # noqa: F811 - fixture
    api_client: client.ApiClient,
    namespace: str,
) -> None:
    """The children to write and those that must go are read together, so a full pass costs
    one round trip of reads, one of writes and the status write (not a read per unwanted kind
    after the writes); the unwanted ones are still removed in the same pass."""
    reconciler, kube = _recording(operator_kubeconfig)
    models = Models(api_client, namespace)
    models.create("first", {"model": FILE_MODEL, "autoscaling": SCALED})
    reconciler.reconcile(models.get("first"))
    autoscaling = client.AutoscalingV2Api(api_client)
    assert autoscaling.read_namespaced_horizontal_pod_autoscaler("first", namespace)

    models.patch_spec("first", {"autoscaling": None, "replicas": 1})
    kube.requests.clear()
    outcome = reconciler.reconcile(models.get("first"), inspect_pods=False)
    assert "HorizontalPodAutoscaler" in outcome.deleted
    verbs = [verb for verb, _ in kube.requests]
    first_write = next(i for i, verb in enumerate(verbs) if verb != "GET")
    reads = {kind for verb, kind in kube.requests[:first_write] if verb == "GET"}
    assert reads == {kind.kind for kind in render.CHILD_KINDS}, kube.requests
    assert all(verb != "GET" for verb in verbs[first_write:]), kube.requests
    reconciler.close()


def test_a_new_resources_first_pass_reads_nothing_and_writes_status_once(
    crd_installed: None,  # noqa: F811 - fixture
    operator_kubeconfig: Path,  # noqa: F811 - fixture
    api_client: client.ApiClient,
    namespace: str,
) -> None:
    """Nothing can be controlled by a resource no pass has seen: its first pass creates its
    children (a create fails if the name is taken, so nothing is read first) and writes its
    status once: four requests, where the pass before the cache-first writes sent eight."""
    reconciler, kube = _recording(operator_kubeconfig)
    models = Models(api_client, namespace)
    models.create("fresh", {"model": FILE_MODEL, "replicas": 1})
    outcome = reconciler.reconcile(models.get("fresh"), inspect_pods=False)
    assert sorted(outcome.changed) == ["Deployment", "NetworkPolicy", "Service"]
    assert sorted(kube.requests) == [
        ("PATCH", "ModelDeployment"),
        ("POST", "Deployment"),
        ("POST", "NetworkPolicy"),
        ("POST", "Service"),
    ], kube.requests
    reconciler.close()


def test_a_stale_cache_entry_is_caught_by_the_writes_precondition_not_by_a_read(
    crd_installed: None,  # noqa: F811 - fixture
    operator_kubeconfig: Path,  # noqa: F811 - fixture
    api_client: client.ApiClient,
    namespace: str,
) -> None:
    """The operator's Service is replaced by a user's behind the cache (the watch delivered
    neither event). A spec change that rewrites the Service applies it with the uid the cache
    holds: the API server refuses it, the Service is read once, found to be someone else's and
    left alone. The other way round, a child deleted behind the cache is created again."""
    reconciler, kube = _recording(operator_kubeconfig)
    models = Models(api_client, namespace)
    tls = {"secretName": "swapped-cert"}  # changes the Service's port: a Service write
    models.create("swapped", {"model": FILE_MODEL, "replicas": 1, "tls": tls})
    reconciler.reconcile(models.get("swapped"), full=False, inspect_pods=False)
    # Applied once since its create, so its next write is an apply alone (no ownership patch,
    # whose own uid test would catch the swap first).
    models.patch_spec("swapped", {"tls": None})
    reconciler.reconcile(models.get("swapped"), full=False, inspect_pods=False)
    models.core.delete_namespaced_service("swapped", namespace)
    models.core.create_namespaced_service(
        namespace,
        client.V1Service(
            metadata=client.V1ObjectMeta(name="swapped", labels={"team": "web"}),
            spec=client.V1ServiceSpec(
                selector={"app": "web"}, ports=[client.V1ServicePort(port=80, target_port=8080)]
            ),
        ),
    )
    # The NetworkPolicy goes too, unseen: it must come back.
    client.NetworkingV1Api(api_client).delete_namespaced_network_policy("swapped", namespace)

    models.patch_spec("swapped", {"tls": tls})
    kube.requests.clear()
    outcome = reconciler.reconcile(models.get("swapped"), full=False, inspect_pods=False)
    assert outcome.name_conflict
    service_calls = [verb for verb, kind in kube.requests if kind == "Service"]
    assert service_calls == ["PATCH", "GET"], kube.requests  # the write first, then one read
    service = models.core.read_namespaced_service("swapped", namespace)
    assert service.spec.selector == {"app": "web"}
    assert not service.metadata.owner_references
    stalled = models.condition("swapped", "Stalled")
    assert stalled is not None
    assert (stalled["status"], stalled["reason"]) == ("True", "NameConflict")

    # Nothing in the cache says the NetworkPolicy is gone: the resync's reads do. Once the
    # user's Service is gone too, a full pass creates both again.
    models.core.delete_namespaced_service("swapped", namespace)
    reconciler.reconcile(models.get("swapped"), full=True, inspect_pods=False)
    policy = client.NetworkingV1Api(api_client).read_namespaced_network_policy("swapped", namespace)
    assert policy.metadata.owner_references[0].name == "swapped"
    assert models.core.read_namespaced_service("swapped", namespace).spec.ports[0].port == 443
    reconciler.close()


def _autoscaled_then_not(
    api_client: client.ApiClient, models: Models, reconciler: Reconciler, name: str
) -> client.AutoscalingV2Api:
    """A resource whose HPA the reconciler applied and saw in its watch cache; then its spec
    drops autoscaling (the HPA must go)."""
    models.create(name, {"model": FILE_MODEL, "autoscaling": SCALED})
    reconciler.reconcile(models.get(name), inspect_pods=False)
    autoscaling = client.AutoscalingV2Api(api_client)
    hpa = autoscaling.read_namespaced_horizontal_pod_autoscaler(name, models.namespace)
    cached = api_client.sanitize_for_serialization(hpa)
    reconciler.children.observe({**cached, "kind": "HorizontalPodAutoscaler"})
    models.patch_spec(name, {"autoscaling": None, "replicas": 1})
    return autoscaling


def test_an_unwanted_child_changed_since_the_cache_saw_it_is_read_again_before_deletion(
    crd_installed: None,  # noqa: F811 - fixture
    operator_kubeconfig: Path,  # noqa: F811 - fixture
    api_client: client.ApiClient,
    namespace: str,
) -> None:
    """A pass from the cache deletes an unwanted child with the uid and resourceVersion the
    cache holds as preconditions: a child edited since is read again, and deleted only if this
    resource still controls it."""
    models = Models(api_client, namespace)
    reconciler = _reconciler(operator_kubeconfig)

    autoscaling = _autoscaled_then_not(api_client, models, reconciler, "edited")
    autoscaling.patch_namespaced_horizontal_pod_autoscaler(
        "edited", namespace, {"metadata": {"annotations": {"note": "edited"}}}
    )
    outcome = reconciler.reconcile(models.get("edited"), full=False, inspect_pods=False)
    assert "HorizontalPodAutoscaler" in outcome.deleted
    names = [
        h.metadata.name
        for h in autoscaling.list_namespaced_horizontal_pod_autoscaler(namespace).items
    ]
    assert "edited" not in names

    # A user takes the HPA over (drops the controller reference) before the watch says so.
    autoscaling = _autoscaled_then_not(api_client, models, reconciler, "adopted")
    autoscaling.patch_namespaced_horizontal_pod_autoscaler(
        "adopted", namespace, {"metadata": {"ownerReferences": None}}
    )
    outcome = reconciler.reconcile(models.get("adopted"), full=False, inspect_pods=False)
    assert "HorizontalPodAutoscaler" not in outcome.deleted
    assert autoscaling.read_namespaced_horizontal_pod_autoscaler("adopted", namespace)
    reconciler.close()


def test_a_created_childs_later_apply_removes_what_the_spec_no_longer_sets(
    crd_installed: None,  # noqa: F811 - fixture
    operator_kubeconfig: Path,  # noqa: F811 - fixture
    api_client: client.ApiClient,
    namespace: str,
) -> None:
    """A child made by a create has its fields recorded as an update; its first apply turns
    that record into the apply's own (Kube.own_as_applied), or server-side apply could never
    remove a field the spec stopped setting (here: a CPU limit)."""
    models = Models(api_client, namespace)
    reconciler = _reconciler(operator_kubeconfig)
    limited = {"requests": {"cpu": "10m"}, "limits": {"cpu": "1", "memory": "256Mi"}}
    models.create("shrink", {"model": FILE_MODEL, "replicas": 1, "resources": limited})
    reconciler.reconcile(models.get("shrink"), full=False, inspect_pods=False)

    def limits() -> dict[str, str]:
        deployment = models.deployment("shrink")
        assert deployment is not None
        server = next(c for c in deployment.spec.template.spec.containers if c.name == "server")
        return dict(server.resources.limits or {})

    assert limits() == {"cpu": "1", "memory": "256Mi"}
    models.patch_spec("shrink", {"resources": {"limits": {"cpu": None}}})  # a merge patch
    reconciler.reconcile(models.get("shrink"), full=False, inspect_pods=False)
    assert limits() == {"memory": "256Mi"}
    managers = {
        (entry.manager, entry.operation)
        for entry in models.deployment("shrink").metadata.managed_fields  # type: ignore[union-attr]
    }
    assert ("modeldeploy", "Apply") in managers
    assert ("modeldeploy", "Update") not in managers
    reconciler.close()


def test_a_resync_deletes_the_token_review_bindings_no_live_resource_wants(
    crd_installed: None,  # noqa: F811 - fixture
    operator_kubeconfig: Path,  # noqa: F811 - fixture
    api_client: client.ApiClient,
    namespace: str,
) -> None:
    """The ClusterRoleBinding of a resource with auth on is cluster-scoped, so nothing
    garbage-collects it; deleted while no operator ran, its resource leaves it behind. The
    sweep deletes it and keeps the binding of a live resource."""
    models = Models(api_client, namespace)
    reconciler = _reconciler(operator_kubeconfig)
    for name in ("kept", "orphan"):
        models.create(name, {"model": FILE_MODEL, "replicas": 1, "auth": {"mode": "Kubernetes"}})
        reconciler.reconcile(models.get(name), full=False, inspect_pods=False)
    rbac = client.RbacAuthorizationV1Api(api_client)
    binding = f"modeldeploy:{namespace}:orphan"
    assert rbac.read_cluster_role_binding(binding)
    models.delete("orphan")  # and no operator sees it go

    swept = reconciler.sweep_bindings(())  # other tests' orphans go too: only ours count
    assert [name for name in swept if f":{namespace}:" in name] == [binding]
    names = {item.metadata.name for item in rbac.list_cluster_role_binding().items}
    assert binding not in names
    assert f"modeldeploy:{namespace}:kept" in names
    assert not [name for name in reconciler.sweep_bindings(()) if f":{namespace}:" in name]
    reconciler.close()

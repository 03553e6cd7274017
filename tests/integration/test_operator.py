"""The operator against a real API server, controller-manager and scheduler (KWOK nodes).

Each test asserts what a user would check with kubectl.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
import yaml
from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

import localcluster
from modeldeploy import api
from unit.cel_cases import CEL_CASES  # the table the Python twins are tested with

from .operator_support import (
    ROOT,
    SERVER_IMAGE,
    Models,
    children,
    crd_installed,  # noqa: F401 - fixture
    operator,  # noqa: F401 - fixture
    operator_kubeconfig,  # noqa: F401 - fixture
    wait_for,
)

pytestmark = pytest.mark.usefixtures("operator")

FILE_MODEL = {"uri": "file:///opt/models/iris/model.joblib", "version": "1"}
LABELS = {
    "app.kubernetes.io/name": "modelserver",
    "app.kubernetes.io/managed-by": "modeldeploy",
}


@pytest.fixture
def models(api_client: client.ApiClient, namespace: str) -> Models:
    return Models(api_client, namespace)


def _samples() -> list[dict[str, Any]]:
    return [
        yaml.safe_load(path.read_text())
        for path in sorted((ROOT / "manifests" / "samples").glob("*.yaml"))
        if path.stem != "kustomization"
    ]


def test_samples_become_ready_with_every_child_owned_and_labelled(
    cluster: localcluster.Cluster, api_client: client.ApiClient, namespace: str, models: Models
) -> None:
    cluster.kubectl("apply", "-n", namespace, "-k", str(ROOT / "manifests" / "samples"))
    for sample in _samples():
        name = sample["metadata"]["name"]
        body = models.wait_condition(name, "Ready", timeout=60)
        assert body["status"]["observedGeneration"] == body["metadata"]["generation"]
        assert body["status"]["phase"] == "Ready"
        assert body["status"]["url"] == f"http://{name}.{namespace}.svc.cluster.local"
        kids = children(api_client, namespace, name)
        expected = {"Deployment", "Service", "NetworkPolicy", "PodDisruptionBudget"}
        if "autoscaling" in sample["spec"]:
            expected.add("HorizontalPodAutoscaler")
        assert {kind for kind, items in kids.items() if items} == expected, name
        for kind in expected:
            (child,) = kids[kind]
            assert child.metadata.name == name
            assert LABELS.items() <= child.metadata.labels.items(), kind
            (ref,) = child.metadata.owner_references
            assert (ref.kind, ref.name, ref.uid, ref.controller) == (
                "ModelDeployment",
                name,
                body["metadata"]["uid"],
                True,
            )
        deployment = kids["Deployment"][0]
        assert deployment.spec.template.spec.containers[0].image == SERVER_IMAGE
        assert body["status"]["readyReplicas"] == deployment.status.ready_replicas
    waited = cluster.kubectl(
        "wait", "-n", namespace, "--for=condition=Ready", "mdep", "--all", "--timeout=30s"
    )
    assert waited.stdout.count("condition met") == len(_samples())
    table = cluster.kubectl("get", "mdep", "-n", namespace).stdout.splitlines()
    assert table[0].split() == ["NAME", "READY", "REASON", "REPLICAS", "MODEL", "AGE"]
    iris = next(line.split() for line in table if line.startswith("iris "))
    assert iris[1:4] == ["True", "ModelServing", "3/3"]


def test_spec_change_rolls_out_through_reconciling_back_to_ready(
    models: Models, api_client: client.ApiClient, namespace: str
) -> None:
    models.create("roll", {"model": FILE_MODEL, "replicas": 2})
    first = models.wait_condition("roll", "Ready")
    seen: list[tuple[str, str, int]] = []
    stream = watch.Watch()
    models.patch_spec("roll", {"model": {**FILE_MODEL, "version": "2"}})
    for event in stream.stream(
        models.custom.list_namespaced_custom_object,
        api.GROUP,
        api.VERSION,
        namespace,
        api.PLURAL,
        field_selector="metadata.name=roll",
        resource_version=first["metadata"]["resourceVersion"],
        timeout_seconds=30,
    ):
        status = event["object"].get("status") or {}
        conditions = {c["type"]: c["status"] for c in status.get("conditions") or []}
        seen.append(
            (
                conditions.get("Reconciling", "?"),
                conditions.get("Ready", "?"),
                status.get("updatedReplicas", 0),
            )
        )
        if status.get("observedGeneration") == 2 and conditions.get("Ready") == "True":
            stream.stop()
    assert ("True", "False") in {(r, ready) for r, ready, _ in seen}, seen
    assert seen[-1][:2] == ("False", "True")
    final = models.get("roll")
    assert final["status"]["model"]["version"] == "2"
    assert final["status"]["updatedReplicas"] == 2
    deployment = models.deployment("roll")
    assert deployment is not None
    env = {e.name: e.value for e in deployment.spec.template.spec.containers[0].env}
    assert env["MODEL_VERSION"] == "2"


def test_hpa_owns_replicas_and_operator_does_not_overwrite_them(
    models: Models, api_client: client.ApiClient, namespace: str
) -> None:
    models.create("auto", {"model": FILE_MODEL, "replicas": 3})
    models.wait_condition("auto", "Ready")
    # Switching to autoscaling must not drop capacity below the current 3 replicas.
    models.patch_spec(
        "auto", {"replicas": None, "autoscaling": {"minReplicas": 2, "maxReplicas": 6}}
    )
    hpas = client.AutoscalingV2Api(api_client)
    wait_for("HPA", lambda: hpas.list_namespaced_horizontal_pod_autoscaler(namespace).items)
    deployment = models.deployment("auto")
    assert deployment is not None
    assert deployment.spec.replicas == 3
    # A replica count written by someone else (the HPA, or by hand) stays.
    models.apps.patch_namespaced_deployment_scale("auto", namespace, {"spec": {"replicas": 5}})
    time.sleep(3)
    deployment = models.deployment("auto")
    assert deployment is not None
    assert deployment.spec.replicas == 5
    models.wait_condition("auto", "Ready")
    assert models.get("auto")["status"]["desiredReplicas"] == 5
    # Autoscaling off again: the HPA goes and spec.replicas applies.
    models.patch_spec("auto", {"autoscaling": None, "replicas": 2})
    wait_for(
        "HPA deleted", lambda: not hpas.list_namespaced_horizontal_pod_autoscaler(namespace).items
    )
    wait_for(
        "2 replicas", lambda: (d := models.deployment("auto")) is not None and d.spec.replicas == 2
    )
    models.wait_condition("auto", "Ready")


INVALID: list[tuple[dict[str, Any], str]] = [
    ({"model": {"uri": "ftp://host/m.joblib"}}, "spec.model.uri"),
    ({"model": {"uri": "file:///m", "format": "pickle"}}, "spec.model.format"),
    ({"model": {"uri": "file:///m", "digest": "sha256:1234"}}, "spec.model.digest"),
    ({"model": {"uri": "pvc://claim-only"}}, "spec.model.uri"),
    ({"model": {"uri": "s3://b"}}, "spec.model.uri"),
    ({"model": {"uri": "file:///m"}, "replicas": -1}, "spec.replicas"),
    (
        {"model": {"uri": "file:///m"}, "replicas": 2, "autoscaling": {"maxReplicas": 3}},
        "spec.replicas",
    ),
    (
        {"model": {"uri": "file:///m"}, "autoscaling": {"minReplicas": 5, "maxReplicas": 2}},
        "spec.autoscaling.minReplicas",
    ),
    (
        {
            "model": {"uri": "file:///m"},
            "autoscaling": {"maxReplicas": 2, "targetCPUUtilizationPercentage": 0},
        },
        "spec.autoscaling.targetCPUUtilizationPercentage",
    ),
    (
        {"model": {"uri": "file:///m"}, "resources": {"requests": {"cpu": "a lot"}}},
        "spec.resources.requests",
    ),
    (
        {
            "model": {"uri": "file:///m"},
            "resources": {"requests": {"memory": "2Gi"}, "limits": {"memory": "1Gi"}},
        },
        "spec.resources.limits",
    ),
    (
        {"model": {"uri": "file:///m"}, "resources": {"requests": {"gpu": 1}}},
        "spec.resources.requests",
    ),
    (
        {
            "model": {"uri": "file:///m"},
            "autoscaling": {"maxReplicas": 3},
            "resources": {"requests": {"memory": "1Gi"}},
        },
        "spec.resources",
    ),
    (
        {"model": {"uri": "file:///m"}, "rollout": {"maxSurge": 0, "maxUnavailable": 0}},
        "spec.rollout.maxSurge",
    ),
    (
        {"model": {"uri": "file:///m"}, "rollout": {"progressDeadlineSeconds": 1}},
        "spec.rollout.progressDeadlineSeconds",
    ),
    (
        {"model": {"uri": "file:///m"}, "networkPolicy": {"allowFrom": [{}]}},
        "spec.networkPolicy.allowFrom[0]",
    ),
    ({"model": {"uri": "file:///m", "credentialsSecret": "creds"}}, "spec.model.credentialsSecret"),
    ({"model": {"uri": "file:///m", "trustedTypes": ["a.B"]}}, "spec.model.trustedTypes"),
    ({"replicas": 1}, "spec.model"),
    ({"model": {"uri": "file:///m"}, "replica": 2}, "spec.replica"),
]


@pytest.mark.parametrize(("spec", "field"), INVALID, ids=[f for _, f in INVALID])
def test_api_server_rejects_invalid_specs_naming_the_field(
    models: Models, spec: dict[str, Any], field: str
) -> None:
    body = {
        "apiVersion": api.API_VERSION,
        "kind": api.KIND,
        "metadata": {"name": "bad"},
        "spec": spec,
    }
    with pytest.raises(ApiException) as caught:
        models.custom.create_namespaced_custom_object(
            api.GROUP, api.VERSION, models.namespace, api.PLURAL, body, field_validation="Strict"
        )
    assert caught.value.status == 422 or (
        caught.value.status == 400 and "unknown field" in str(caught.value.body)
    )
    assert field in str(caught.value.body), caught.value.body


@pytest.mark.parametrize(
    ("name", "spec", "message"), [c[1:] for c in CEL_CASES], ids=[c[0] for c in CEL_CASES]
)
def test_api_server_refuses_each_cel_case_with_the_rules_message(
    models: Models, name: str, spec: dict[str, Any], message: str
) -> None:
    """The same table as the Python twins' test: both refuse, with the same message."""
    with pytest.raises(ApiException) as caught:
        models.create(name, spec)
    assert caught.value.status == 422, caught.value.body
    assert message in str(caught.value.body), caught.value.body


def test_name_that_cannot_name_a_service_is_rejected(models: Models) -> None:
    with pytest.raises(ApiException) as caught:
        models.create("Bad.Name", {"model": FILE_MODEL})
    assert caught.value.status == 422


def test_drift_is_corrected_within_seconds(
    models: Models, api_client: client.ApiClient, namespace: str
) -> None:
    models.create("drift", {"model": FILE_MODEL, "replicas": 2})
    models.wait_condition("drift", "Ready")
    core = client.CoreV1Api(api_client)
    uid = core.read_namespaced_service("drift", namespace).metadata.uid
    core.delete_namespaced_service("drift", namespace)

    def service_back() -> bool:
        try:
            return core.read_namespaced_service("drift", namespace).metadata.uid != uid
        except ApiException:
            return False

    wait_for("Service recreated", service_back, timeout=10)

    patch = {
        "spec": {"template": {"spec": {"containers": [{"name": "server", "image": "evil:latest"}]}}}
    }
    models.apps.patch_namespaced_deployment("drift", namespace, patch)
    wait_for(
        "image restored",
        lambda: (
            (d := models.deployment("drift")) is not None
            and d.spec.template.spec.containers[0].image == SERVER_IMAGE
        ),
        timeout=10,
    )
    models.apps.patch_namespaced_deployment_scale("drift", namespace, {"spec": {"replicas": 7}})
    wait_for(
        "replicas restored",
        lambda: (d := models.deployment("drift")) is not None and d.spec.replicas == 2,
        timeout=10,
    )
    models.wait_condition("drift", "Ready")


def test_deleting_the_resource_garbage_collects_every_child(
    models: Models, api_client: client.ApiClient, namespace: str
) -> None:
    models.create("gone", {"model": FILE_MODEL, "autoscaling": {"maxReplicas": 3}})
    models.wait_condition("gone", "Ready")
    assert all(children(api_client, namespace, "gone").values())
    models.delete("gone")
    wait_for(
        "children garbage-collected",
        lambda: not any(children(api_client, namespace, "gone").values()),
        timeout=60,
    )


def test_unschedulable_rollout_is_stalled_after_its_deadline(models: Models) -> None:
    models.create(
        "stuck",
        {
            "model": FILE_MODEL,
            "resources": {"requests": {"cpu": "500"}},  # no node has 500 CPUs
            "rollout": {"progressDeadlineSeconds": 10},
        },
    )
    started = time.monotonic()
    body = models.wait_condition("stuck", "Stalled", reason="ProgressDeadlineExceeded", timeout=45)
    elapsed = time.monotonic() - started
    assert elapsed < 10 + 20, elapsed
    assert body["status"]["phase"] == "Failed"
    ready = next(c for c in body["status"]["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "False"


def test_no_status_churn_after_ready(models: Models) -> None:
    models.create("quiet", {"model": FILE_MODEL, "replicas": 2})
    models.wait_condition("quiet", "Ready")
    time.sleep(2)  # let the last child events settle
    before = models.get("quiet")["metadata"]["resourceVersion"]
    time.sleep(30)
    assert models.get("quiet")["metadata"]["resourceVersion"] == before


def test_suspend_scales_to_zero_and_back(models: Models) -> None:
    models.create("nap", {"model": FILE_MODEL, "replicas": 2})
    models.wait_condition("nap", "Ready")
    models.patch_spec("nap", {"suspend": True})
    body = models.wait_condition("nap", "Ready", status="False", reason="Suspended")
    wait_for("phase Suspended", lambda: models.get("nap")["status"]["phase"] == "Suspended")
    deployment = models.deployment("nap")
    assert deployment is not None
    assert deployment.spec.replicas == 0
    assert body["status"]["replicas"] in (0, 1, 2)
    models.patch_spec("nap", {"suspend": False})
    body = models.wait_condition("nap", "Ready")
    assert body["status"]["readyReplicas"] == 2


def test_kubectl_scale_uses_the_scale_subresource(
    cluster: localcluster.Cluster, models: Models
) -> None:
    models.create("scaly", {"model": FILE_MODEL, "replicas": 1})
    models.wait_condition("scaly", "Ready")
    cluster.kubectl("scale", "-n", models.namespace, "mdep/scaly", "--replicas=3")
    body = models.wait_condition("scaly", "Ready", timeout=30)
    assert body["spec"]["replicas"] == 3
    assert body["status"]["readyReplicas"] == 3
    scale = models.custom.get_namespaced_custom_object_scale(
        api.GROUP, api.VERSION, models.namespace, api.PLURAL, "scaly"
    )
    assert scale["status"]["replicas"] == 3
    assert (
        scale["status"]["selector"]
        == "app.kubernetes.io/instance=scaly,app.kubernetes.io/name=modelserver"
    )


def test_a_refused_child_makes_the_resource_stalled_until_it_can_be_applied(
    models: Models, api_client: client.ApiClient, namespace: str
) -> None:
    core = client.CoreV1Api(api_client)
    quota = {"metadata": {"name": "no-services"}, "spec": {"hard": {"services": "0"}}}
    core.create_namespaced_resource_quota(namespace, quota)
    wait_for(
        "quota observed",
        lambda: core.read_namespaced_resource_quota("no-services", namespace).status.hard,
    )
    models.create("refused", {"model": FILE_MODEL, "replicas": 1})
    body = models.wait_condition("refused", "Stalled", reason="ApplyFailed", timeout=30)
    ready = next(c for c in body["status"]["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "False"
    assert "quota" in ready["message"]
    time.sleep(3)  # child events of the Deployment must not flip it to Ready
    assert models.condition("refused", "Ready")["status"] == "False"  # type: ignore[index]
    core.delete_namespaced_resource_quota("no-services", namespace)
    models.wait_condition("refused", "Ready", timeout=30)


def test_a_name_taken_by_someone_elses_object_is_refused_and_left_untouched(
    api_client: client.ApiClient, namespace: str, models: Models
) -> None:
    """A user's own Service of the same name is not taken over (server-side apply would merge
    into it); once the user deletes it, the operator creates its own without being asked."""
    core = client.CoreV1Api(api_client)
    theirs = client.V1Service(
        metadata=client.V1ObjectMeta(name="taken", labels={"team": "web"}),
        spec=client.V1ServiceSpec(
            selector={"app": "web"}, ports=[client.V1ServicePort(port=80, target_port=8080)]
        ),
    )
    core.create_namespaced_service(namespace, theirs)
    models.create("taken", {"model": FILE_MODEL, "replicas": 1})
    body = models.wait_condition("taken", "Stalled", reason="NameConflict", timeout=30)
    assert body["status"]["phase"] == "Failed"
    ready = models.current_condition(body, "Ready")
    assert ready is not None
    assert ready["status"] == "False"
    assert ready["reason"] == "NameConflict"
    assert f"a Service named taken already exists in namespace {namespace}" in ready["message"]

    service = core.read_namespaced_service("taken", namespace)
    assert service.spec.selector == {"app": "web"}
    assert [(p.port, p.target_port) for p in service.spec.ports] == [(80, 8080)]
    assert service.metadata.labels == {"team": "web"}
    assert not service.metadata.owner_references
    assert models.deployment("taken") is None  # nothing is written before the check passes

    core.delete_namespaced_service("taken", namespace)
    body = models.wait_condition("taken", "Ready", timeout=40)
    (ref,) = core.read_namespaced_service("taken", namespace).metadata.owner_references
    assert ref.uid == body["metadata"]["uid"]


def test_a_deployment_of_the_same_name_is_not_taken_over(
    api_client: client.ApiClient, namespace: str, models: Models
) -> None:
    apps = client.AppsV1Api(api_client)
    labels = {"app": "theirs"}
    apps.create_namespaced_deployment(
        namespace,
        client.V1Deployment(
            metadata=client.V1ObjectMeta(name="theirs"),
            spec=client.V1DeploymentSpec(
                replicas=0,
                selector=client.V1LabelSelector(match_labels=labels),
                template=client.V1PodTemplateSpec(
                    metadata=client.V1ObjectMeta(labels=labels),
                    spec=client.V1PodSpec(
                        containers=[client.V1Container(name="app", image="example.com/app:1")]
                    ),
                ),
            ),
        ),
    )
    models.create("theirs", {"model": FILE_MODEL, "replicas": 1})
    body = models.wait_condition("theirs", "Stalled", reason="NameConflict", timeout=30)
    ready = models.current_condition(body, "Ready")
    assert ready is not None
    assert "a Deployment named theirs already exists" in ready["message"]
    deployment = apps.read_namespaced_deployment("theirs", namespace)
    assert deployment.spec.template.spec.containers[0].image == "example.com/app:1"
    assert not deployment.metadata.owner_references
    assert not client.CoreV1Api(api_client).list_namespaced_service(namespace).items

"""Pure rendering of the children: what a user would check with kubectl get -o yaml."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from modeldeploy import api, render
from modeldeploy.settings import Settings

from .conftest import load_sample, make_body

GOLDEN = Path(__file__).parent / "golden"


def _children(spec: dict[str, Any], settings: Settings) -> dict[str, dict[str, Any]]:
    body = make_body(spec)
    rendered = render.render_children(render.Owner.from_body(body), api.parse_spec(spec), settings)
    return {obj["kind"]: obj for obj in rendered.wanted}


def _server(deployment: dict[str, Any]) -> dict[str, Any]:
    container: dict[str, Any] = deployment["spec"]["template"]["spec"]["containers"][0]
    return container


def _env(container: dict[str, Any]) -> dict[str, str]:
    return {item["name"]: item["value"] for item in container["env"]}


@pytest.mark.parametrize("sample", ["fixed-replicas.yaml", "autoscaled.yaml", "digest-pinned.yaml"])
def test_children_match_golden_yaml(sample: str, settings: Settings) -> None:
    body = load_sample(sample)
    body["metadata"].update(namespace="models", uid="0d9a3c1e-0000-4000-8000-000000000001")
    rendered = render.render_children(
        render.Owner.from_body(body), api.parse_spec(body["spec"]), settings
    )
    text = yaml.safe_dump_all(rendered.wanted, sort_keys=True)
    golden = GOLDEN / sample
    if os.environ.get("UPDATE_GOLDEN"):
        golden.write_text(text)
    assert text == golden.read_text(), (
        f"rendering changed; UPDATE_GOLDEN=1 pytest {__file__} to accept"
    )


def test_every_child_is_owned_labelled_and_named_after_the_resource(settings: Settings) -> None:
    spec = {"model": {"uri": "file:///m"}, "autoscaling": {"maxReplicas": 4}}
    children = _children(spec, settings)
    assert set(children) == {
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "NetworkPolicy",
        "PodDisruptionBudget",
    }
    for obj in children.values():
        meta = obj["metadata"]
        assert meta["name"] == "iris"
        assert meta["namespace"] == "models"
        assert meta["labels"]["app.kubernetes.io/name"] == "modelserver"
        assert meta["labels"]["app.kubernetes.io/instance"] == "iris"
        assert meta["labels"]["app.kubernetes.io/managed-by"] == "modeldeploy"
        (ref,) = meta["ownerReferences"]
        assert ref["kind"] == "ModelDeployment"
        assert ref["controller"] is True
        assert ref["blockOwnerDeletion"] is True


def test_hpa_owns_replicas_when_autoscaling(settings: Settings) -> None:
    children = _children(
        {"model": {"uri": "file:///m"}, "autoscaling": {"minReplicas": 2, "maxReplicas": 5}},
        settings,
    )
    assert "replicas" not in children["Deployment"]["spec"]
    hpa = children["HorizontalPodAutoscaler"]["spec"]
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (2, 5)
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "iris"}
    assert hpa["metrics"][0]["resource"]["target"]["averageUtilization"] == 70


def test_fixed_replicas_default_to_one_and_need_no_pdb_or_hpa(settings: Settings) -> None:
    spec = api.parse_spec({"model": {"uri": "file:///m"}})
    rendered = render.render_children(render.Owner.from_body(make_body({})), spec, settings)
    kinds = {obj["kind"] for obj in rendered.wanted}
    assert kinds == {"Deployment", "Service", "NetworkPolicy"}
    assert {kind.kind for kind in rendered.unwanted} == {
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "ServiceAccount",
    }
    assert rendered.wanted[0]["spec"]["replicas"] == 1


def test_suspend_scales_to_zero_and_keeps_every_object(settings: Settings) -> None:
    children = _children({"model": {"uri": "file:///m"}, "replicas": 3, "suspend": True}, settings)
    assert children["Deployment"]["spec"]["replicas"] == 0
    assert "PodDisruptionBudget" in children


def test_server_container_is_locked_down(settings: Settings) -> None:
    deployment = _children({"model": {"uri": "file:///m"}}, settings)["Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    security = _server(deployment)["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}


def test_probes_rollout_and_graceful_shutdown(settings: Settings) -> None:
    deployment = _children(
        {"model": {"uri": "file:///m"}, "rollout": {"progressDeadlineSeconds": 120}}, settings
    )["Deployment"]
    server = _server(deployment)
    assert server["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "health"}
    assert server["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "health"}
    # Started = the model is loaded; liveness answers while it loads, so it would mean nothing.
    assert server["startupProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "health"}
    assert server["ports"] == [
        {"name": "http", "containerPort": 8080, "protocol": "TCP"},
        {"name": "health", "containerPort": 8081, "protocol": "TCP"},
    ]
    assert _env(server)["HEALTH_PORT"] == "8081"
    prestop = server["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert prestop > 0
    # preStop, then the server's drain (2 s), in-flight requests (20 s) and worker stop (5 s).
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > prestop + 2 + 20 + 5
    strategy = deployment["spec"]["strategy"]["rollingUpdate"]
    assert strategy["maxUnavailable"] == 0
    assert deployment["spec"]["progressDeadlineSeconds"] == 120


def test_image_comes_from_settings_unless_overridden(settings: Settings) -> None:
    default = _children({"model": {"uri": "file:///m"}}, settings)["Deployment"]
    assert _server(default)["image"] == "registry.example/modelserver:1.2.3"
    custom = _children({"model": {"uri": "file:///m"}, "server": {"image": "mine:2"}}, settings)[
        "Deployment"
    ]
    assert _server(custom)["image"] == "mine:2"


def test_file_uri_is_served_as_is(settings: Settings) -> None:
    deployment = _children({"model": {"uri": "file:///opt/models/iris/model.joblib"}}, settings)[
        "Deployment"
    ]
    assert _env(_server(deployment))["MODEL_URI"] == "file:///opt/models/iris/model.joblib"
    assert "initContainers" not in deployment["spec"]["template"]["spec"]


def test_pvc_uri_mounts_the_claim_read_only(settings: Settings) -> None:
    deployment = _children(
        {"model": {"uri": "pvc://models/churn/v3/model.skops", "format": "skops"}}, settings
    )["Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    volume = next(v for v in pod["volumes"] if v["name"] == "model")
    assert volume["persistentVolumeClaim"] == {"claimName": "models", "readOnly": True}
    server = _server(deployment)
    assert _env(server)["MODEL_URI"] == "file:///mnt/models/churn/v3/model.skops"
    assert {"name": "model", "mountPath": "/mnt/models", "readOnly": True} in server["volumeMounts"]


@pytest.mark.parametrize("uri", ["https://h.example/m.joblib", "s3://bucket/models/m.joblib"])
def test_remote_uri_is_fetched_by_an_init_container_that_checks_the_digest(
    uri: str, settings: Settings
) -> None:
    digest = "sha256:" + "a" * 64
    spec = {"model": {"uri": uri, "digest": digest, "credentialsSecret": "s3-creds"}}
    deployment = _children(spec, settings)["Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    (init,) = pod["initContainers"]
    assert init["args"] == ["fetch"]
    assert init["image"] == _server(deployment)["image"]
    assert _env(init) == {
        "MODEL_URI": uri,
        "MODEL_DEST": "/mnt/models/model",
        "MODEL_DIGEST": digest,
        "MAX_MODEL_BYTES": str(4 * 2**30),
    }
    assert init["envFrom"] == [{"secretRef": {"name": "s3-creds"}}]
    (model_volume,) = [v for v in pod["volumes"] if v["name"] == "model"]
    assert model_volume["emptyDir"] == {"sizeLimit": str(4 * 2**30)}
    server_env = _env(_server(deployment))
    assert server_env["MODEL_URI"] == "file:///mnt/models/model"
    assert server_env["MODEL_DIGEST"] == digest
    assert "envFrom" not in _server(deployment), "credentials reach the download step only"


def test_the_download_is_bounded_by_model_max_size_bytes(settings: Settings) -> None:
    spec = {"model": {"uri": "https://h.example/m.skops", "format": "skops", "maxSizeBytes": 10**6}}
    pod = _children(spec, settings)["Deployment"]["spec"]["template"]["spec"]
    (init,) = pod["initContainers"]
    assert _env(init)["MAX_MODEL_BYTES"] == "1000000"
    (model_volume,) = [v for v in pod["volumes"] if v["name"] == "model"]
    assert model_volume["emptyDir"] == {"sizeLimit": "1000000"}


def test_network_policy_defaults_to_same_namespace(settings: Settings) -> None:
    policy = _children({"model": {"uri": "file:///m"}}, settings)["NetworkPolicy"]["spec"]
    assert policy["policyTypes"] == ["Ingress"]
    assert policy["ingress"] == [
        {"from": [{"podSelector": {}}], "ports": [{"protocol": "TCP", "port": 8080}]},
        # The operator's namespace reads the metrics (canary analysis) on the health port only.
        {
            "from": [
                {
                    "namespaceSelector": {
                        "matchLabels": {"kubernetes.io/metadata.name": settings.lease_namespace}
                    }
                }
            ],
            "ports": [{"protocol": "TCP", "port": 8081}],
        },
    ]


def test_network_policy_allow_from_and_disable(settings: Settings) -> None:
    peers = [
        {"namespaceSelector": {"matchLabels": {"team": "web"}}},
        {"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}},
    ]
    policy = _children(
        {"model": {"uri": "file:///m"}, "networkPolicy": {"allowFrom": peers}}, settings
    )["NetworkPolicy"]
    assert policy["spec"]["ingress"][0]["from"] == peers
    spec = api.parse_spec({"model": {"uri": "file:///m"}, "networkPolicy": {"enabled": False}})
    rendered = render.render_children(render.Owner.from_body(make_body({})), spec, settings)
    assert "NetworkPolicy" not in {obj["kind"] for obj in rendered.wanted}
    assert render.NETWORK_POLICY in rendered.unwanted


def test_service_exposes_http_on_port_80(settings: Settings) -> None:
    service = _children({"model": {"uri": "file:///m"}}, settings)["Service"]["spec"]
    assert service["type"] == "ClusterIP"
    assert service["ports"][0]["name"] == "http"
    assert service["ports"][0]["targetPort"] == "http"
    assert service["selector"] == {
        "app.kubernetes.io/name": "modelserver",
        "app.kubernetes.io/instance": "iris",
    }


def test_selector_labels_never_include_mutable_fields(settings: Settings) -> None:
    first = _children({"model": {"uri": "file:///a", "version": "1"}}, settings)["Deployment"]
    second = _children({"model": {"uri": "file:///b", "version": "2"}, "replicas": 4}, settings)[
        "Deployment"
    ]
    assert first["spec"]["selector"] == second["spec"]["selector"]


@pytest.mark.parametrize(
    ("resources", "workers"),
    [
        (None, "1"),  # default: 250m requested, no limit
        ({"requests": {"cpu": "500m"}, "limits": {"cpu": 2}}, "2"),
        ({"requests": {"cpu": "1500m"}}, "2"),
        ({"limits": {"cpu": "2.5", "memory": "1Gi"}}, "3"),
        ({"requests": {"memory": "1Gi"}}, "1"),
    ],
)
def test_server_workers_follow_the_cpu_limit_not_the_node(
    resources: dict[str, Any] | None, workers: str, settings: Settings
) -> None:
    spec: dict[str, Any] = {"model": {"uri": "file:///m"}}
    if resources:
        spec["resources"] = resources
    assert _env(_server(_children(spec, settings)["Deployment"]))["WORKERS"] == workers


def test_skops_trusted_types_reach_the_server(settings: Settings) -> None:
    spec = {
        "model": {
            "uri": "file:///m",
            "format": "skops",
            "trustedTypes": ["sklearn.tree._tree.Tree", "x.Y"],
        }
    }
    env = _env(_server(_children(spec, settings)["Deployment"]))
    assert env["MODEL_TRUSTED_TYPES"] == "sklearn.tree._tree.Tree,x.Y"
    assert env["MODEL_FORMAT"] == "skops"

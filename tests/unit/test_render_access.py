"""Rendering of who may call a model: auth, TLS, the rate limit and the metrics peers."""

from __future__ import annotations

from typing import Any

from modeldeploy import render
from modeldeploy.settings import Settings

from .conftest import make_body
from .test_render import _children, _env, _server

M = {"uri": "file:///m"}


def _pod(children: dict[str, dict[str, Any]]) -> dict[str, Any]:
    pod: dict[str, Any] = children["Deployment"]["spec"]["template"]["spec"]
    return pod


def test_without_auth_the_pods_get_no_token_and_no_account(settings: Settings) -> None:
    children = _children({"model": M}, settings)
    pod = _pod(children)
    assert pod["automountServiceAccountToken"] is False
    assert "serviceAccountName" not in pod
    assert "ServiceAccount" not in children
    assert not {"AUTH", "TLS_CERT_FILE", "RATE_LIMIT_RPS"} & set(
        _env(_server(children["Deployment"]))
    )


def test_auth_gives_the_pods_their_own_account_and_token(settings: Settings) -> None:
    children = _children({"model": M, "auth": {"mode": "Kubernetes"}}, settings)
    pod = _pod(children)
    account = children["ServiceAccount"]
    assert account["metadata"]["name"] == "iris"
    assert account["metadata"]["ownerReferences"][0]["kind"] == "ModelDeployment"
    assert account["automountServiceAccountToken"] is False  # only pods that ask get it
    assert pod["serviceAccountName"] == "iris"
    assert pod["automountServiceAccountToken"] is True
    env = _env(_server(children["Deployment"]))
    namespace = account["metadata"]["namespace"]
    assert (env["AUTH"], env["AUTH_NAME"], env["AUTH_NAMESPACE"]) == (
        "kubernetes",
        "iris",
        namespace,
    )
    binding = render.render_reviewer_binding(render.Owner.from_body(make_body({"model": M})))
    assert binding["metadata"]["name"] == f"modeldeploy:{namespace}:iris"
    assert "ownerReferences" not in binding["metadata"]  # cluster-scoped: deleted by the operator
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "iris", "namespace": namespace}
    ]


def test_auth_mode_none_is_the_default_spelled_out(settings: Settings) -> None:
    children = _children({"model": M, "auth": {"mode": "None"}}, settings)
    assert "ServiceAccount" not in children
    assert _pod(children)["automountServiceAccountToken"] is False


def test_tls_mounts_the_secret_and_renames_the_ports(settings: Settings) -> None:
    children = _children({"model": M, "tls": {"secretName": "iris-tls"}}, settings)
    pod = _pod(children)
    server = _server(children["Deployment"])
    (volume,) = [v for v in pod["volumes"] if v["name"] == "tls"]
    assert volume["secret"]["secretName"] == "iris-tls"
    (mount,) = [m for m in server["volumeMounts"] if m["name"] == "tls"]
    assert mount["readOnly"] is True
    env = _env(server)
    assert env["TLS_CERT_FILE"] == f"{mount['mountPath']}/tls.crt"
    assert env["TLS_KEY_FILE"] == f"{mount['mountPath']}/tls.key"
    assert {p["name"] for p in server["ports"]} == {"https", "health"}
    (port,) = children["Service"]["spec"]["ports"]
    assert port == {
        "name": "https",
        "port": 443,
        "targetPort": "https",
        "protocol": "TCP",
        "appProtocol": "https",
    }
    # Probes and metrics stay on the plain health listener, which serves nothing else.
    assert server["readinessProbe"]["httpGet"]["port"] == "health"
    owner = render.Owner.from_body(make_body({"model": M}))
    assert render.service_url(owner, "cluster.local", tls=True).startswith("https://iris.")
    assert render.service_url(owner, "cluster.local").startswith("http://iris.")


def test_rate_limit_reaches_the_server(settings: Settings) -> None:
    spec = {"model": M, "server": {"rateLimit": {"requestsPerSecond": 2.5, "burst": 10}}}
    env = _env(_server(_children(spec, settings)["Deployment"]))
    assert (env["RATE_LIMIT_RPS"], env["RATE_LIMIT_BURST"]) == ("2.5", "10")
    spec = {"model": M, "server": {"rateLimit": {"requestsPerSecond": 100}}}
    env = _env(_server(_children(spec, settings)["Deployment"]))
    assert env["RATE_LIMIT_RPS"] == "100"
    assert "RATE_LIMIT_BURST" not in env  # the server's default: one second's worth


def test_metrics_peers_reach_the_metrics_port_only(settings: Settings) -> None:
    prometheus = {"namespaceSelector": {"matchLabels": {"name": "monitoring"}}}
    spec = {"model": M, "networkPolicy": {"allowMetricsFrom": [prometheus]}}
    rules = _children(spec, settings)["NetworkPolicy"]["spec"]["ingress"]
    to_metrics = [rule for rule in rules if rule["from"] == [prometheus]]
    assert to_metrics == [
        {"from": [prometheus], "ports": [{"protocol": "TCP", "port": render.HEALTH_PORT}]}
    ]
    serving = [r for r in rules if {"protocol": "TCP", "port": render.SERVER_PORT} in r["ports"]]
    assert all(prometheus not in rule["from"] for rule in serving)
    without = _children({"model": M}, settings)["NetworkPolicy"]["spec"]["ingress"]
    assert len(rules) == len(without) + 1

"""Pure rendering of who may call a model (issue 13): auth, TLS, the rate limit, metrics peers.

Kept apart from render.py, which calls it: the pod's ServiceAccount and token, the server's
access flags, the TLS Secret's volume, and the NetworkPolicy rule for metrics scrapers.

RBAC of the pieces: the model pods get a ServiceAccount token only with auth on (the server
needs it for its TokenReview and SubjectAccessReview calls); that account is bound to the
ClusterRole `modeldeploy-token-reviewer` (create tokenreviews and subjectaccessreviews, what the
built-in system:auth-delegator holds) by a ClusterRoleBinding per resource: both reviews are
cluster-scoped, so a namespaced RoleBinding cannot grant them.
"""

from __future__ import annotations

from typing import Any

from modeldeploy import api

Obj = dict[str, Any]

TOKEN_REVIEWER_ROLE = "modeldeploy-token-reviewer"  # noqa: S105 - a ClusterRole name
TLS_VOLUME = "tls"
TLS_DIR = "/etc/modelserver/tls"
HTTP_PORT_NAME = "http"
HTTPS_PORT_NAME = "https"
HTTPS_SERVICE_PORT = 443


def auth_on(spec: api.ModelDeploymentSpec) -> bool:
    """Callers must show a token that RBAC allows."""
    return spec.auth is not None and spec.auth.mode == api.AuthMode.KUBERNETES


def tls_on(spec: api.ModelDeploymentSpec) -> bool:
    """The server speaks HTTPS."""
    return spec.tls is not None


def port_name(spec: api.ModelDeploymentSpec) -> str:
    """Name of the serving port on the container and the Service (https with TLS)."""
    return HTTPS_PORT_NAME if tls_on(spec) else HTTP_PORT_NAME


def server_account(name: str) -> str:
    """The ServiceAccount of the model pods of resource `name` (with auth on): named after the
    resource like every child, so a name someone else's account holds is refused, not taken."""
    return name


def reviewer_binding_name(namespace: str, name: str) -> str:
    """The ClusterRoleBinding of one resource's server account: cluster-wide, so the namespace
    is part of the name."""
    return f"modeldeploy:{namespace}:{name}"


def server_env(spec: api.ModelDeploymentSpec, name: str, namespace: str) -> list[Obj]:
    """The server's access flags as environment variables."""
    env: list[Obj] = []
    if auth_on(spec):
        env += [
            {"name": "AUTH", "value": "kubernetes"},
            {"name": "AUTH_NAME", "value": name},
            {"name": "AUTH_NAMESPACE", "value": namespace},
        ]
    if tls_on(spec):
        env += [
            {"name": "TLS_CERT_FILE", "value": f"{TLS_DIR}/tls.crt"},
            {"name": "TLS_KEY_FILE", "value": f"{TLS_DIR}/tls.key"},
        ]
    limit = spec.server.rate_limit if spec.server else None
    if limit is not None:
        env.append({"name": "RATE_LIMIT_RPS", "value": f"{limit.requests_per_second:g}"})
        if limit.burst is not None:
            env.append({"name": "RATE_LIMIT_BURST", "value": str(limit.burst)})
    return env


def secure_pod(
    pod_spec: Obj, container: Obj, spec: api.ModelDeploymentSpec, name: str, namespace: str
) -> None:
    """Adds the access settings to a rendered pod spec and its server container."""
    container["env"] += server_env(spec, name, namespace)
    for port in container["ports"]:
        if port["name"] == HTTP_PORT_NAME:
            port["name"] = port_name(spec)
    if auth_on(spec):
        pod_spec["serviceAccountName"] = server_account(name)
        pod_spec["automountServiceAccountToken"] = True
    if spec.tls is not None:
        pod_spec["volumes"].append(
            {
                "name": TLS_VOLUME,
                "secret": {"secretName": spec.tls.secret_name, "defaultMode": 0o440},
            }
        )
        container["volumeMounts"].append(
            {"name": TLS_VOLUME, "mountPath": TLS_DIR, "readOnly": True}
        )


def service_port(spec: api.ModelDeploymentSpec, plain_port: int) -> Obj:
    """The Service's serving port: `http` on `plain_port`, or `https` on 443."""
    name = port_name(spec)
    return {
        "name": name,
        "port": HTTPS_SERVICE_PORT if tls_on(spec) else plain_port,
        "targetPort": name,
        "protocol": "TCP",
        "appProtocol": name,
    }


def metrics_ingress(settings: api.NetworkPolicySettings, metrics_port: int) -> list[Obj]:
    """The NetworkPolicy rule admitting allowMetricsFrom to the metrics (health) port only."""
    if not settings.allow_metrics_from:
        return []
    peers = [p.model_dump(by_alias=True, exclude_none=True) for p in settings.allow_metrics_from]
    return [{"from": peers, "ports": [{"protocol": "TCP", "port": metrics_port}]}]


def render_server_account(metadata: Obj) -> Obj:
    """The model pods' ServiceAccount (with auth on); `metadata` names and owns it."""
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": metadata,
        # Only the model pods, which ask for it, get its token.
        "automountServiceAccountToken": False,
    }


NAMESPACE_LABEL = "serving.modeldeploy.io/namespace"


def orphaned_bindings(
    bindings: list[Obj], wanted: set[tuple[str, str]], namespaces: tuple[str, ...]
) -> list[Obj]:
    """The token-review bindings that no live resource with auth on wants: (namespace, name)
    of those in ``wanted``; only bindings of the watched ``namespaces`` (all when empty)."""
    orphans = []
    for binding in bindings:
        subjects = binding.get("subjects") or []
        if (binding.get("roleRef") or {}).get("name") != TOKEN_REVIEWER_ROLE or len(subjects) != 1:
            continue  # not one of ours
        # The one subject is the resource's server account, named after the resource.
        namespace, name = subjects[0].get("namespace"), subjects[0].get("name")
        if namespaces and namespace not in namespaces:
            continue  # another operator's (a namespaced install) or not watched
        if (namespace, name) not in wanted:
            orphans.append(binding)
    return orphans


def render_reviewer_binding(name: str, namespace: str, labels: dict[str, str]) -> Obj:
    """Binds the server account to the token-reviewer ClusterRole. Cluster-scoped, so it can
    have no owner reference to the (namespaced) resource: the operator deletes it itself."""
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {
            "name": reviewer_binding_name(namespace, name),
            "labels": {**labels, NAMESPACE_LABEL: namespace},
        },
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "ClusterRole",
            "name": TOKEN_REVIEWER_ROLE,
        },
        "subjects": [
            {"kind": "ServiceAccount", "name": server_account(name), "namespace": namespace}
        ],
    }

"""Pure rendering of a ModelDeployment's children: spec in, Kubernetes objects (dicts) out.

Nothing here does I/O. Each ``render_*`` returns the complete desired object as it is sent with
server-side apply, so a field the operator leaves out is a field it does not own (the
Deployment's ``replicas`` under autoscaling is the important case).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from modeldeploy import access, api, canary
from modeldeploy.settings import Settings

Obj = dict[str, Any]

APP_NAME = "modelserver"
MANAGED_BY = "modeldeploy"
LABEL_NAME = "app.kubernetes.io/name"
LABEL_INSTANCE = "app.kubernetes.io/instance"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_COMPONENT = "app.kubernetes.io/component"
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"  # set on every namespace by the API server

SERVER_PORT = 8080
HEALTH_PORT = 8081  # the server's probe listener (in its supervisor, apart from inference)
SERVICE_PORT = 80
SERVER_UID = 65532
MODEL_DIR = "/mnt/models"
FETCHED_MODEL_PATH = f"{MODEL_DIR}/model"
DEFAULT_PROGRESS_DEADLINE = 600
DEFAULT_MAX_SURGE = "25%"
DEFAULT_RESOURCES: Obj = {
    "requests": {"cpu": "250m", "memory": "256Mi"},
    "limits": {"memory": "1Gi"},
}
DEFAULT_MAX_MODEL_BYTES = 4 * 2**30  # the fetcher's own default (MAX_MODEL_BYTES)
PRESTOP_SLEEP_SECONDS = 5
# The server's own shutdown after SIGTERM: drain delay (2 s), in-flight requests (20 s), workers
# stopped (5 s); the grace period covers the preStop pause, that, and a margin, so the kubelet
# never kills a pod that is still answering.
SERVER_SHUTDOWN_SECONDS = 2 + 20 + 5
TERMINATION_GRACE_SECONDS = PRESTOP_SLEEP_SECONDS + SERVER_SHUTDOWN_SECONDS + 5


@dataclass(frozen=True)
class Owner:
    """What the children need to know about their ModelDeployment."""

    name: str
    namespace: str
    uid: str

    @classmethod
    def from_body(cls, body: Any) -> Owner:
        meta = body["metadata"]
        return cls(name=meta["name"], namespace=meta["namespace"], uid=meta["uid"])


@dataclass(frozen=True)
class ChildKind:
    """A kind of child object, with what the API module needs to address it."""

    api_version: str
    kind: str
    plural: str


DEPLOYMENT = ChildKind("apps/v1", "Deployment", "deployments")
SERVICE = ChildKind("v1", "Service", "services")
HPA = ChildKind("autoscaling/v2", "HorizontalPodAutoscaler", "horizontalpodautoscalers")
NETWORK_POLICY = ChildKind("networking.k8s.io/v1", "NetworkPolicy", "networkpolicies")
PDB = ChildKind("policy/v1", "PodDisruptionBudget", "poddisruptionbudgets")
SERVICE_ACCOUNT = ChildKind("v1", "ServiceAccount", "serviceaccounts")  # with auth on
CHILD_KINDS = (DEPLOYMENT, SERVICE, HPA, NETWORK_POLICY, PDB, SERVICE_ACCOUNT)
# Cluster-scoped, so not a child (no owner reference, not watched): see access.py.
REVIEWER_BINDING = ChildKind(
    "rbac.authorization.k8s.io/v1", "ClusterRoleBinding", "clusterrolebindings"
)


def child_kind(kind: str) -> ChildKind:
    """The ChildKind of a rendered object's ``kind``."""
    for known in CHILD_KINDS:
        if known.kind == kind:
            return known
    raise KeyError(kind)


def selector_labels(owner: Owner) -> dict[str, str]:
    """Labels that select the model pods; never change them (Deployment selectors are immutable)."""
    return {LABEL_NAME: APP_NAME, LABEL_INSTANCE: owner.name}


def selector_string(owner: Owner) -> str:
    """The selector in the string form of status.selector (for the scale subresource)."""
    return ",".join(f"{key}={value}" for key, value in sorted(selector_labels(owner).items()))


def common_labels(owner: Owner) -> dict[str, str]:
    return {**selector_labels(owner), LABEL_MANAGED_BY: MANAGED_BY}


def service_url(owner: Owner, cluster_domain: str, *, tls: bool = False) -> str:
    return f"{'https' if tls else 'http'}://{owner.name}.{owner.namespace}.svc.{cluster_domain}"


def _metadata(owner: Owner) -> Obj:
    return {
        "name": owner.name,
        "namespace": owner.namespace,
        "labels": {**common_labels(owner), LABEL_COMPONENT: "predictor"},
        "ownerReferences": [
            {
                "apiVersion": api.API_VERSION,
                "kind": api.KIND,
                "name": owner.name,
                "uid": owner.uid,
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ],
    }


def _object(kind: ChildKind, owner: Owner, spec: Obj) -> Obj:
    return {
        "apiVersion": kind.api_version,
        "kind": kind.kind,
        "metadata": _metadata(owner),
        "spec": spec,
    }


def desired_replicas(spec: api.ModelDeploymentSpec) -> int | None:
    """The replica count the operator writes, or None when the autoscaler owns it."""
    if spec.suspend:
        return 0
    if spec.autoscaling is not None:
        return None
    return 1 if spec.replicas is None else spec.replicas


def replicas_handoff(
    spec: api.ModelDeploymentSpec, *, owns_replicas: bool, current: int
) -> int | None:
    """The value Deployment.spec.replicas must be held at by a second field manager before
    the operator stops applying it (an autoscaler takes it over), or None. Without that
    co-owner, server-side apply would remove the field: 1 replica until the autoscaler acts."""
    if not owns_replicas or spec.autoscaling is None or desired_replicas(spec) is not None:
        return None
    return spec.autoscaling.bound(current)


def max_possible_replicas(spec: api.ModelDeploymentSpec) -> int:
    """Most replicas that can run; a PodDisruptionBudget is only useful above one."""
    if spec.autoscaling is not None:
        return spec.autoscaling.max_replicas
    return 1 if spec.replicas is None else spec.replicas


def _probe(path: str, *, period: int, failures: int, timeout: int = 2) -> Obj:
    return {
        "httpGet": {"path": path, "port": "health"},
        "periodSeconds": period,
        "timeoutSeconds": timeout,
        "failureThreshold": failures,
    }


def _resources(spec: api.ModelDeploymentSpec) -> Obj:
    if spec.resources is None:
        return {key: dict(value) for key, value in DEFAULT_RESOURCES.items()}
    out: Obj = {}
    if spec.resources.requests:
        out["requests"] = {key: str(value) for key, value in spec.resources.requests.items()}
    if spec.resources.limits:
        out["limits"] = {key: str(value) for key, value in spec.resources.limits.items()}
    return out


def _container_security() -> Obj:
    """Restricted Pod Security Standard, per container."""
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


@dataclass(frozen=True)
class ModelPlacement:
    """How the model reaches the server container for a given URI scheme."""

    served_uri: str
    volumes: list[Obj]
    mounts: list[Obj]
    fetch: bool


def model_placement(model: api.ModelSource) -> ModelPlacement:
    """file:// as is; pvc:// mounts the claim read-only; http(s)/s3 are fetched into an emptyDir."""
    parts = urlsplit(model.uri)
    if parts.scheme == "file":
        return ModelPlacement(served_uri=model.uri, volumes=[], mounts=[], fetch=False)
    if parts.scheme == "pvc":
        claim, path = parts.netloc, parts.path.lstrip("/")
        return ModelPlacement(
            served_uri=f"file://{MODEL_DIR}/{path}",
            volumes=[
                {"name": "model", "persistentVolumeClaim": {"claimName": claim, "readOnly": True}}
            ],
            mounts=[{"name": "model", "mountPath": MODEL_DIR, "readOnly": True}],
            fetch=False,
        )
    limit = model.max_size_bytes or DEFAULT_MAX_MODEL_BYTES
    return ModelPlacement(
        served_uri=f"file://{FETCHED_MODEL_PATH}",
        volumes=[{"name": "model", "emptyDir": {"sizeLimit": str(limit)}}],
        mounts=[{"name": "model", "mountPath": MODEL_DIR, "readOnly": True}],
        fetch=True,
    )


def cpu_cores(quantity: int | str) -> float:
    """A CPU quantity (2, "1.5", "500m", "0.5m", "1k") in cores."""
    return float(api.parse_quantity(quantity))


def server_workers(resources: Obj) -> int:
    """Server processes: the CPU limit (or, without one, the request) rounded up, at least 1.

    Without this the server would size itself from the node's CPU count when no limit is set,
    and load one copy of the model per node CPU.
    """
    cpu = (resources.get("limits") or {}).get("cpu") or (resources.get("requests") or {}).get("cpu")
    return max(1, math.ceil(cpu_cores(cpu))) if cpu is not None else 1


def _model_env(owner: Owner, model: api.ModelSource, uri: str) -> list[Obj]:
    env = [
        {"name": "MODEL_NAME", "value": owner.name},
        {"name": "MODEL_URI", "value": uri},
        {"name": "MODEL_FORMAT", "value": model.format},
    ]
    if model.digest:
        env.append({"name": "MODEL_DIGEST", "value": model.digest})
    if model.version:
        env.append({"name": "MODEL_VERSION", "value": model.version})
    if model.trusted_types:
        env.append({"name": "MODEL_TRUSTED_TYPES", "value": ",".join(model.trusted_types)})
    return env


def _fetch_container(
    image: str,
    model: api.ModelSource | api.ReferenceSource,
    *,
    name: str = "fetch-model",
    volume: str = "model",
    directory: str = MODEL_DIR,
    dest: str = FETCHED_MODEL_PATH,
    max_bytes: int | None = None,
) -> Obj:
    limit = max_bytes or getattr(model, "max_size_bytes", None) or DEFAULT_MAX_MODEL_BYTES
    env = [
        {"name": "MODEL_URI", "value": model.uri},
        {"name": "MODEL_DEST", "value": dest},
        {"name": "MAX_MODEL_BYTES", "value": str(limit)},
    ]
    if model.digest:
        env.append({"name": "MODEL_DIGEST", "value": model.digest})
    container: Obj = {
        "name": name,
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "args": ["fetch"],
        "env": env,
        "resources": {
            "requests": {"cpu": "100m", "memory": "128Mi"},
            "limits": {"memory": "512Mi"},
        },
        "securityContext": _container_security(),
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": [
            {"name": volume, "mountPath": directory},
            {"name": "tmp", "mountPath": "/tmp"},  # noqa: S108 - an emptyDir, not the host's /tmp
        ],
    }
    if model.credentials_secret:
        container["envFrom"] = [{"secretRef": {"name": model.credentials_secret}}]
    return container


# -- monitoring (issue 12) -----------------------------------------------------------------------

REFERENCE_DIR = "/mnt/reference"
FETCHED_REFERENCE_PATH = f"{REFERENCE_DIR}/profile.json"
MAX_REFERENCE_BYTES = 64 * 2**20  # a profile is a few kB per feature


def reference_placement(reference: api.ReferenceSource) -> ModelPlacement:
    """Where the server reads the reference profile: as the model, under /mnt/reference."""
    parts = urlsplit(reference.uri)
    mounts = [{"name": "reference", "mountPath": REFERENCE_DIR, "readOnly": True}]
    if parts.scheme == "file":
        return ModelPlacement(served_uri=reference.uri, volumes=[], mounts=[], fetch=False)
    if parts.scheme == "pvc":
        claim = {"claimName": parts.netloc, "readOnly": True}
        return ModelPlacement(
            served_uri=f"file://{REFERENCE_DIR}/{parts.path.lstrip('/')}",
            volumes=[{"name": "reference", "persistentVolumeClaim": claim}],
            mounts=mounts,
            fetch=False,
        )
    return ModelPlacement(
        served_uri=f"file://{FETCHED_REFERENCE_PATH}",
        volumes=[{"name": "reference", "emptyDir": {"sizeLimit": str(MAX_REFERENCE_BYTES)}}],
        mounts=mounts,
        fetch=True,
    )


def monitoring_env(monitoring: api.Monitoring, reference_uri: str | None) -> list[Obj]:
    """The server's monitoring flags (API.md "Server flags being added")."""
    env: list[Obj] = []
    reference = monitoring.reference
    if reference is not None and reference_uri is not None:
        env.append({"name": "REFERENCE_URI", "value": reference_uri})
        env.append({"name": "DRIFT_WINDOW_SECONDS", "value": str(monitoring.drift_window_seconds)})
        if reference.digest:
            env.append({"name": "REFERENCE_DIGEST", "value": reference.digest})
    log = monitoring.payload_log
    if log is not None:
        env += [
            {"name": "PAYLOAD_LOG_URL", "value": log.url},
            {"name": "PAYLOAD_LOG_SAMPLE_RATE", "value": str(log.sample_rate)},
            {"name": "PAYLOAD_LOG_MAX_QUEUE", "value": str(log.max_queue)},
        ]
        if log.redact:
            env.append({"name": "PAYLOAD_LOG_REDACT", "value": ",".join(log.redact)})
    return env


def _add_monitoring(pod_spec: Obj, server: Obj, image: str, monitoring: api.Monitoring) -> None:
    """Adds the reference profile (fetched like the model) and the monitoring flags."""
    reference_uri = None
    if monitoring.reference is not None:
        placement = reference_placement(monitoring.reference)
        reference_uri = placement.served_uri
        pod_spec["volumes"] += placement.volumes
        server["volumeMounts"] += placement.mounts
        if placement.fetch:
            fetch = _fetch_container(
                image,
                monitoring.reference,
                name="fetch-reference",
                volume="reference",
                directory=REFERENCE_DIR,
                dest=FETCHED_REFERENCE_PATH,
                max_bytes=MAX_REFERENCE_BYTES,
            )
            pod_spec["initContainers"] = [*pod_spec.get("initContainers", []), fetch]
    server["env"] += monitoring_env(monitoring, reference_uri)


def template_hash(template: Obj) -> str:
    """Identifies a pod template (whichever track it runs as): the canary's starting point."""
    return hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:16]


def render_deployment(
    owner: Owner,
    spec: api.ModelDeploymentSpec,
    settings: Settings,
    *,
    track: str = canary.STABLE,
    replicas: int | None = None,
) -> Obj:
    """The Deployment running the model server: the stable one, or ``<name>-canary`` (with
    ``replicas`` pods) running the spec's template beside a stable one that does not yet."""
    image = spec.server.image if spec.server and spec.server.image else settings.server_image
    placement = model_placement(spec.model)
    rollout = spec.rollout or api.Rollout()
    labels = {**common_labels(owner), LABEL_COMPONENT: "predictor"}

    resources = _resources(spec)
    server: Obj = {
        "name": "server",
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "env": [
            *_model_env(owner, spec.model, placement.served_uri),
            {"name": "PORT", "value": str(SERVER_PORT)},
            {"name": "HEALTH_PORT", "value": str(HEALTH_PORT)},
            {"name": "WORKERS", "value": str(server_workers(resources))},
        ],
        "ports": [
            {"name": "http", "containerPort": SERVER_PORT, "protocol": "TCP"},
            {"name": "health", "containerPort": HEALTH_PORT, "protocol": "TCP"},
        ],
        # Probes go to the supervisor's own listener: a worker busy with inference never makes
        # the kubelet restart the pod or take it out of the Service.
        "readinessProbe": _probe("/v2/health/ready", period=5, failures=3),
        "livenessProbe": _probe("/v2/health/live", period=10, failures=3),
        # Started means the model is loaded (liveness answers during the load); big models load
        # slowly, so up to 10 minutes before liveness starts counting.
        "startupProbe": _probe("/v2/health/ready", period=5, failures=120),
        "resources": resources,
        "securityContext": _container_security(),
        "terminationMessagePolicy": "FallbackToLogsOnError",
        # Keep serving while the endpoints controller takes the pod out of the Service.
        "lifecycle": {"preStop": {"sleep": {"seconds": PRESTOP_SLEEP_SECONDS}}},
        "volumeMounts": [
            {"name": "tmp", "mountPath": "/tmp"},  # noqa: S108 - an emptyDir, not the host's /tmp
            *placement.mounts,
        ],
    }
    pod_spec: Obj = {
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": TERMINATION_GRACE_SECONDS,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": SERVER_UID,
            "runAsGroup": SERVER_UID,
            "fsGroup": SERVER_UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [server],
        "volumes": [{"name": "tmp", "emptyDir": {"sizeLimit": "256Mi"}}, *placement.volumes],
        "topologySpreadConstraints": [
            {
                "maxSkew": 1,
                "topologyKey": "kubernetes.io/hostname",
                "whenUnsatisfiable": "ScheduleAnyway",
                "labelSelector": {"matchLabels": selector_labels(owner)},
            }
        ],
    }
    if placement.fetch:
        pod_spec["initContainers"] = [_fetch_container(image, spec.model)]
    if spec.monitoring is not None:
        _add_monitoring(pod_spec, server, image, spec.monitoring)
    access.secure_pod(pod_spec, server, spec, owner.name, owner.namespace)

    deployment_spec: Obj = {
        "selector": {"matchLabels": selector_labels(owner)},
        "revisionHistoryLimit": 5,
        "progressDeadlineSeconds": rollout.progress_deadline_seconds or DEFAULT_PROGRESS_DEADLINE,
        "strategy": {
            "type": "RollingUpdate",
            "rollingUpdate": {
                "maxSurge": DEFAULT_MAX_SURGE if rollout.max_surge is None else rollout.max_surge,
                "maxUnavailable": 0 if rollout.max_unavailable is None else rollout.max_unavailable,
            },
        },
        "template": {
            "metadata": {
                "labels": labels,
                "annotations": {
                    "prometheus.io/scrape": "true",
                    "prometheus.io/port": str(HEALTH_PORT),
                    "prometheus.io/path": "/metrics",
                },
            },
            "spec": pod_spec,
        },
    }
    hashed = template_hash(deployment_spec["template"])
    labels[canary.TRACK_LABEL] = track
    if track == canary.CANARY:
        deployment_spec["selector"] = {
            "matchLabels": {**selector_labels(owner), canary.TRACK_LABEL: canary.CANARY}
        }
    else:
        replicas = desired_replicas(spec)
    if replicas is not None:
        deployment_spec["replicas"] = replicas
    deployment = _object(DEPLOYMENT, owner, deployment_spec)
    deployment["metadata"]["annotations"] = {canary.TEMPLATE_HASH_ANNOTATION: hashed}
    if track == canary.CANARY:
        deployment["metadata"]["name"] = canary.canary_name(owner.name)
        deployment["metadata"]["labels"][canary.TRACK_LABEL] = canary.CANARY
    return deployment


def render_service(owner: Owner, spec: api.ModelDeploymentSpec) -> Obj:
    """ClusterIP Service in front of the model pods; port 80 named http (443 https with TLS)."""
    return _object(
        SERVICE,
        owner,
        {
            "type": "ClusterIP",
            "selector": selector_labels(owner),
            "ports": [access.service_port(spec, SERVICE_PORT)],
        },
    )


def render_hpa(owner: Owner, autoscaling: api.Autoscaling) -> Obj:
    """autoscaling/v2 HPA on CPU utilization of the Deployment."""
    spec: Obj = {
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": owner.name},
        "minReplicas": autoscaling.min_replicas,
        "maxReplicas": autoscaling.max_replicas,
        "metrics": [
            {
                "type": "Resource",
                "resource": {
                    "name": "cpu",
                    "target": {
                        "type": "Utilization",
                        "averageUtilization": autoscaling.target_cpu_utilization_percentage,
                    },
                },
            }
        ],
    }
    if autoscaling.scale_down_stabilization_seconds is not None:
        spec["behavior"] = {
            "scaleDown": {
                "stabilizationWindowSeconds": autoscaling.scale_down_stabilization_seconds
            }
        }
    return _object(HPA, owner, spec)


def render_network_policy(
    owner: Owner, settings: api.NetworkPolicySettings, operator_namespace: str | None = None
) -> Obj:
    """Ingress to the server port only from allowFrom (default: pods of the same namespace);
    the operator's namespace may reach the health port (probes' answers and /metrics, which the
    canary analysis reads) and nothing else."""
    peers: list[Obj] = (
        [peer.model_dump(by_alias=True, exclude_none=True) for peer in settings.allow_from]
        if settings.allow_from
        else [{"podSelector": {}}]
    )
    return _object(
        NETWORK_POLICY,
        owner,
        {
            "podSelector": {"matchLabels": selector_labels(owner)},
            "policyTypes": ["Ingress"],
            "ingress": [
                {"from": peers, "ports": [{"protocol": "TCP", "port": SERVER_PORT}]},
                *(
                    [
                        {
                            "from": [
                                {
                                    "namespaceSelector": {
                                        "matchLabels": {NAMESPACE_NAME_LABEL: operator_namespace}
                                    }
                                }
                            ],
                            "ports": [{"protocol": "TCP", "port": HEALTH_PORT}],
                        }
                    ]
                    if operator_namespace
                    else []
                ),
                *access.metrics_ingress(settings, HEALTH_PORT),
            ],
        },
    )


def render_reviewer_binding(owner: Owner) -> Obj:
    """The ClusterRoleBinding letting the model pods review tokens (with auth on)."""
    return access.render_reviewer_binding(owner.name, owner.namespace, common_labels(owner))


def render_pdb(owner: Owner) -> Obj:
    """At most one model pod voluntarily disrupted at a time."""
    return _object(
        PDB,
        owner,
        {"maxUnavailable": 1, "selector": {"matchLabels": selector_labels(owner)}},
    )


@dataclass(frozen=True)
class Children:
    """The desired children, and the kinds that must not exist."""

    wanted: list[Obj]
    unwanted: list[ChildKind]


def stable_template_hash(children: Children) -> str:
    """The template hash of the stable Deployment among rendered children."""
    for obj in children.wanted:
        if obj["kind"] == DEPLOYMENT.kind:
            hashed: str = obj["metadata"]["annotations"][canary.TEMPLATE_HASH_ANNOTATION]
            return hashed
    raise ValueError("the children have no Deployment")


def render_children(owner: Owner, spec: api.ModelDeploymentSpec, settings: Settings) -> Children:
    """Every child the spec asks for, in apply order, and the kinds to delete."""
    wanted = [render_deployment(owner, spec, settings), render_service(owner, spec)]
    unwanted: list[ChildKind] = []
    if access.auth_on(spec):
        wanted.insert(0, access.render_server_account(_metadata(owner)))
    else:
        unwanted.append(SERVICE_ACCOUNT)
    if spec.autoscaling is not None:
        wanted.append(render_hpa(owner, spec.autoscaling))
    else:
        unwanted.append(HPA)
    network = spec.network_policy or api.NetworkPolicySettings()
    if network.enabled:
        wanted.append(render_network_policy(owner, network, settings.lease_namespace))
    else:
        unwanted.append(NETWORK_POLICY)
    if max_possible_replicas(spec) > 1:
        wanted.append(render_pdb(owner))
    else:
        unwanted.append(PDB)
    return Children(wanted=wanted, unwanted=unwanted)

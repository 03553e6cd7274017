"""Typed API of the ModelDeployment custom resource.

These pydantic models are the one source of truth: the CRD in ``crds/`` is generated from them
(``make manifests``), descriptions come from the field docstrings, bounds from the field
constraints, and cross-field rules from the ``x-kubernetes-validations`` (CEL) attached to each
model. The operator parses every body it handles with the same models, so a rule the API server
enforces and a rule the operator relies on cannot drift apart.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, WithJsonSchema, model_validator
from pydantic.alias_generators import to_camel

GROUP = "serving.modeldeploy.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "ModelDeployment"
PLURAL = "modeldeployments"
SINGULAR = "modeldeployment"
SHORT_NAMES = ("mdep",)

DIGEST_PATTERN = r"^sha256:[0-9a-f]{64}$"
URI_SCHEMES = ("file", "pvc", "http", "https", "s3")
# Kubernetes resource.Quantity, as the API server's own OpenAPI spells it.
QUANTITY_PATTERN = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
    r"(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
INT_OR_PERCENT_PATTERN = r"^(0|[1-9][0-9]*)%?$"


def cel(rule: str, message: str, field_path: str | None = None) -> dict[str, str]:
    """One ``x-kubernetes-validations`` entry; ``field_path`` makes the error name the field."""
    entry = {"rule": rule, "message": message}
    if field_path:
        entry["fieldPath"] = field_path
    return entry


class Model(BaseModel):
    """Base: camelCase on the wire, unknown fields refused, docstrings become descriptions."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        use_attribute_docstrings=True,
        frozen=True,
    )


def _pattern_check(pattern: str) -> AfterValidator:
    """Check the string form of an int-or-string field (ints always pass)."""
    regex = re.compile(pattern)

    def check(value: int | str) -> int | str:
        if isinstance(value, str) and not regex.match(value):
            raise ValueError(f"{value!r} does not match {pattern}")
        return value

    return AfterValidator(check)


def _int_or_string_schema(pattern: str) -> WithJsonSchema:
    """The schema Kubernetes uses for Quantity and IntOrString."""
    return WithJsonSchema(
        {
            "x-kubernetes-int-or-string": True,
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "pattern": pattern,
        }
    )


Quantity = Annotated[
    int | str, _pattern_check(QUANTITY_PATTERN), _int_or_string_schema(QUANTITY_PATTERN)
]
IntOrPercent = Annotated[
    int | str, _pattern_check(INT_OR_PERCENT_PATTERN), _int_or_string_schema(INT_OR_PERCENT_PATTERN)
]


class ModelSource(
    Model,
    json_schema_extra={
        "x-kubernetes-validations": [
            cel(
                "!self.uri.startsWith('file://') || self.uri.matches('^file:///[^ ]+$')",
                "file:// URIs need an absolute path: file:///path/to/model",
                ".uri",
            ),
            cel(
                "!self.uri.startsWith('pvc://') || "
                "self.uri.matches('^pvc://[a-z0-9]([-a-z0-9]*[a-z0-9])?/[^ ]+$')",
                "pvc:// URIs name a claim and a path inside it: pvc://CLAIM/path/in/claim",
                ".uri",
            ),
            cel(
                "!self.uri.startsWith('s3://') || "
                "self.uri.matches('^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]/[^ ]+$')",
                "s3:// URIs name a bucket and a key: s3://bucket/key",
                ".uri",
            ),
            cel(
                "!(self.uri.startsWith('http://') || self.uri.startsWith('https://')) || "
                "self.uri.matches('^https?://[^/ ]+/[^ ]*$')",
                "http(s):// URIs need a host and a path: https://host/path/model.joblib",
                ".uri",
            ),
            cel(
                "!has(self.trustedTypes) || self.format == 'skops'",
                "trustedTypes only applies to format: skops",
                ".trustedTypes",
            ),
            cel(
                "!has(self.credentialsSecret) || "
                "self.uri.startsWith('s3://') || self.uri.startsWith('http')",
                "credentialsSecret is only used to download http(s):// and s3:// models",
                ".credentialsSecret",
            ),
        ]
    },
):
    """Where the model artifact is and how to load it."""

    uri: str = Field(
        min_length=1,
        max_length=2048,
        pattern=r"^(file|pvc|https?|s3)://",
    )
    """Where the model artifact is: file:///path (inside the image or a mounted volume),
    pvc://CLAIM/path/in/claim, http(s)://host/path (downloaded before the server starts),
    or s3://bucket/key."""

    format: Literal["joblib", "skops"] = "joblib"
    """Serialization format: joblib (pickle-based; trust the source) or skops (loads without
    pickle, refusing untrusted types)."""

    digest: str | None = Field(default=None, pattern=DIGEST_PATTERN)
    """sha256:<64 hex> of the artifact's bytes. When set, a model whose bytes differ is never
    served: the check runs before anything is deserialized."""

    version: str | None = Field(default=None, max_length=63)
    """Free-text version shown in status; changing it rolls out like any spec change."""

    trusted_types: list[Annotated[str, Field(min_length=1, max_length=256)]] | None = Field(
        default=None, max_length=32
    )
    """skops only: extra types the file may contain beyond skops' defaults, for example
    sklearn.tree._tree.Tree for tree ensembles. Each one is code you trust."""

    credentials_secret: str | None = Field(
        default=None, max_length=253, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"
    )
    """Name of a Secret in the same namespace whose keys become environment variables of the
    download step only (for example AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
    AWS_ENDPOINT_URL). The serving container never sees them."""


class Autoscaling(
    Model,
    json_schema_extra={
        "x-kubernetes-validations": [
            cel(
                "self.minReplicas <= self.maxReplicas",
                "minReplicas must be less than or equal to maxReplicas",
                ".minReplicas",
            )
        ]
    },
):
    """HorizontalPodAutoscaler settings; when present, the HPA owns the replica count."""

    @model_validator(mode="after")
    def _bounds_ordered(self) -> Autoscaling:
        # Twin of the CEL rule above, for bodies that reach the operator without it.
        if self.min_replicas > self.max_replicas:
            raise ValueError("minReplicas must be less than or equal to maxReplicas")
        return self

    def bound(self, replicas: int) -> int:
        """``replicas`` brought within [minReplicas, maxReplicas], as the autoscaler would."""
        return min(max(replicas, self.min_replicas), self.max_replicas)

    min_replicas: int = Field(default=1, ge=1, le=1000)
    """Fewest replicas the autoscaler keeps."""

    max_replicas: int = Field(ge=1, le=1000)
    """Most replicas the autoscaler may run."""

    target_cpu_utilization_percentage: int = Field(
        default=70, ge=1, le=100, alias="targetCPUUtilizationPercentage"
    )
    """Average CPU utilization, in percent of the CPU request, that the autoscaler aims for."""

    scale_down_stabilization_seconds: int | None = Field(default=None, ge=0, le=3600)
    """How long the autoscaler waits before scaling down (Kubernetes default: 300)."""


_RESOURCE_NAMES = "['cpu', 'memory', 'ephemeral-storage']"


class Resources(
    Model,
    json_schema_extra={
        "x-kubernetes-validations": [
            cel(
                "!has(self.limits) || !has(self.requests) || self.requests.all(k, "
                "!(k in self.limits) || "
                "quantity(string(self.limits[k]))"
                ".compareTo(quantity(string(self.requests[k]))) >= 0)",
                "each limit must be greater than or equal to its request",
                ".limits",
            ),
            cel(
                "!has(self.requests) || self.requests.all(k, k in " + _RESOURCE_NAMES + ")",
                "requests may name cpu, memory and ephemeral-storage",
                ".requests",
            ),
            cel(
                "!has(self.limits) || self.limits.all(k, k in " + _RESOURCE_NAMES + ")",
                "limits may name cpu, memory and ephemeral-storage",
                ".limits",
            ),
        ]
    },
):
    """Compute resources of the model server container."""

    requests: dict[str, Quantity] | None = Field(default=None, max_length=3)
    """Minimum resources, e.g. {cpu: 500m, memory: 512Mi}. Autoscaling measures CPU against
    the CPU request."""

    limits: dict[str, Quantity] | None = Field(default=None, max_length=3)
    """Maximum resources. The server sizes its worker count from the CPU limit."""


class Server(Model):
    """The model server container."""

    image: str | None = Field(default=None, min_length=1, max_length=512, pattern=r"^[^\s]+$")
    """Override of the model server image (default: the operator's configured image)."""


_ZERO = "['0', '0%']"


class Rollout(
    Model,
    json_schema_extra={
        "x-kubernetes-validations": [
            cel(
                f"!has(self.maxSurge) || !(string(self.maxSurge) in {_ZERO}) || "
                f"(has(self.maxUnavailable) && !(string(self.maxUnavailable) in {_ZERO}))",
                "maxSurge and maxUnavailable cannot both be zero: the rollout could never progress",
                ".maxSurge",
            )
        ]
    },
):
    """Rolling-update controls. The defaults keep full capacity during a rollout."""

    max_surge: IntOrPercent | None = None
    """Extra pods allowed above the desired count during a rollout (number or percent;
    default 25%)."""

    max_unavailable: IntOrPercent | None = None
    """Pods allowed to be unavailable during a rollout (number or percent; default 0, so
    capacity never drops)."""

    progress_deadline_seconds: int | None = Field(default=None, ge=10, le=86400)
    """Seconds a rollout may make no progress before it is reported Stalled
    (ProgressDeadlineExceeded); default 600."""


class LabelSelectorRequirement(Model):
    """A label selector requirement (Kubernetes meta/v1)."""

    key: str = Field(min_length=1, max_length=317)
    """The label key."""

    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    """How the key relates to the values."""

    values: list[str] | None = None
    """Values for In and NotIn; empty for Exists and DoesNotExist."""


class LabelSelector(Model):
    """A Kubernetes label selector; empty selects everything."""

    match_labels: dict[str, str] | None = None
    """Labels that must match exactly."""

    match_expressions: list[LabelSelectorRequirement] | None = None
    """Set-based requirements."""


class IPBlock(Model):
    """A CIDR range allowed to reach the model pods."""

    cidr: str = Field(min_length=1, max_length=64)
    """The range, e.g. 10.0.0.0/8."""

    except_: list[str] | None = Field(default=None, alias="except")
    """Sub-ranges excluded from the range."""


class PeerSelector(
    Model,
    json_schema_extra={
        "x-kubernetes-validations": [
            cel(
                "has(self.podSelector) || has(self.namespaceSelector) || has(self.ipBlock)",
                "a peer needs podSelector, namespaceSelector or ipBlock",
            ),
            cel(
                "!has(self.ipBlock) || !(has(self.podSelector) || has(self.namespaceSelector))",
                "ipBlock cannot be combined with podSelector or namespaceSelector",
                ".ipBlock",
            ),
        ]
    },
):
    """A NetworkPolicy peer allowed to reach the model pods."""

    pod_selector: LabelSelector | None = None
    """Pods (in this namespace, or in the namespaces of namespaceSelector) that may connect."""

    namespace_selector: LabelSelector | None = None
    """Namespaces whose pods may connect."""

    ip_block: IPBlock | None = None
    """A CIDR range that may connect."""


class NetworkPolicySettings(Model):
    """Network isolation of the model pods."""

    enabled: bool = True
    """Create a NetworkPolicy that admits traffic to the server port only from allowFrom."""

    allow_from: list[PeerSelector] | None = Field(default=None, max_length=32)
    """Peers allowed to reach the model server. Empty or absent: pods of the same namespace
    only."""


class ModelDeploymentSpec(
    Model,
    json_schema_extra={
        "x-kubernetes-validations": [
            cel(
                "!(has(self.replicas) && has(self.autoscaling))",
                "replicas and autoscaling are mutually exclusive: with autoscaling the "
                "HorizontalPodAutoscaler owns the replica count",
                ".replicas",
            ),
            cel(
                "!has(self.autoscaling) || !has(self.resources) || "
                "!has(self.resources.requests) || 'cpu' in self.resources.requests",
                "autoscaling measures CPU against the CPU request: set resources.requests.cpu",
                ".resources",
            ),
        ]
    },
):
    """Desired state of a served model."""

    @model_validator(mode="after")
    def _replicas_or_autoscaling(self) -> ModelDeploymentSpec:
        # Twin of the CEL rule above, for bodies that reach the operator without it.
        if self.replicas is not None and self.autoscaling is not None:
            raise ValueError("replicas and autoscaling are mutually exclusive")
        return self

    model: ModelSource
    """The model artifact to serve."""

    replicas: int | None = Field(default=None, ge=0, le=1000)
    """Fixed replica count (1 when absent; 0 allowed). Not allowed together with
    autoscaling."""

    autoscaling: Autoscaling | None = None
    """Scale on CPU with a HorizontalPodAutoscaler instead of a fixed count."""

    resources: Resources | None = None
    """Requests and limits of the server container (default: requests cpu 250m, memory
    256Mi; limit memory 1Gi)."""

    server: Server | None = None
    """Model server container settings."""

    rollout: Rollout | None = None
    """Rolling-update controls."""

    network_policy: NetworkPolicySettings | None = None
    """Network isolation (on by default)."""

    suspend: bool = False
    """Scale to zero and keep every object; false brings the replicas back."""


class Condition(Model):
    """A Kubernetes condition (meta/v1 Condition)."""

    model_config = ConfigDict(frozen=False)

    type: str = Field(max_length=316)
    """Condition type: Ready, Reconciling, Stalled, Available, ModelVerified."""

    status: Literal["True", "False", "Unknown"]
    """Status of the condition."""

    reason: str = Field(max_length=1024)
    """One CamelCase word for machines."""

    message: str = Field(default="", max_length=32768)
    """Explanation for humans."""

    last_transition_time: str
    """When the status last changed (RFC 3339)."""

    observed_generation: int | None = Field(default=None, ge=0)
    """The resource generation this condition describes."""


class ServedModel(Model):
    """The model being served."""

    uri: str | None = None
    """The artifact URI."""

    digest: str | None = None
    """The pinned digest, if any."""

    version: str | None = None
    """The free-text version."""


Phase = Literal["Pending", "Progressing", "Ready", "Degraded", "Failed", "Suspended"]


class ModelDeploymentStatus(Model):
    """Observed state, written only by the operator."""

    observed_generation: int | None = None
    """The metadata.generation of this resource that the rest of status describes."""

    conditions: list[Condition] | None = Field(
        default=None,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    """Ready (summary), Reconciling and Stalled (kstatus, abnormal-true), Available."""

    phase: Phase | None = None
    """One word for humans: Pending, Progressing, Ready, Degraded, Failed, Suspended."""

    replicas: int | None = None
    """Pods of the serving Deployment."""

    ready_replicas: int | None = None
    """Pods passing their readiness probe (model loaded)."""

    updated_replicas: int | None = None
    """Pods running the current spec."""

    available_replicas: int | None = None
    """Pods ready for at least minReadySeconds."""

    desired_replicas: int | None = None
    """Replicas wanted now (spec.replicas, the autoscaler's choice, or 0 when suspended)."""

    replica_summary: str | None = None
    """ready/desired, for kubectl get."""

    selector: str | None = None
    """Label selector of the model pods (for the scale subresource)."""

    url: str | None = None
    """In-cluster base URL of the Service."""

    model: ServedModel | None = None
    """The model being served."""


class ModelDeployment(
    Model,
    json_schema_extra={
        "x-kubernetes-validations": [
            cel(
                "self.metadata.name.size() <= 63 && "
                "self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')",
                "metadata.name must be a DNS-1035 label (at most 63 lowercase letters, digits "
                "and '-', starting with a letter): it names the Service",
            )
        ]
    },
):
    """A scikit-learn model served on Kubernetes."""

    api_version: Literal["serving.modeldeploy.io/v1alpha1"] = "serving.modeldeploy.io/v1alpha1"
    """APIVersion of this object."""

    kind: Literal["ModelDeployment"] = "ModelDeployment"
    """Kind of this object."""

    metadata: dict[str, Any] = Field(default_factory=dict)
    """Standard object metadata."""

    spec: ModelDeploymentSpec
    """Desired state."""

    status: ModelDeploymentStatus | None = None
    """Observed state."""


def parse_spec(spec: dict[str, Any]) -> ModelDeploymentSpec:
    """Parse a spec as it arrives from the API server (camelCase); raises ValidationError."""
    return ModelDeploymentSpec.model_validate(spec)

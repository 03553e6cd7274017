"""Typed API of the ModelDeployment custom resource.

These pydantic models are the one source of truth: the CRD in ``crds/`` is generated from them
(``make manifests``), descriptions come from the field docstrings, bounds from the field
constraints, and cross-field rules from the ``x-kubernetes-validations`` (CEL) attached to each
model. The operator parses every body it handles with the same models, so a rule the API server
enforces and a rule the operator relies on cannot drift apart.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from typing import Annotated, Any, Literal, Self, cast

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, WithJsonSchema, model_validator
from pydantic.alias_generators import to_camel

from modelserver import uris

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

_SUFFIXES = {
    "n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"), "": Decimal(1),
    "k": Decimal("1e3"), "M": Decimal("1e6"), "G": Decimal("1e9"), "T": Decimal("1e12"),
    "P": Decimal("1e15"), "E": Decimal("1e18"),
    "Ki": Decimal(2**10), "Mi": Decimal(2**20), "Gi": Decimal(2**30), "Ti": Decimal(2**40),
    "Pi": Decimal(2**50), "Ei": Decimal(2**60),
}  # fmt: skip
_QUANTITY = re.compile(QUANTITY_PATTERN)


def parse_quantity(quantity: int | float | str) -> Decimal:
    """Any Kubernetes quantity the schema accepts (``0.5m``, ``1500u``, ``1k``, ``2Gi``,
    ``1e3``) as an exact number; ValueError for anything else."""
    text = str(quantity).strip()
    if not _QUANTITY.match(text):
        raise ValueError(f"{quantity!r} is not a Kubernetes quantity")
    # Binary suffixes first (two letters); an exponent (1e3) ends in a digit, not a suffix.
    suffix = next(
        (s for s in sorted(_SUFFIXES, key=len, reverse=True) if s and text.endswith(s)), ""
    )
    number, multiplier = text[: len(text) - len(suffix)], _SUFFIXES[suffix]
    try:
        return Decimal(number) * multiplier
    except InvalidOperation as error:  # pragma: no cover - the pattern already refused it
        raise ValueError(f"{quantity!r} is not a Kubernetes quantity") from error


def redact_uri(uri: str) -> str:
    """``uri`` safe to show in status, Events and logs, which anyone who can read the resource
    reads: no userinfo, no query values (presigned URLs), no fragment. The model server's rules
    (``modelserver.uris``, standard library only), so a URI reads the same everywhere."""
    return uris.redact(uri)


# The Python twin of each CEL rule, by its CEL text: a body that reached the operator without
# the API server's checks (an older CRD) is refused with the same message.
TWINS: dict[str, Callable[[Any], bool]] = {}


def cel(
    rule: str, message: str, field_path: str | None = None, *, twin: Callable[[Any], bool]
) -> dict[str, str]:
    """One ``x-kubernetes-validations`` entry; ``field_path`` makes the error name the field;
    ``twin`` is the same rule in Python, on the parsed model (True when the rule holds)."""
    entry = {"rule": rule, "message": message}
    if field_path:
        entry["fieldPath"] = field_path
    TWINS[rule] = twin
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

    @model_validator(mode="after")
    def _cel_twins(self) -> Self:
        for entry in cel_rules(type(self)):
            if not TWINS[entry["rule"]](self):
                raise ValueError(entry["message"])
        return self


def cel_rules(model: type[BaseModel]) -> list[dict[str, str]]:
    """The ``x-kubernetes-validations`` declared on ``model`` itself."""
    extra = model.model_config.get("json_schema_extra")
    rules = extra.get("x-kubernetes-validations", []) if isinstance(extra, dict) else []
    return cast(list[dict[str, str]], rules)


def _search(pattern: str, text: str) -> bool:
    """CEL's ``matches`` (RE2, unanchored unless the pattern anchors itself)."""
    return re.search(pattern, text) is not None


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


def _uri_rules() -> list[dict[str, str]]:
    """The URI rules every downloaded artifact follows (the model, the reference profile)."""
    return [
        cel(
            "!self.uri.startsWith('file://') || self.uri.matches('^file:///[^ ]+$')",
            "file:// URIs need an absolute path: file:///path/to/model",
            ".uri",
            twin=lambda m: not m.uri.startswith("file://") or _search(r"^file:///[^ ]+$", m.uri),
        ),
        cel(
            "!self.uri.startsWith('pvc://') || "
            "self.uri.matches('^pvc://[a-z0-9]([-a-z0-9]*[a-z0-9])?/[^ ]+$')",
            "pvc:// URIs name a claim and a path inside it: pvc://CLAIM/path/in/claim",
            ".uri",
            twin=lambda m: (
                not m.uri.startswith("pvc://")
                or _search(r"^pvc://[a-z0-9]([-a-z0-9]*[a-z0-9])?/[^ ]+$", m.uri)
            ),
        ),
        cel(
            "!self.uri.startsWith('s3://') || "
            "self.uri.matches('^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]/[^ ]+$')",
            "s3:// URIs name a bucket and a key: s3://bucket/key",
            ".uri",
            twin=lambda m: (
                not m.uri.startswith("s3://")
                or _search(r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]/[^ ]+$", m.uri)
            ),
        ),
        cel(
            "!(self.uri.startsWith('http://') || self.uri.startsWith('https://')) || "
            "self.uri.matches('^https?://[^/ ]+/[^ ]*$')",
            "http(s):// URIs need a host and a path: https://host/path/model.joblib",
            ".uri",
            twin=lambda m: (
                not m.uri.startswith(("http://", "https://"))
                or _search(r"^https?://[^/ ]+/[^ ]*$", m.uri)
            ),
        ),
    ]


class ModelSource(
    Model,
    json_schema_extra={
        "x-kubernetes-validations": [
            *_uri_rules(),
            cel(
                "!has(self.trustedTypes) || self.format == 'skops'",
                "trustedTypes only applies to format: skops",
                ".trustedTypes",
                twin=lambda m: m.trusted_types is None or m.format == "skops",
            ),
            cel(
                "!has(self.credentialsSecret) || "
                "self.uri.startsWith('s3://') || self.uri.startsWith('http')",
                "credentialsSecret is only used to download http(s):// and s3:// models",
                ".credentialsSecret",
                twin=lambda m: m.credentials_secret is None or m.uri.startswith(("s3://", "http")),
            ),
            cel(
                "!(self.uri.startsWith('http://') && "
                "(!has(self.format) || self.format == 'joblib') && !has(self.digest))",
                "a joblib (pickle) model over plain http:// runs whatever code is put in it on the "
                "way: set model.digest (or use https://, s3:// or format: skops)",
                ".digest",
                twin=lambda m: (
                    not (m.uri.startswith("http://") and m.format == "joblib" and m.digest is None)
                ),
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

    max_size_bytes: int | None = Field(default=None, ge=1, le=2**40)
    """Largest artifact the download step accepts (http(s):// and s3://; default 4 GiB): a
    bigger or endless answer fails the download instead of filling the node's disk. Also the
    size limit of the volume the model is downloaded into."""

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
                twin=lambda a: a.min_replicas <= a.max_replicas,
            )
        ]
    },
):
    """HorizontalPodAutoscaler settings; when present, the HPA owns the replica count."""

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
_RESOURCE_KEYS = {"cpu", "memory", "ephemeral-storage"}


def _limits_cover_requests(resources: Resources) -> bool:
    if not resources.limits or not resources.requests:
        return True
    return all(
        parse_quantity(resources.limits[key]) >= parse_quantity(value)
        for key, value in resources.requests.items()
        if key in resources.limits
    )


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
                twin=_limits_cover_requests,
            ),
            cel(
                "!has(self.requests) || self.requests.all(k, k in " + _RESOURCE_NAMES + ")",
                "requests may name cpu, memory and ephemeral-storage",
                ".requests",
                twin=lambda r: not r.requests or set(r.requests) <= _RESOURCE_KEYS,
            ),
            cel(
                "!has(self.limits) || self.limits.all(k, k in " + _RESOURCE_NAMES + ")",
                "limits may name cpu, memory and ephemeral-storage",
                ".limits",
                twin=lambda r: not r.limits or set(r.limits) <= _RESOURCE_KEYS,
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

    rate_limit: RateLimit | None = None
    """Requests per second each pod admits (health and metrics aside); beyond it 429 with
    Retry-After."""


# -- inference access (issue 13): who may call the model, over what, how often ----------------


class RateLimit(
    Model,
    json_schema_extra={
        "x-kubernetes-validations": [
            cel(
                # The schema's minimum alone lets 0 through: the API server compares a whole
                # number with the minimum truncated to a whole number (0.01 -> 0).
                "self.requestsPerSecond >= 0.01",
                "requestsPerSecond must be at least 0.01",
                ".requestsPerSecond",
                twin=lambda r: r.requests_per_second >= 0.01,
            )
        ]
    },
):
    """A per-pod token bucket, shared by the server's worker processes."""

    requests_per_second: float = Field(le=1_000_000)  # at least 0.01: the CEL rule above
    """Average requests per second one pod admits."""

    burst: int | None = Field(default=None, ge=1, le=1_000_000)
    """Requests admitted at once above the average (default: one second's worth)."""


class AuthMode(StrEnum):
    """How callers prove who they are."""

    NONE = "None"
    KUBERNETES = "Kubernetes"


class Auth(Model):
    """Who may call the model."""

    mode: AuthMode = AuthMode.NONE
    """None: any caller the NetworkPolicy admits. Kubernetes: callers send Authorization:
    Bearer <token> (a ServiceAccount token); the server checks it with a TokenReview and a
    SubjectAccessReview for create on modeldeployments/predict named after this resource, so
    RBAC decides (a Role with that rule, bound to the caller)."""


class Tls(Model):
    """HTTPS for the model server."""

    secret_name: str = Field(
        min_length=1, max_length=253, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"
    )
    """A kubernetes.io/tls Secret in the same namespace (tls.crt, tls.key). The server picks up
    a renewed certificate within about a minute, without restarting; status.url becomes
    https://."""


_ZERO = "['0', '0%']"


class CanaryStep(Model):
    """One step of a canary: a share of the serving pods runs the new version for a while."""

    weight: int = Field(ge=1, le=99)
    """Percent of the serving pods that run the new version during this step."""

    pause_seconds: int = Field(default=60, ge=0, le=86400)
    """How long to hold this step (while the analysis judges the canary) before the next."""


class CanaryAnalysis(Model):
    """The gates that judge the canary against the stable version on the same traffic."""

    interval_seconds: int = Field(default=30, ge=5, le=3600)
    """How often the canary is judged (its pods' and the stable pods' /metrics are read)."""

    min_requests: int = Field(default=50, ge=1, le=10_000_000)
    """Requests the canary must have answered since the last verdict before it is judged."""

    max_error_rate: float = Field(default=0.01, ge=0, le=1)
    """Highest share of 5xx answers from the canary."""

    max_latency_ratio: float = Field(default=2.0, ge=0.01, le=1000)
    """Highest canary p99 latency / stable p99 latency."""

    max_prediction_shift: float = Field(default=0.2, ge=0, le=100)
    """Highest population stability index between the canary's and the stable version's
    prediction distributions (per class for classifiers, a histogram for regressors)."""

    failure_limit: int = Field(default=1, ge=0, le=100)
    """Failed intervals tolerated; one more rolls the canary back."""


def _default_steps() -> list[CanaryStep]:
    return [CanaryStep(weight=25, pause_seconds=60), CanaryStep(weight=50, pause_seconds=60)]


class Canary(Model):
    """How a canary proceeds; after its last step the new version is promoted."""

    steps: list[CanaryStep] = Field(default_factory=_default_steps, min_length=1, max_length=20)
    """The steps, in order (default: 25 % for 60 s, then 50 % for 60 s)."""

    analysis: CanaryAnalysis = Field(default_factory=CanaryAnalysis)
    """The gates judged at every interval."""


class Rollout(
    Model,
    json_schema_extra={
        "x-kubernetes-validations": [
            cel(
                "!has(self.canary) || self.strategy == 'Canary'",
                "rollout.canary is only used with strategy Canary: set rollout.strategy: Canary",
                ".canary",
                twin=lambda r: r.canary is None or r.strategy == "Canary",
            ),
            cel(
                f"!has(self.maxSurge) || !(string(self.maxSurge) in {_ZERO}) || "
                f"(has(self.maxUnavailable) && !(string(self.maxUnavailable) in {_ZERO}))",
                "maxSurge and maxUnavailable cannot both be zero: the rollout could never progress",
                ".maxSurge",
                twin=lambda r: (
                    r.max_surge is None
                    or str(r.max_surge) not in ("0", "0%")
                    or (r.max_unavailable is not None and str(r.max_unavailable) not in ("0", "0%"))
                ),
            ),
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

    strategy: Literal["RollingUpdate", "Canary"] = "RollingUpdate"
    """RollingUpdate replaces the pods as soon as new ones are Ready; Canary runs the new
    version beside the stable one in steps, judged by an analysis, and promotes or rolls back."""

    canary: Canary | None = None
    """Steps and analysis of the Canary strategy (defaults apply when absent)."""

    def canary_settings(self) -> Canary:
        return self.canary or Canary()


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
                twin=lambda p: (
                    p.pod_selector is not None
                    or p.namespace_selector is not None
                    or p.ip_block is not None
                ),
            ),
            cel(
                "!has(self.ipBlock) || !(has(self.podSelector) || has(self.namespaceSelector))",
                "ipBlock cannot be combined with podSelector or namespaceSelector",
                ".ipBlock",
                twin=lambda p: (
                    p.ip_block is None or (p.pod_selector is None and p.namespace_selector is None)
                ),
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


class NetworkPolicySettings(
    Model,
    json_schema_extra={
        "x-kubernetes-validations": [
            cel(
                "!has(self.allowMetricsFrom) || !has(self.enabled) || self.enabled",
                "allowMetricsFrom needs the NetworkPolicy: it has no effect with enabled: false",
                ".allowMetricsFrom",
                twin=lambda n: n.allow_metrics_from is None or n.enabled,
            )
        ]
    },
):
    """Network isolation of the model pods."""

    enabled: bool = True
    """Create a NetworkPolicy that admits traffic to the server port only from allowFrom."""

    allow_from: list[PeerSelector] | None = Field(default=None, max_length=32)
    """Peers allowed to reach the model server. Empty or absent: pods of the same namespace
    only."""

    allow_metrics_from: list[PeerSelector] | None = Field(default=None, max_length=32)
    """Peers (for example the Prometheus namespace) allowed to reach the metrics and health
    port only, never inference."""


# -- monitoring (issue 12) -----------------------------------------------------------------------


class ReferenceSource(Model, json_schema_extra={"x-kubernetes-validations": [*_uri_rules()]}):
    """Where the reference profile is (`python -m modelserver profile`); fetched like the model."""

    uri: str = Field(min_length=1, max_length=2048, pattern=r"^(file|pvc|https?|s3)://")
    """file:///path, pvc://CLAIM/path, http(s)://host/path or s3://bucket/key of the JSON
    profile, as for the model."""

    digest: str | None = Field(default=None, pattern=DIGEST_PATTERN)
    """sha256:<64 hex> of the profile's bytes; a profile whose bytes differ is never used."""

    credentials_secret: str | None = Field(
        default=None, max_length=253, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"
    )
    """Secret whose keys become environment variables of the profile's download step only."""


class PayloadLog(Model):
    """Sampled, redacted requests and responses sent to an HTTP sink as CloudEvents."""

    url: str = Field(min_length=1, max_length=2048, pattern=r"^https?://[^/ ]+(/[^ ]*)?$")
    """HTTP sink receiving CloudEvents (binary mode) of requests and responses."""

    sample_rate: float = Field(default=1.0, ge=0, le=1)
    """Share of requests logged (0-1)."""

    redact: list[Annotated[str, Field(min_length=1, max_length=256)]] | None = Field(
        default=None, max_length=256
    )
    """Feature names (from the reference profile or the model) or indices whose values are
    replaced by null before anything leaves the pod."""

    max_queue: int = Field(default=1000, ge=2, le=100_000)
    """Events held in memory per server process; beyond it events are dropped and counted,
    never blocking predictions."""


class Monitoring(Model):
    """Drift against a reference profile, and payload logging."""

    reference: ReferenceSource | None = None
    """Reference profile of the training data and predictions; enables the PSI metrics."""

    drift_threshold: float = Field(default=0.2, ge=0.001, le=100)
    """PSI above which a feature or the predictions count as drifting."""

    drift_window_seconds: int = Field(default=300, ge=10, le=86400)
    """Seconds of recent traffic the servers' PSI figures describe, and how long a figure must
    stay above (or back under) driftThreshold before ModelDrift turns True (or False)."""

    payload_log: PayloadLog | None = None
    """Where sampled requests and responses go."""


class ModelDeploymentSpec(
    Model,
    json_schema_extra={
        "x-kubernetes-validations": [
            cel(
                "!(has(self.replicas) && has(self.autoscaling))",
                "replicas and autoscaling are mutually exclusive: with autoscaling the "
                "HorizontalPodAutoscaler owns the replica count",
                ".replicas",
                twin=lambda s: s.replicas is None or s.autoscaling is None,
            ),
            cel(
                "!has(self.autoscaling) || !has(self.resources) || "
                "!has(self.resources.requests) || 'cpu' in self.resources.requests",
                "autoscaling measures CPU against the CPU request: set resources.requests.cpu",
                ".resources",
                twin=lambda s: (
                    s.autoscaling is None
                    or s.resources is None
                    or s.resources.requests is None
                    or "cpu" in s.resources.requests
                ),
            ),
        ]
    },
):
    """Desired state of a served model."""

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

    auth: Auth | None = None
    """Who may call the model (default: mode None)."""

    tls: Tls | None = None
    """Serve HTTPS with a certificate from a Secret."""

    suspend: bool = False
    """Scale to zero and keep every object; false brings the replicas back."""

    monitoring: Monitoring | None = None
    """Drift metrics against a reference profile and payload logging."""


class ConditionType(StrEnum):
    """The conditions the operator writes."""

    READY = "Ready"
    RECONCILING = "Reconciling"
    STALLED = "Stalled"
    AVAILABLE = "Available"
    MODEL_VERIFIED = "ModelVerified"
    MODEL_DRIFT = "ModelDrift"


class Reason(StrEnum):
    """Every condition reason the operator writes (one place; the CRD lists them)."""

    # Ready
    MODEL_SERVING = "ModelServing"
    CREATING = "Creating"
    ROLLOUT_PENDING = "RolloutPending"
    ROLLING_OUT = "RollingOut"
    REPLICAS_UNAVAILABLE = "ReplicasUnavailable"
    SUSPENDED = "Suspended"
    SCALED_TO_ZERO = "ScaledToZero"
    PROGRESS_DEADLINE_EXCEEDED = "ProgressDeadlineExceeded"
    MODEL_LOAD_FAILED = "ModelLoadFailed"
    MODEL_FETCH_FAILED = "ModelFetchFailed"
    IMAGE_PULL_FAILED = "ImagePullFailed"
    CONTAINER_CONFIG_ERROR = "ContainerConfigError"
    CONTAINER_CRASHING = "ContainerCrashing"
    APPLY_FAILED = "ApplyFailed"
    NAME_CONFLICT = "NameConflict"
    REPLICA_FAILURE = "ReplicaFailure"
    INVALID_SPEC = "InvalidSpec"
    # Reconciling / Stalled when false
    SCALING_DOWN = "ScalingDown"
    STABLE = "Stable"
    NOT_STALLED = "NotStalled"
    # Available
    MINIMUM_REPLICAS_AVAILABLE = "MinimumReplicasAvailable"
    NO_REPLICAS_AVAILABLE = "NoReplicasAvailable"
    # ModelVerified
    DIGEST_VERIFIED = "DigestVerified"
    DIGEST_MISMATCH = "DigestMismatch"
    DIGEST_NOT_PINNED = "DigestNotPinned"
    VERIFYING = "Verifying"
    # Canary (Ready / Reconciling / Stalled)
    CANARY_PROGRESSING = "CanaryProgressing"
    CANARY_ROLLED_BACK = "CanaryRolledBack"
    # ModelDrift
    DRIFT_DETECTED = "DriftDetected"
    NO_DRIFT = "NoDrift"


class Phase(StrEnum):
    """One word for humans."""

    PENDING = "Pending"
    PROGRESSING = "Progressing"
    READY = "Ready"
    DEGRADED = "Degraded"
    FAILED = "Failed"
    SUSPENDED = "Suspended"


class Condition(Model):
    """A Kubernetes condition (meta/v1 Condition)."""

    model_config = ConfigDict(frozen=False)

    type: str = Field(
        max_length=316,
        description="Condition type: " + ", ".join(ConditionType) + ".",
    )

    status: Literal["True", "False", "Unknown"]
    """Status of the condition."""

    reason: str = Field(
        max_length=1024,
        description="One CamelCase word for machines: " + ", ".join(Reason) + ".",
    )

    message: str = Field(default="", max_length=32768)
    """Explanation for humans."""

    last_transition_time: str
    """When the status last changed (RFC 3339)."""

    observed_generation: int | None = Field(default=None, ge=0)
    """The resource generation this condition describes."""


class ServedModel(Model):
    """The model being served."""

    uri: str | None = None
    """The artifact URI (userinfo and query values replaced by ***)."""

    digest: str | None = None
    """The pinned digest, if any."""

    version: str | None = None
    """The free-text version."""


class CanaryFigures(Model):
    """One version's figures over the last analysed interval."""

    requests: int | None = None
    """Requests answered in the interval."""

    error_rate: float | None = None
    """Share of 5xx answers."""

    latency_p99_seconds: float | None = None
    """99th percentile latency (from the server's histogram)."""


class CanaryAnalysisStatus(Model):
    """The last verdict of the canary analysis and the figures behind it."""

    verdict: Literal["Passed", "Failed", "Inconclusive"] | None = None
    """Passed, Failed (a gate exceeded) or Inconclusive (fewer than minRequests so far)."""

    message: str | None = Field(default=None, max_length=1024)
    """What the verdict rests on; names the failed gate and its figure."""

    stable: CanaryFigures | None = None
    """The stable version's figures."""

    canary: CanaryFigures | None = None
    """The canary's figures."""

    latency_ratio: float | None = None
    """Canary p99 / stable p99."""

    prediction_shift: float | None = None
    """PSI between the two versions' prediction distributions."""

    failures: int = 0
    """Failed intervals so far in this canary."""

    time: str | None = None
    """When the verdict was made."""


class DriftStatus(Model):
    """The drift verdict's pending change, kept in status so that a restarted operator (or a
    new leader) does not start the sustain period over."""

    pending_since: str | None = None
    """Since when the pods' PSI figures disagree with ModelDrift; it flips once this is
    monitoring.driftWindowSeconds old."""


class CanaryStatus(Model):
    """Progress of a canary rollout; the operator resumes from it after a restart."""

    state: Literal["Progressing", "Paused", "Promoted", "RolledBack"]
    """Progressing, Paused (waiting for enough traffic to judge), Promoted or RolledBack."""

    step: int = Field(ge=0)
    """The current step, from 1 (0 before the first)."""

    steps: int = Field(ge=1)
    """How many steps the canary has."""

    weight: int = Field(default=0, ge=0, le=100)
    """Measured percent of ready serving pods that run the canary."""

    progress: str = ""
    """One line for `kubectl get -o wide`."""

    model: ServedModel | None = None
    """The canary's model."""

    analysis: CanaryAnalysisStatus | None = None
    """The last analysis."""

    template_hash: str = ""
    """Which pod template (spec) the canary runs: a new one starts the canary over."""

    started_at: str | None = None
    """When the canary started."""

    step_started_at: str | None = None
    """When the current step began (its pods were asked for)."""

    split_at: str | None = None
    """When the current step's share was reached (its pause counts from here)."""

    passed: int = 0
    """Passed analyses in the current step."""

    baseline: dict[str, dict[str, float]] | None = None
    """Per version, the counters read at the start of the interval being analysed."""


class ModelDeploymentStatus(Model):
    """Observed state, written only by the operator."""

    observed_generation: int | None = None
    """The metadata.generation of this resource that the rest of status describes."""

    conditions: list[Condition] | None = Field(
        default=None,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    """Ready (summary), Reconciling and Stalled (kstatus, abnormal-true), Available,
    ModelVerified (the served bytes match model.digest)."""

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

    canary: CanaryStatus | None = None
    """The canary rollout in progress, or the last one."""

    drift: DriftStatus | None = None
    """Since when the pods' drift figures disagree with ModelDrift (with a reference profile
    only)."""


class ModelDeployment(
    Model,
    json_schema_extra={
        "x-kubernetes-validations": [
            cel(
                "self.metadata.name.size() <= 63 && "
                "self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')",
                "metadata.name must be a DNS-1035 label (at most 63 lowercase letters, digits "
                "and '-', starting with a letter): it names the Service",
                twin=lambda d: (
                    len(name := str(d.metadata.get("name", ""))) <= 63
                    and _search(r"^[a-z]([-a-z0-9]*[a-z0-9])?$", name)
                ),
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


def parse_resource(body: dict[str, Any]) -> ModelDeployment:
    """The typed resource from a watch event's body (status is the operator's own and is not
    parsed); raises ValidationError naming each field from the top (spec.model.uri)."""
    return ModelDeployment.model_validate(
        {"metadata": body.get("metadata") or {}, "spec": body.get("spec") or {}}
    )

"""Pure status computation: the children's observed state in, the ModelDeployment status out.

Follows kstatus (what Argo CD, Flux and ``kubectl wait`` read): ``observedGeneration`` is the
resource's own generation; ``Reconciling`` and ``Stalled`` are abnormal-true; ``Ready`` is the
summary. A condition's ``lastTransitionTime`` moves only when its status moves.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from modeldeploy import api
from modeldeploy.api import ConditionType, Phase, Reason

Obj = dict[str, Any]

READY = ConditionType.READY
RECONCILING = ConditionType.RECONCILING
STALLED = ConditionType.STALLED
AVAILABLE = ConditionType.AVAILABLE
MODEL_VERIFIED = ConditionType.MODEL_VERIFIED
PHASES = tuple(Phase)

# Waiting reasons after which a pod will not start without someone changing something.
_STUCK_WAITING: dict[str, Reason | None] = {
    "CrashLoopBackOff": None,
    "ImagePullBackOff": Reason.IMAGE_PULL_FAILED,
    "ErrImagePull": Reason.IMAGE_PULL_FAILED,
    "InvalidImageName": Reason.IMAGE_PULL_FAILED,
    "CreateContainerConfigError": Reason.CONTAINER_CONFIG_ERROR,
    "CreateContainerError": Reason.CONTAINER_CONFIG_ERROR,
}
_CONTAINER_REASON = {"fetch-model": Reason.MODEL_FETCH_FAILED, "server": Reason.MODEL_LOAD_FAILED}
# The model server's termination message when the artifact's bytes differ from model.digest.
_DIGEST_MISMATCH = "digest mismatch"


@dataclass(frozen=True)
class PodFailure:
    """Why the model pods cannot start, read from their container statuses."""

    reason: Reason
    message: str


@dataclass(frozen=True)
class ApplyFailure:
    """A child could not be applied: permanent ones need someone to act, the others are retried.

    ``ApplyFailed``: the API server refused the child (quota, RBAC, an exhausted Service range).
    ``NameConflict``: an object of the child's kind and name exists that this resource does not
    control; the operator does not take it over.
    """

    permanent: bool
    message: str
    reason: Reason = Reason.APPLY_FAILED


@dataclass(frozen=True)
class Observed:
    """Everything the status is computed from."""

    generation: int
    spec: api.ModelDeploymentSpec | None
    spec_error: str | None
    deployment: Mapping[str, Any] | None
    pod_failure: PodFailure | None
    selector: str
    url: str
    apply_failure: ApplyFailure | None = None
    canary: CanaryView | None = None
    drift: tuple[str, Reason, str] | None = None  # ModelDrift, with a reference profile only
    drift_clock: api.DriftStatus | None = None  # when the figures were read, pending since


@dataclass(frozen=True)
class CanaryView:
    """A canary's say in the status: its progress, and Ready's verdict while it runs (or after
    its rollback, ``stalled``)."""

    status: api.CanaryStatus | None
    ready: tuple[str, str, str] | None = None  # status, reason, message
    stalled: bool = False


@dataclass(frozen=True)
class Transition:
    """A condition whose status changed: worth a Kubernetes Event."""

    type: ConditionType
    status: str
    reason: Reason
    message: str

    @property
    def warning(self) -> bool:
        return (self.type == STALLED and self.status == "True") or (
            self.type in (READY, MODEL_VERIFIED)
            and self.status == "False"
            and self.reason not in _QUIET_REASONS
        )


_QUIET_REASONS = {
    Reason.ROLLING_OUT,
    Reason.SUSPENDED,
    Reason.SCALED_TO_ZERO,
    Reason.CREATING,
    Reason.ROLLOUT_PENDING,
    Reason.DIGEST_NOT_PINNED,
}

Wanted = tuple[str, Reason, str]  # status, reason, message


@dataclass
class _Verdict:
    phase: Phase
    ready: Wanted
    reconciling: Wanted = ("False", Reason.STABLE, "")
    stalled: Wanted = ("False", Reason.NOT_STALLED, "")
    extra: dict[str, Wanted] = field(default_factory=dict)


def summarize_pod_failure(pods: Iterable[Mapping[str, Any]]) -> PodFailure | None:
    """The first stuck container among the pods, with its termination message when it has one.

    A container is stuck while the kubelet backs off (``CrashLoopBackOff``, an image pull...).
    An init container that failed is also stuck just after it exits and while it tries again:
    it runs only until it succeeds once, so any failed try means the pod is not starting.
    """
    for pod in pods:
        status = pod.get("status") or {}
        name = (pod.get("metadata") or {}).get("name", "?")
        statuses = [
            *((c, True) for c in status.get("initContainerStatuses") or []),
            *((c, False) for c in status.get("containerStatuses") or []),
        ]
        for container, init in statuses:
            found = _stuck(container, init)
            if found is None:
                continue
            reason, detail = found
            return PodFailure(
                reason=reason,
                message=f"pod {name} container {container.get('name')}: {detail.splitlines()[-1]}",
            )
    return None


def _stuck(container: Mapping[str, Any], init: bool) -> tuple[Reason, str] | None:
    state = container.get("state") or {}
    last = (container.get("lastState") or {}).get("terminated") or {}
    crashed = _CONTAINER_REASON.get(container.get("name", ""), Reason.CONTAINER_CRASHING)
    waiting = state.get("waiting") or {}
    waiting_reason = waiting.get("reason")
    if waiting_reason in _STUCK_WAITING:
        detail = (last.get("message") or waiting.get("message") or waiting_reason).strip()
        return _STUCK_WAITING[waiting_reason] or crashed, detail
    if not init:
        return None
    terminated = state.get("terminated") or {}
    if _int(terminated.get("exitCode")) != 0:
        return crashed, _termination_detail(terminated)
    if (
        "running" in state
        and _int(container.get("restartCount")) > 0
        and _int(last.get("exitCode")) != 0
    ):
        return crashed, _termination_detail(last)
    return None


def _termination_detail(terminated: Mapping[str, Any]) -> str:
    message = (terminated.get("message") or "").strip()
    return message or f"exited with code {terminated.get('exitCode')} ({terminated.get('reason')})"


def _int(value: Any) -> int:
    return int(value) if isinstance(value, int) else 0


def _deployment_condition(deployment: Mapping[str, Any], type_: str) -> Mapping[str, Any]:
    for condition in (deployment.get("status") or {}).get("conditions") or []:
        if condition.get("type") == type_:
            return dict(condition)
    return {}


def desired_replicas(spec: api.ModelDeploymentSpec | None, deployment: Mapping[str, Any]) -> int:
    """Replicas wanted now: the Deployment's, kept within the autoscaler's bounds.

    Right after creation the Deployment asks for 1 replica until the HPA raises it to
    minReplicas; the resource is not Ready before that.
    """
    replicas = _int((deployment.get("spec") or {}).get("replicas", 1))
    if spec is not None and spec.autoscaling is not None and not spec.suspend:
        return spec.autoscaling.bound(replicas)
    return replicas


def _refused_verdict(refused: ApplyFailure, dep: Mapping[str, Any] | None) -> _Verdict:
    reason = refused.reason
    message = refused.message
    if reason == Reason.APPLY_FAILED:
        message = f"applying the children failed: {message}"
    serving = _int(((dep or {}).get("status") or {}).get("availableReplicas")) > 0
    if refused.permanent:
        return _Verdict(
            phase=Phase.DEGRADED if serving else Phase.FAILED,
            ready=("False", reason, message),
            stalled=("True", reason, message),
        )
    return _Verdict(
        phase=Phase.DEGRADED if serving else Phase.PROGRESSING,
        ready=("False", reason, message),
        reconciling=("True", reason, f"{message} (retrying)"),
    )


def _overriding_verdict(observed: Observed) -> _Verdict | None:
    """A refused child, or a canary, decides the verdict before the Deployment's rollout does.

    While a canary runs the stable version serves: progressing; after a rollback it still
    serves, but the spec is not what runs: degraded and stalled until the spec changes."""
    if observed.apply_failure is not None:
        return _refused_verdict(observed.apply_failure, observed.deployment)
    view = observed.canary
    if view is None or view.ready is None or observed.deployment is None:
        return None
    _, reason, message = view.ready
    wanted: Wanted = ("False", Reason(reason), message)
    if view.stalled:
        return _Verdict(phase=Phase.DEGRADED, ready=wanted, stalled=("True", *wanted[1:]))
    return _Verdict(phase=Phase.PROGRESSING, ready=wanted, reconciling=("True", *wanted[1:]))


def _verdict(observed: Observed, previous_phase: str | None) -> _Verdict:  # noqa: PLR0911
    if observed.spec is None:
        message = observed.spec_error or "invalid spec"
        return _Verdict(
            phase=Phase.FAILED,
            ready=("False", Reason.INVALID_SPEC, message),
            stalled=("True", Reason.INVALID_SPEC, message),
        )
    dep = observed.deployment
    overriding = _overriding_verdict(observed)
    if overriding is not None:
        return overriding
    if dep is None:
        creating = "creating the model server Deployment"
        return _Verdict(
            phase=Phase.PENDING,
            ready=("False", Reason.CREATING, creating),
            reconciling=("True", Reason.CREATING, creating),
        )
    st = dep.get("status") or {}
    desired = desired_replicas(observed.spec, dep)
    replicas, updated = _int(st.get("replicas")), _int(st.get("updatedReplicas"))
    available = _int(st.get("availableReplicas"))
    counts = f"{updated}/{desired} updated, {available}/{desired} available"

    if _int(st.get("observedGeneration")) < _int((dep.get("metadata") or {}).get("generation")):
        return _Verdict(
            phase=Phase.PROGRESSING,
            ready=(
                "False",
                Reason.ROLLOUT_PENDING,
                "the Deployment controller has not seen the change yet",
            ),
            reconciling=("True", Reason.ROLLOUT_PENDING, "waiting for the Deployment controller"),
        )

    progressing = _deployment_condition(dep, "Progressing")
    failure = _deployment_condition(dep, "ReplicaFailure")
    stuck: tuple[Reason, str] | None = None
    if progressing.get("reason") == "ProgressDeadlineExceeded":
        detail = (
            observed.pod_failure.message if observed.pod_failure else progressing.get("message", "")
        )
        stuck = (
            Reason.PROGRESS_DEADLINE_EXCEEDED,
            f"rollout made no progress in time ({counts}): {detail}",
        )
    elif failure.get("status") == "True":
        stuck = (Reason.REPLICA_FAILURE, failure.get("message") or "pods could not be created")
    elif observed.pod_failure is not None and (
        updated < desired or available < desired or replicas > updated
    ):
        stuck = (observed.pod_failure.reason, observed.pod_failure.message)
    if stuck is not None:
        reason, message = stuck
        return _Verdict(
            phase=Phase.DEGRADED if available > 0 else Phase.FAILED,
            ready=("False", reason, message),
            stalled=("True", reason, message),
        )

    if desired == 0:
        reason = Reason.SUSPENDED if observed.spec.suspend else Reason.SCALED_TO_ZERO
        if replicas > 0:
            left = f"scaling to zero ({replicas} pods left)"
            return _Verdict(
                phase=Phase.PROGRESSING,
                ready=("False", reason, left),
                reconciling=("True", Reason.SCALING_DOWN, left),
            )
        return _Verdict(
            phase=Phase.SUSPENDED, ready=("False", reason, "scaled to zero; no pod serves")
        )

    if updated < desired or replicas > updated:
        return _Verdict(
            phase=Phase.PROGRESSING,
            ready=("False", Reason.ROLLING_OUT, f"rolling out: {counts}"),
            reconciling=("True", Reason.ROLLING_OUT, f"rolling out: {counts}"),
        )
    if available < desired:
        phase = (
            Phase.DEGRADED if previous_phase in (Phase.READY, Phase.DEGRADED) else Phase.PROGRESSING
        )
        message = f"{available}/{desired} replicas available"
        return _Verdict(
            phase=phase,
            ready=("False", Reason.REPLICAS_UNAVAILABLE, message),
            reconciling=("True", Reason.REPLICAS_UNAVAILABLE, message),
        )
    model = observed.spec.model
    what = api.redact_uri(model.uri) + (f" version {model.version}" if model.version else "")
    return _Verdict(
        phase=Phase.READY,
        ready=("True", Reason.MODEL_SERVING, f"{available}/{desired} replicas serve {what}"),
    )


def _model_verified(observed: Observed, phase: Phase, previous: Wanted | None) -> Wanted:
    """Whether the served bytes are the pinned ones: the server compares model.digest before it
    deserializes anything, so a replica that serves the current spec has checked them."""
    spec = observed.spec
    if spec is None or not spec.model.digest:
        return (
            "False",
            Reason.DIGEST_NOT_PINNED,
            "spec.model.digest is not set: the artifact's bytes are not checked",
        )
    failure = observed.pod_failure
    if failure is not None and _DIGEST_MISMATCH in failure.message:
        return ("False", Reason.DIGEST_MISMATCH, failure.message)
    if phase == Phase.READY:
        return (
            "True",
            Reason.DIGEST_VERIFIED,
            f"every serving replica checked {spec.model.digest}",
        )
    if previous is not None and previous[1] == Reason.DIGEST_VERIFIED:
        return previous  # still true of the replicas that serve; the rollout says the rest
    return ("Unknown", Reason.VERIFYING, f"waiting for replicas that checked {spec.model.digest}")


def _meaningful(type_: str, status: str, reason: Reason, old: Mapping[str, Any] | None) -> bool:
    """Ready turning False for a problem or True after one, Stalled becoming True or
    clearing, a digest mismatch: an Event."""
    if type_ == READY:
        # Routine progress (creating, rolling out, scaling, and Ready at its end) is not an
        # Event: the Deployment tells that much, and every Event is a write. A problem is,
        # and so is the recovery from one.
        if old is None:
            return False
        return (old.get("reason") if status == "True" else reason) not in _QUIET_REASONS
    if type_ == STALLED:
        return status == "True" or old is not None
    if type_ == MODEL_VERIFIED:
        return status == "False" and old is not None
    if type_ == ConditionType.MODEL_DRIFT:
        return status == "True" or old is not None
    return False


def merge_conditions(
    previous: Sequence[Mapping[str, Any]],
    wanted: Mapping[ConditionType, Wanted],
    generation: int,
    now: str,
) -> tuple[list[api.Condition], list[Transition]]:
    """New conditions, keeping lastTransitionTime where the status did not change."""
    before = {str(c.get("type")): c for c in previous}
    out: list[api.Condition] = []
    transitions: list[Transition] = []
    for type_, (status, reason, message) in wanted.items():
        old = before.get(type_)
        changed = old is None or old.get("status") != status
        out.append(
            api.Condition(
                type=type_,
                status=status,
                reason=reason,
                message=message,
                last_transition_time=now
                if changed or not old
                else str(old.get("lastTransitionTime") or now),
                observed_generation=generation,
            )
        )
        if changed and _meaningful(type_, status, reason, old):
            transitions.append(Transition(type_, status, reason, message))
    return out, transitions


def _previous(conditions: Sequence[Mapping[str, Any]], type_: str) -> Wanted | None:
    for condition in conditions:
        if condition.get("type") == type_:
            try:
                reason = Reason(str(condition.get("reason")))
            except ValueError:
                return None
            return (str(condition.get("status")), reason, str(condition.get("message", "")))
    return None


def previous_condition(conditions: Sequence[Mapping[str, Any]], type_: str) -> Wanted | None:
    """A condition of the current status as (status, reason, message), if it is there."""
    return _previous(conditions, type_)


def compute_status(
    observed: Observed, previous: Mapping[str, Any] | None, now: str
) -> tuple[Obj, list[Transition]]:
    """The status to write (camelCase, complete, validated by the typed model), and the
    condition transitions."""
    previous = previous or {}
    verdict = _verdict(observed, previous.get("phase"))
    dep_status = (observed.deployment or {}).get("status") or {}
    desired = desired_replicas(observed.spec, observed.deployment) if observed.deployment else 0
    ready_replicas = _int(dep_status.get("readyReplicas"))
    available = _int(dep_status.get("availableReplicas"))
    old_conditions = previous.get("conditions") or []

    wanted: dict[ConditionType, Wanted] = {
        READY: verdict.ready,
        RECONCILING: verdict.reconciling,
        STALLED: verdict.stalled,
        AVAILABLE: (
            "True",
            Reason.MINIMUM_REPLICAS_AVAILABLE,
            f"{available} replicas serve requests",
        )
        if available > 0
        else ("False", Reason.NO_REPLICAS_AVAILABLE, "no replica serves requests"),
        MODEL_VERIFIED: _model_verified(
            observed, verdict.phase, _previous(old_conditions, MODEL_VERIFIED)
        ),
    }
    if observed.drift is not None:
        wanted[ConditionType.MODEL_DRIFT] = observed.drift
    conditions, transitions = merge_conditions(old_conditions, wanted, observed.generation, now)

    served: api.ServedModel | None = None
    if verdict.phase == Phase.READY and observed.spec is not None:
        model = observed.spec.model
        served = api.ServedModel(
            uri=api.redact_uri(model.uri), digest=model.digest, version=model.version
        )
    elif previous.get("model"):
        served = api.ServedModel.model_validate(previous["model"])
        if served.uri:
            served = served.model_copy(update={"uri": api.redact_uri(served.uri)})
    elif observed.spec is not None:
        served = api.ServedModel(uri=api.redact_uri(observed.spec.model.uri))

    typed = api.ModelDeploymentStatus(
        observed_generation=observed.generation,
        conditions=conditions,
        phase=verdict.phase,
        replicas=_int(dep_status.get("replicas")),
        ready_replicas=ready_replicas,
        updated_replicas=_int(dep_status.get("updatedReplicas")),
        available_replicas=available,
        desired_replicas=desired,
        replica_summary=f"{ready_replicas}/{desired}",
        selector=observed.selector,
        url=observed.url,
        model=served,
        canary=observed.canary.status if observed.canary is not None else None,
        drift=observed.drift_clock,
    )
    status: Obj = typed.model_dump(by_alias=True, exclude_none=True, mode="json")
    return status, transitions


# What moves at every step of a rollout: the replica figures, the phase between Pending and
# Progressing, and the conditions' reasons and messages (their statuses stay).
_PROGRESS_FIELDS = frozenset(
    {
        "phase",
        "conditions",
        "replicas",
        "readyReplicas",
        "updatedReplicas",
        "availableReplicas",
        "desiredReplicas",
        "replicaSummary",
    }
)


def _condition_states(status: Mapping[str, Any]) -> set[tuple[str, str]]:
    return {(str(c.get("type")), str(c.get("status"))) for c in status.get("conditions") or []}


def only_progress_differs(current: Mapping[str, Any] | None, new: Mapping[str, Any]) -> bool:
    """Whether ``new`` tells nothing that ``current`` does not, but how far a rollout got: the
    same observedGeneration and the same status for every condition (what kstatus, Argo CD,
    Flux and ``kubectl wait`` read). Such a write may wait a little and carry several steps."""
    current = current or {}
    changed = {key for key in set(current) | set(new) if current.get(key) != new.get(key)}
    return (
        bool(changed)
        and changed <= _PROGRESS_FIELDS
        and _condition_states(current) == _condition_states(new)
    )


def status_differs(current: Mapping[str, Any] | None, new: Mapping[str, Any]) -> bool:
    """Whether writing ``new`` would change anything the operator writes."""
    current = current or {}
    return any(current.get(key) != value for key, value in new.items()) or any(
        key in current and key not in new for key in ("model", "canary", "drift")
    )

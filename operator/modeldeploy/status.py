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

Obj = dict[str, Any]

READY = "Ready"
RECONCILING = "Reconciling"
STALLED = "Stalled"
AVAILABLE = "Available"
CONDITION_TYPES = (READY, RECONCILING, STALLED, AVAILABLE)

# Waiting reasons after which a pod will not start without someone changing something.
_STUCK_WAITING = {
    "CrashLoopBackOff": None,
    "ImagePullBackOff": "ImagePullFailed",
    "ErrImagePull": "ImagePullFailed",
    "InvalidImageName": "ImagePullFailed",
    "CreateContainerConfigError": "ContainerConfigError",
    "CreateContainerError": "ContainerConfigError",
}
_CONTAINER_REASON = {"fetch-model": "ModelFetchFailed", "server": "ModelLoadFailed"}


@dataclass(frozen=True)
class PodFailure:
    """Why the model pods cannot start, read from their container statuses."""

    reason: str
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
    reason: str = "ApplyFailed"


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


@dataclass(frozen=True)
class Transition:
    """A condition whose status changed: worth a Kubernetes Event."""

    type: str
    status: str
    reason: str
    message: str

    @property
    def warning(self) -> bool:
        return (self.type == STALLED and self.status == "True") or (
            self.type == READY and self.status == "False" and self.reason not in _QUIET_REASONS
        )


_QUIET_REASONS = {"RollingOut", "Suspended", "ScaledToZero", "Creating", "RolloutPending"}


@dataclass
class _Verdict:
    phase: str
    ready: tuple[str, str, str]
    reconciling: tuple[str, str, str] = ("False", "Stable", "")
    stalled: tuple[str, str, str] = ("False", "NotStalled", "")
    extra: dict[str, tuple[str, str, str]] = field(default_factory=dict)


def summarize_pod_failure(pods: Iterable[Mapping[str, Any]]) -> PodFailure | None:
    """The first stuck container among the pods, with its termination message when it has one."""
    for pod in pods:
        status = pod.get("status") or {}
        name = (pod.get("metadata") or {}).get("name", "?")
        statuses = [
            *(status.get("initContainerStatuses") or []),
            *(status.get("containerStatuses") or []),
        ]
        for container in statuses:
            waiting = (container.get("state") or {}).get("waiting") or {}
            waiting_reason = waiting.get("reason")
            if waiting_reason not in _STUCK_WAITING:
                continue
            terminated = (container.get("lastState") or {}).get("terminated") or {}
            detail = (terminated.get("message") or waiting.get("message") or waiting_reason).strip()
            reason = _STUCK_WAITING[waiting_reason] or _CONTAINER_REASON.get(
                container.get("name", ""), "ContainerCrashing"
            )
            return PodFailure(
                reason=reason,
                message=f"pod {name} container {container.get('name')}: {detail.splitlines()[-1]}",
            )
    return None


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
    if reason == "ApplyFailed":
        message = f"applying the children failed: {message}"
    serving = _int(((dep or {}).get("status") or {}).get("availableReplicas")) > 0
    if refused.permanent:
        return _Verdict(
            phase="Degraded" if serving else "Failed",
            ready=("False", reason, message),
            stalled=("True", reason, message),
        )
    return _Verdict(
        phase="Degraded" if serving else "Progressing",
        ready=("False", reason, message),
        reconciling=("True", reason, f"{message} (retrying)"),
    )


def _verdict(observed: Observed, previous_phase: str | None) -> _Verdict:  # noqa: PLR0911
    if observed.spec is None:
        message = observed.spec_error or "invalid spec"
        return _Verdict(
            phase="Failed",
            ready=("False", "InvalidSpec", message),
            stalled=("True", "InvalidSpec", message),
        )
    dep = observed.deployment
    if observed.apply_failure is not None:
        return _refused_verdict(observed.apply_failure, dep)
    if dep is None:
        return _Verdict(
            phase="Pending",
            ready=("False", "Creating", "creating the model server Deployment"),
            reconciling=("True", "Creating", "creating the model server Deployment"),
        )
    st = dep.get("status") or {}
    desired = desired_replicas(observed.spec, dep)
    replicas, updated = _int(st.get("replicas")), _int(st.get("updatedReplicas"))
    available = _int(st.get("availableReplicas"))
    counts = f"{updated}/{desired} updated, {available}/{desired} available"

    if _int(st.get("observedGeneration")) < _int((dep.get("metadata") or {}).get("generation")):
        return _Verdict(
            phase="Progressing",
            ready=(
                "False",
                "RolloutPending",
                "the Deployment controller has not seen the change yet",
            ),
            reconciling=("True", "RolloutPending", "waiting for the Deployment controller"),
        )

    progressing = _deployment_condition(dep, "Progressing")
    failure = _deployment_condition(dep, "ReplicaFailure")
    stuck: tuple[str, str] | None = None
    if progressing.get("reason") == "ProgressDeadlineExceeded":
        detail = (
            observed.pod_failure.message if observed.pod_failure else progressing.get("message", "")
        )
        stuck = (
            "ProgressDeadlineExceeded",
            f"rollout made no progress in time ({counts}): {detail}",
        )
    elif failure.get("status") == "True":
        stuck = ("ReplicaFailure", failure.get("message") or "pods could not be created")
    elif observed.pod_failure is not None and (
        updated < desired or available < desired or replicas > updated
    ):
        stuck = (observed.pod_failure.reason, observed.pod_failure.message)
    if stuck is not None:
        reason, message = stuck
        return _Verdict(
            phase="Degraded" if available > 0 else "Failed",
            ready=("False", reason, message),
            stalled=("True", reason, message),
        )

    if desired == 0:
        reason = "Suspended" if observed.spec.suspend else "ScaledToZero"
        if replicas > 0:
            return _Verdict(
                phase="Progressing",
                ready=("False", reason, f"scaling to zero ({replicas} pods left)"),
                reconciling=("True", "ScalingDown", f"scaling to zero ({replicas} pods left)"),
            )
        return _Verdict(phase="Suspended", ready=("False", reason, "scaled to zero; no pod serves"))

    if updated < desired or replicas > updated:
        return _Verdict(
            phase="Progressing",
            ready=("False", "RollingOut", f"rolling out: {counts}"),
            reconciling=("True", "RollingOut", f"rolling out: {counts}"),
        )
    if available < desired:
        phase = "Degraded" if previous_phase in ("Ready", "Degraded") else "Progressing"
        message = f"{available}/{desired} replicas available"
        return _Verdict(
            phase=phase,
            ready=("False", "ReplicasUnavailable", message),
            reconciling=("True", "ReplicasUnavailable", message),
        )
    model = observed.spec.model
    what = model.uri + (f" version {model.version}" if model.version else "")
    return _Verdict(
        phase="Ready",
        ready=("True", "ModelServing", f"{available}/{desired} replicas serve {what}"),
    )


def _meaningful(type_: str, status: str, old: Mapping[str, Any] | None) -> bool:
    """Ready changing (not its first False), Stalled becoming True or clearing: an Event."""
    if type_ == READY:
        return old is not None or status == "True"
    if type_ == STALLED:
        return status == "True" or old is not None
    return False


def merge_conditions(
    previous: Sequence[Mapping[str, Any]],
    wanted: Mapping[str, tuple[str, str, str]],
    generation: int,
    now: str,
) -> tuple[list[Obj], list[Transition]]:
    """New conditions, keeping lastTransitionTime where the status did not change."""
    before = {str(c.get("type")): c for c in previous}
    out: list[Obj] = []
    transitions: list[Transition] = []
    for type_, (status, reason, message) in wanted.items():
        old = before.get(type_)
        changed = old is None or old.get("status") != status
        out.append(
            {
                "type": type_,
                "status": status,
                "reason": reason,
                "message": message,
                "lastTransitionTime": now
                if changed or not old
                else old.get("lastTransitionTime", now),
                "observedGeneration": generation,
            }
        )
        if changed and _meaningful(type_, status, old):
            transitions.append(Transition(type_, status, reason, message))
    return out, transitions


def compute_status(
    observed: Observed, previous: Mapping[str, Any] | None, now: str
) -> tuple[Obj, list[Transition]]:
    """The status to write (camelCase, complete), and the condition transitions."""
    previous = previous or {}
    verdict = _verdict(observed, previous.get("phase"))
    dep_status = (observed.deployment or {}).get("status") or {}
    desired = desired_replicas(observed.spec, observed.deployment) if observed.deployment else 0
    ready_replicas = _int(dep_status.get("readyReplicas"))
    available = _int(dep_status.get("availableReplicas"))

    wanted = {
        READY: verdict.ready,
        RECONCILING: verdict.reconciling,
        STALLED: verdict.stalled,
        AVAILABLE: ("True", "MinimumReplicasAvailable", f"{available} replicas serve requests")
        if available > 0
        else ("False", "NoReplicasAvailable", "no replica serves requests"),
    }
    conditions, transitions = merge_conditions(
        previous.get("conditions") or [], wanted, observed.generation, now
    )

    served = previous.get("model")
    if verdict.phase == "Ready" and observed.spec is not None:
        model = observed.spec.model
        served = {
            k: v
            for k, v in {"uri": model.uri, "digest": model.digest, "version": model.version}.items()
            if v
        }
    elif served is None and observed.spec is not None:
        served = {"uri": observed.spec.model.uri}

    status: Obj = {
        "observedGeneration": observed.generation,
        "conditions": conditions,
        "phase": verdict.phase,
        "replicas": _int(dep_status.get("replicas")),
        "readyReplicas": ready_replicas,
        "updatedReplicas": _int(dep_status.get("updatedReplicas")),
        "availableReplicas": available,
        "desiredReplicas": desired,
        "replicaSummary": f"{ready_replicas}/{desired}",
        "selector": observed.selector,
        "url": observed.url,
    }
    if served:
        status["model"] = dict(served)
    return status, transitions


def status_differs(current: Mapping[str, Any] | None, new: Mapping[str, Any]) -> bool:
    """Whether writing ``new`` would change anything the operator writes."""
    current = current or {}
    return any(current.get(key) != value for key, value in new.items()) or (
        "model" in current and "model" not in new
    )
